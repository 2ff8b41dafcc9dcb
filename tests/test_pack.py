"""`pack` writes shards that the job's own readers give back byte for byte, with the same keys."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from batch_predict.inputs.tf_example import parse_bytes_features
from batch_predict.inputs.formats.tfrecord import image_format
from batch_predict.tools.pack import PackError, find_images, pack, shard_paths
from batch_predict.records import Record
from batch_predict.inputs.formats import read_file
from batch_predict.inputs.sources import expand_patterns
from batch_predict.inputs.tfrecord import read_records

from conftest import shared_file
from images import encode, gradient
from test_cli import assert_known_detections, batch_predict, read_jsonl


@pytest.fixture
def image_folder(tmp_path) -> dict[str, bytes]:
    """A folder of real encoded images, one in a subfolder, plus a file that is not an image."""
    images = {
        "a.jpg": encode(gradient(64, 48)),
        "b.png": encode(gradient(32, 32), "PNG"),
        "sub/c.jpeg": encode(gradient(40, 30)),
        "sub/d.webp": encode(gradient(20, 10), "WEBP"),
    }
    for key, data in images.items():
        (tmp_path / "imgs" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / key).write_bytes(data)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    return images


def read_back(prefix: Path, fmt: str) -> list[Record]:
    files = expand_patterns([f"{prefix}-*-of-*"])
    records = [r for f in files for r in read_file(f, fmt)]
    assert all(isinstance(r, Record) for r in records)
    return records


@pytest.mark.parametrize("fmt", ["tfrecord", "tfrecord_gzip", "json"])
def test_a_packed_folder_reads_back_with_the_same_bytes_and_keys(tmp_path, image_folder, fmt):
    summary = pack(find_images([str(tmp_path / "imgs")]), str(tmp_path / "out" / "imgs"), fmt, num_shards=3)
    assert summary.images == 4 and not summary.failed
    assert summary.bytes_read == sum(len(d) for d in image_folder.values())
    assert {r.key: r.encoded for r in read_back(tmp_path / "out" / "imgs", fmt)} == image_folder


def test_a_packed_folder_reads_back_as_webdataset_samples_keyed_without_their_extension(tmp_path, image_folder):
    summary = pack(find_images([str(tmp_path / "imgs")]), str(tmp_path / "out" / "imgs"), "webdataset", num_shards=2)
    assert summary.shards[0].endswith("-00000-of-00002.tar") and summary.images == 4
    found = {r.key: r.encoded for r in read_back(tmp_path / "out" / "imgs", "webdataset")}
    assert found == {key.rsplit(".", 1)[0]: data for key, data in image_folder.items()}


def test_raw_records_hold_the_bytes_alone_and_are_keyed_by_position(tmp_path, image_folder):
    pack(find_images([str(tmp_path / "imgs")]), str(tmp_path / "raw"), "tfrecord", record_kind="raw")
    records = read_back(tmp_path / "raw", "tfrecord")
    assert [r.encoded for r in records] == list(image_folder.values())
    assert [r.key for r in records] == [f"{r.source}:{i}" for i, r in enumerate(records)]


def test_examples_carry_source_id_filename_and_format(tmp_path, image_folder):
    (path,) = pack(find_images([str(tmp_path / "imgs" / "sub")]), str(tmp_path / "ex"), "tfrecord", num_shards=1).shards
    with open(path, "rb") as f:
        features = [parse_bytes_features(data) for data in read_records(f)]
    assert [(f["image/source_id"], f["image/filename"], f["image/format"]) for f in features] == [
        ([b"c.jpeg"], [b"c.jpeg"], [b"jpeg"]),
        ([b"d.webp"], [b"d.webp"], [b"webp"]),
    ]


def test_images_are_spread_over_shards_in_order_under_the_job_naming(tmp_path, image_folder):
    summary = pack(find_images([str(tmp_path / "imgs")]), str(tmp_path / "s" / "p"), "json", num_shards=3)
    assert summary.shards == shard_paths(str(tmp_path / "s" / "p"), 3, "json")
    assert [Path(p).name for p in summary.shards] == [f"p-0000{i}-of-00003.jsonl" for i in range(3)]
    per_shard = [[json.loads(line)["key"] for line in open(p)] for p in summary.shards]
    assert per_shard == [["a.jpg"], ["b.png"], ["sub/c.jpeg", "sub/d.webp"]]


def test_never_more_shards_than_images(tmp_path, image_folder):
    assert len(pack(find_images([str(tmp_path / "imgs")]), str(tmp_path / "p"), num_shards=10).shards) == 4


def test_globs_are_keyed_below_their_fixed_folder_and_list_lines_as_written(tmp_path, image_folder):
    glob_keys = [i.key for i in find_images([f"{tmp_path}/imgs/*/*.jp*g", f"{tmp_path}/imgs/*.png"])]
    assert glob_keys == ["sub/c.jpeg", "b.png"]
    (tmp_path / "list.txt").write_text(f"# photos\n{tmp_path}/imgs/a.jpg\n\n{tmp_path}/imgs/sub/c.jpeg\n")
    assert [i.key for i in find_images(list_files=[str(tmp_path / "list.txt")])] == [
        f"{tmp_path}/imgs/a.jpg", f"{tmp_path}/imgs/sub/c.jpeg"]


def test_fsspec_urls_are_packed_and_read_back(image_folder):
    for key, data in image_folder.items():
        with fsspec.open(f"memory://pack-src/{key}", "wb") as f:
            f.write(data)
    summary = pack(find_images(["memory://pack-src"]), "memory://pack-out/imgs", "tfrecord_gzip")
    files = expand_patterns(summary.shards)
    assert {r.key: r.encoded for f in files for r in read_file(f, "tfrecord_gzip")} == image_folder


def test_two_images_under_one_key_fail_but_one_image_named_twice_is_packed_once(tmp_path, image_folder):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.jpg").write_bytes(image_folder["a.jpg"])
    with pytest.raises(PackError, match="share the key 'a.jpg'"):
        find_images([str(tmp_path / "imgs"), str(tmp_path / "other")])
    assert len(find_images([str(tmp_path / "imgs"), f"{tmp_path}/imgs/*.jpg"])) == 4


def test_an_unreadable_image_is_listed_and_the_others_are_packed(tmp_path, image_folder):
    (tmp_path / "list.txt").write_text(f"{tmp_path}/imgs/a.jpg\n{tmp_path}/imgs/gone.jpg\n{tmp_path}/imgs/b.png\n")
    summary = pack(find_images(list_files=[str(tmp_path / "list.txt")]), str(tmp_path / "out"), "json")
    assert summary.images == 2
    assert list(summary.failed) == [f"{tmp_path}/imgs/gone.jpg"] and "FileNotFoundError" in summary.failed[
        f"{tmp_path}/imgs/gone.jpg"]
    assert [r.encoded for r in read_back(tmp_path / "out", "json")] == [image_folder["a.jpg"], image_folder["b.png"]]


@pytest.mark.parametrize("inputs, message", [
    (["{root}/nowhere"], "neither a folder, a glob nor a file"),
    (["{root}/imgs/*.gif"], "no image matches"),
    ([], "no images to pack"),
])
def test_nothing_to_pack_fails_with_a_clear_message(tmp_path, image_folder, inputs, message):
    with pytest.raises(PackError, match=message):
        find_images([i.format(root=tmp_path) for i in inputs])


def test_image_format_comes_from_the_bytes_before_the_name():
    assert image_format(encode(gradient(), "PNG"), "mislabelled.jpg") == "png"
    assert image_format(b"unknown bytes", "scan.TIFF") == "tiff"


def test_packed_photos_predict_through_the_real_cli(tmp_path):
    photos = shared_file("data/photos")
    packed = batch_predict("pack", str(photos), "--output_prefix", str(tmp_path / "photos"), "--num_shards", "2",
                           "--output_format", "tfrecord_gzip")
    assert "packed 11 images" in packed.stdout and "--input_file_format tfrecord_gzip" in packed.stdout
    batch_predict(
        "--input_file_patterns", f"{tmp_path}/photos-*-of-00002.tfrecord.gz", "--input_file_format", "tfrecord_gzip",
        "--model_dir", str(shared_file("models/yolox_nano/tfod_encoded_savedmodel")),
        "--output_result_prefix", str(tmp_path / "out" / "results"),
        "--output_error_prefix", str(tmp_path / "out" / "errors"), "--batch_size", "4",
        "--label_map", str(shared_file("models/yolox_nano/labels.txt")),
    )
    results = {r["key"]: r for r in read_jsonl(tmp_path / "out", "results")}
    assert set(results) == {p.name for p in photos.iterdir()}
    assert_known_detections(results)
    assert not read_jsonl(tmp_path / "out", "errors")
