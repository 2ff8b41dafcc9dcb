"""What a PyTorch or ONNX model is fed: batch sizes few and fixed where new input shapes cost a
recompilation, and on the GPU path JPEGs encoded, everything else decoded by the CPU workers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from batch_predict import JobSpec, run
from batch_predict.decode import jpeg_size
from batch_predict.models import ModelLoadError, load_model
from batch_predict.models.decode_split import DecodeSplit, split_decoder
from batch_predict.models.device_decode import nvjpeg_decoder
from batch_predict.models.model_spec import load_spec
from batch_predict.models.speed import accelerate
from batch_predict.models.tensor_model import (
    DeviceStreams, ModuleRunner, PaddingRunner, TensorModel, at_few_batch_sizes, halvings,
)
from batch_predict.models.torchscript import load_script
from batch_predict.pipeline import prepare_for, run_pipeline
from batch_predict.records import Record
from batch_predict.spec import ModelSettings

from backend_helpers import REPO, write_tfrecord
from conftest import one_unit_output
from test_decode_split import HOST_DECODERS

SPEC = str(REPO / "examples" / "specs" / "yolox_nano.yaml")


class ShapeRecorder:
    """A real small network that notes the batch size of every call."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.batch_sizes: list[int] = []

    def __call__(self, inputs):
        self.batch_sizes.append(len(inputs))
        features = self.module(inputs)
        return {"features": features, "pair": (features.sum(1), features.max(1).values)}

    def describe(self) -> dict[str, object]:
        return {"format": "test"}


def test_halvings_are_the_sizes_bisection_and_out_of_memory_splits_cut_a_batch_to():
    assert halvings(256) == (256, 128, 64, 32, 16, 8, 4, 2, 1)
    assert halvings(100) == (100, 50, 25, 13, 7, 4, 2, 1)
    assert halvings(1) == (1,)


@pytest.mark.parametrize("count, calls", [(5, [8]), (3, [4]), (8, [8]), (20, [8, 8, 8]), (1, [1])])
def test_batches_are_padded_to_an_allowed_size_and_trimmed_back(count, calls):
    recorder = ShapeRecorder()
    runner = PaddingRunner(recorder, halvings(8))
    images = torch.rand((count, 3, 12, 12))
    with torch.inference_mode():
        outputs = runner(images)
        alone = [recorder.module(image[None]) for image in images]
    assert recorder.batch_sizes == calls
    assert outputs["features"].shape == (count, 4) and outputs["pair"][0].shape == outputs["pair"][1].shape == (count,)
    torch.testing.assert_close(outputs["features"], torch.cat(alone), atol=1e-5, rtol=1e-5)


class _RunsOutOfMemory:
    """Records the batch sizes it is called at, and runs out of memory at `limit` and above;
    otherwise returns `module(inputs)`, or the inputs where it has no module."""

    def __init__(self, limit: int | None = None, module=None) -> None:
        self.limit, self.module, self.sizes = limit, module, []

    def __call__(self, inputs):
        self.sizes.append(len(inputs))
        if self.limit is not None and len(inputs) >= self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return inputs if self.module is None else self.module(inputs)

    def describe(self):
        return {}


def test_a_short_batch_is_padded_to_a_size_already_run_rather_than_a_new_shape():
    inner = _RunsOutOfMemory()
    runner = PaddingRunner(inner, halvings(8))
    for count in (8, 3, 1):
        assert runner(torch.zeros((count, 2))).shape[0] == count
    assert inner.sizes == [8, 8, 8]


def test_a_size_that_ran_out_of_memory_is_not_padded_to_again():
    inner = _RunsOutOfMemory()
    runner = PaddingRunner(inner, halvings(8))
    runner(torch.zeros((8, 2)))
    inner.limit = 8  # memory got tighter: the pipeline splits the batch and retries the halves
    with pytest.raises(torch.cuda.OutOfMemoryError):
        runner(torch.zeros((8, 2)))
    runner(torch.zeros((4, 2)))
    runner(torch.zeros((3, 2)))
    assert inner.sizes == [8, 8, 4, 4]


def test_a_model_exported_with_one_batch_size_is_only_called_at_it():
    recorder = ShapeRecorder()
    runner = at_few_batch_sizes(recorder, 32, export_batch=3, costly_shapes=True)
    with torch.inference_mode():
        assert runner(torch.rand((7, 3, 12, 12)))["features"].shape == (7, 4)
    assert recorder.batch_sizes == [3, 3, 3] and runner.describe()["batch_sizes"] == [3]


def test_lists_of_differently_sized_images_pass_through_unpadded():
    seen = []
    runner = PaddingRunner(lambda images: seen.append([tuple(i.shape) for i in images]) or len(images), (4,))
    assert runner([torch.zeros((3, 10, 12)), torch.zeros((3, 20, 8))]) == 2
    assert seen == [[(3, 10, 12), (3, 20, 8)]]


def test_on_the_cpu_an_uncompiled_model_runs_each_batch_at_its_own_size():
    """Padding there would cost real compute for nothing: the CPU does not recompile per shape."""
    recorder = ShapeRecorder()
    runner = accelerate(recorder, ModelSettings(model_dir="unused", device="cpu", batch_size=8), torch.device("cpu"))
    with torch.inference_mode():
        runner(torch.rand((5, 3, 12, 12)))
    assert runner is recorder and recorder.batch_sizes == [5]


def test_a_compiled_model_is_called_at_the_halvings_of_the_batch_size():
    """torch.compile with fixed shapes compiles once per batch size (and falls back to eager
    after a few), so a job's partial batches must not each bring a new one."""
    recorder = ShapeRecorder()
    settings = ModelSettings(model_dir="unused", device="cpu", batch_size=8, compile="torch_compile")
    runner = accelerate(recorder, settings, torch.device("cpu"))
    assert runner.describe()["batch_sizes"] == [1, 2, 4, 8] and runner.describe()["compile"] == "torch_compile"


@pytest.fixture(scope="module")
def pixels_path(yolox_dir) -> TensorModel:
    """YOLOX-Nano as on the CPU: the pipeline's workers decode every image."""
    return load_model(ModelSettings(model_dir=str(yolox_dir / "yolox_nano_torchscript.pt"), model_spec=SPEC, device="cpu"))


def on_the_gpu_path(yolox_dir, labels, cpu_decoding: str | None = None) -> TensorModel:
    """YOLOX-Nano fed as on CUDA (JPEGs encoded, for it to decode), run here on the CPU; with
    `cpu_decoding` (a host decoder's name), its split decoder sends every JPEG to the CPU that way."""
    path, cpu = yolox_dir / "yolox_nano_torchscript.pt", torch.device("cpu")
    runner = ModuleRunner(load_script(path.read_bytes(), cpu, str(path)), {"format": "torchscript"})
    model = TensorModel(runner, load_spec(SPEC).resolve_input(None, None), labels, cpu,
                        backend="torchscript", decode_on_device=True)
    if cpu_decoding is not None:
        on_host = HOST_DECODERS[cpu_decoding](2)
        model._preprocessor.jpeg_decoder = split_decoder(nvjpeg_decoder(cpu), DecodeSplit(shares=(1.0,)), cpu, on_host=on_host)
    return model


@pytest.fixture(scope="module")
def jpeg_path(yolox_dir, pixels_path) -> TensorModel:
    """The same model fed as on CUDA (JPEGs encoded, for it to decode), run here on the CPU."""
    return on_the_gpu_path(yolox_dir, pixels_path.labels)


def _padded_model(yolox_dir, labels, limit: int | None = None) -> tuple[TensorModel, _RunsOutOfMemory]:
    """YOLOX-Nano on the CPU behind a `PaddingRunner`, noting each call's batch size."""
    path = yolox_dir / "yolox_nano_torchscript.pt"
    calls = _RunsOutOfMemory(limit, load_script(path.read_bytes(), torch.device("cpu"), str(path)))
    model = TensorModel(PaddingRunner(calls, halvings(8)), load_spec(SPEC).resolve_input(None, None), labels,
                        torch.device("cpu"), backend="torchscript")
    return model, calls


def test_where_batches_are_padded_the_fit_check_is_one_batch_of_the_size_the_job_runs_at(yolox_dir, pixels_path, photos_dir):
    """On a GPU a new batch shape's first call plans its kernels for about a second: the load
    pays it for the job's size, so the first batch does not, and a short batch pads to it."""
    model, calls = _padded_model(yolox_dir, pixels_path.labels)
    assert calls.sizes == [8]
    photo = np.asarray(Image.open(sorted(photos_dir.glob("*.jpg"))[0]).convert("RGB"))
    model.predict([Record("a", "f", 0, array=photo)] * 3)
    assert calls.sizes == [8, 8]


def test_a_fit_check_batch_that_runs_out_of_memory_leaves_the_size_to_the_pipeline(yolox_dir, pixels_path, photos_dir):
    model, calls = _padded_model(yolox_dir, pixels_path.labels, limit=8)
    assert calls.sizes == [8, 1]
    photo = np.asarray(Image.open(sorted(photos_dir.glob("*.jpg"))[0]).convert("RGB"))
    assert len(model.predict([Record("a", "f", 0, array=photo)] * 3)) == 3
    assert calls.sizes == [8, 1, 4]


def test_a_model_that_does_not_fit_in_memory_with_one_image_fails_at_load(yolox_dir, pixels_path):
    with pytest.raises(ModelLoadError, match="do not fit: OutOfMemoryError"):
        _padded_model(yolox_dir, pixels_path.labels, limit=1)


def test_on_the_gpu_path_jpegs_reach_the_model_encoded_and_other_images_as_pixels(jpeg_path, pixels_path, photos_dir):
    """What a CUDA model is fed: JPEGs stay encoded for its batched decode; PNGs and JSON
    arrays are decoded by the pipeline's CPU workers, not one by one in its prepare step.
    The detections are those of the all-pixels path."""
    assert (jpeg_path.input_kind, pixels_path.input_kind) == ("jpeg", "image")
    bus = photos_dir / "bus.jpg"
    records = lambda: [  # noqa: E731
        Record("bus", "s", 0, encoded=bus.read_bytes()),
        Record("chelsea", "s", 1, encoded=(photos_dir / "skimage_chelsea.png").read_bytes()),
        Record("array", "s", 2, array=np.asarray(Image.open(photos_dir / "zidane.jpg").convert("RGB"))),
    ]
    fed = [prepare_for(jpeg_path, 1 << 30)(r) for r in records()]
    assert fed[0].encoded is not None and fed[0].array is None and (fed[0].width, fed[0].height) == (810, 1080)
    assert [r.encoded is None and r.array is not None for r in fed[1:]] == [True, True]
    expected = pixels_path.predict([prepare_for(pixels_path, 1 << 30)(r) for r in records()])
    for found, wanted in zip(jpeg_path.predict(fed), expected, strict=True):
        assert len(wanted.scores) > 0
        np.testing.assert_allclose(found.boxes, wanted.boxes, atol=1e-3)
        np.testing.assert_allclose(found.scores, wanted.scores, atol=1e-5)


@pytest.mark.parametrize("on_host", ["nvimgcodec", "simplejpeg"])
def test_on_the_gpu_path_jpegs_decoded_on_the_cpu_give_the_detections_of_the_pixels_path(
    yolox_dir, pixels_path, photos_dir, on_host
):
    """The model's own split decoder with the whole batch on the CPU, called as the model calls it
    (under inference mode, its buffer written from another thread), by each way of decoding there."""
    model = on_the_gpu_path(yolox_dir, pixels_path.labels, on_host)
    records = lambda: [Record(name, "s", i, encoded=(photos_dir / name).read_bytes())  # noqa: E731
                       for i, name in enumerate(("bus.jpg", "zidane.jpg"))]
    expected = pixels_path.predict([prepare_for(pixels_path, 1 << 30)(r) for r in records()])
    for found, wanted in zip(model.predict(records()), expected, strict=True):
        assert len(wanted.scores) > 0
        np.testing.assert_allclose(found.boxes, wanted.boxes, atol=1e-3)
        np.testing.assert_allclose(found.scores, wanted.scores, atol=1e-5)


def reads_truncated_jpegs(jpegs):
    """A device decoder that, as nvjpeg on the GPU does (benchmarks/gpu_jpeg_kinds.py), gives an
    image for a truncated JPEG: torchvision's where it can read it, grey for one without its
    end-of-image marker, None for any other it cannot read."""
    found = nvjpeg_decoder(torch.device("cpu"))(jpegs)
    return [torch.full((3, *jpeg_size(j)[::-1]), 128, dtype=torch.uint8) if image is None and not j.endswith(b"\xff\xd9")
            else image for image, j in zip(found, jpegs)]


def _bogus_sampling(jpeg: bytes) -> bytes:
    """A whole JPEG (header, image data, end marker) that no decoder reads: its first component's
    sampling factors set to 0."""
    at = jpeg.index(b"\xff\xc0")  # a baseline photo's frame header
    return jpeg[: at + 11] + b"\0" + jpeg[at + 12 :]


@pytest.mark.parametrize("cpu_decoding", [None, "nvimgcodec", "simplejpeg", "lenient-device"],
                         ids=["gpu", "cpu-nvimgcodec", "cpu-simplejpeg", "device-reads-truncated"])
def test_on_the_gpu_path_damaged_images_become_error_lines_and_their_batch_mates_are_predicted(
    jpeg_path, yolox_dir, photos_dir, tmp_path, cpu_decoding
):
    """With the JPEGs decoded on the device, or all of them on the CPU (the split decoder's share),
    each way: a JPEG the CPU cannot read goes to the device's decoder, and fails there alone. A
    truncated JPEG is refused before either sees it, also where the device's decoder would read it."""
    if cpu_decoding == "lenient-device":
        model = on_the_gpu_path(yolox_dir, jpeg_path.labels)
        model._preprocessor.jpeg_decoder = reads_truncated_jpegs
    else:
        model = jpeg_path if cpu_decoding is None else on_the_gpu_path(yolox_dir, jpeg_path.labels, cpu_decoding)
    jpeg, png = (photos_dir / "bus.jpg").read_bytes(), (photos_dir / "skimage_chelsea.png").read_bytes()
    records = [
        Record("jpeg", "s", 0, encoded=jpeg),
        Record("truncated-png", "s", 1, encoded=png[: len(png) // 3]),
        Record("png", "s", 2, encoded=png),
        Record("truncated-jpeg", "s", 3, encoded=jpeg[: len(jpeg) // 2]),  # its header still gives a size
        Record("not-an-image", "s", 4, encoded=b"plain text"),
        Record("unreadable-jpeg", "s", 5, encoded=_bogus_sampling(jpeg)),
    ]
    outputs = one_unit_output(tmp_path, labels=model.labels)
    read = run_pipeline(records, model, outputs, batch_size=5, max_image_pixels=1 << 30, num_decode_workers=2,
                        queue_depth=2)
    counts = outputs.commit(read)
    errors = {e["key"]: e for e in map(json.loads, (tmp_path / "e-00000-of-00001.jsonl").read_text().splitlines())}
    results = [json.loads(line)["key"] for line in (tmp_path / "r-00000-of-00001.jsonl").read_text().splitlines()]
    assert (counts.records_read, counts.predicted, counts.failed) == (6, 2, 4) and sorted(results) == ["jpeg", "png"]
    assert {k: (e["stage"], e["error_type"]) for k, e in errors.items()} == {
        "truncated-png": ("decode", "ImageDecodeError"),
        "truncated-jpeg": ("decode", "ImageDecodeError"),
        "not-an-image": ("decode", "ImageDecodeError"),
        "unreadable-jpeg": ("predict", "DeviceDecodeError"),
    }
    assert "truncated" in errors["truncated-jpeg"]["message"]
    assert all(e["source"] == "s" and e["message"] for e in errors.values())


class PerImageDicts:
    """Answers as torchvision's detection models do: a list of one dict per image, here with
    1, 2 or 3 boxes whose values tell the image apart."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, images):
        self.batch_sizes.append(len(images))
        return [{"boxes": torch.full((i % 3 + 1, 4), float(image.sum())), "scores": torch.ones(i % 3 + 1)}
                for i, image in enumerate(images)]

    def describe(self) -> dict[str, object]:
        return {"format": "test"}


def test_padded_calls_of_a_model_giving_one_dict_per_image_keep_each_image_whole():
    model = PerImageDicts()
    images = torch.arange(1, 7, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    found = PaddingRunner(model, (4,))(images)
    assert model.batch_sizes == [4, 4] and len(found) == 6
    assert [len(d["boxes"]) for d in found] == [1, 2, 3, 1, 1, 2]
    assert [float(d["boxes"][0, 0]) for d in found] == [12.0 * k for k in range(1, 7)]


def test_a_job_on_the_gpu_path_ends_by_logging_how_it_shared_jpeg_decoding(jpeg_path, pixels_path, photos_dir, tmp_path, caplog):
    assert jpeg_path.describe()["jpeg_decoding"]["cpu_share"] in DecodeSplit.SHARES
    assert "jpeg_decoding" not in pixels_path.describe()  # the pipeline decodes everything for it
    inputs = write_tfrecord(tmp_path / "in.tfrecord", {"bus": (photos_dir / "bus.jpg").read_bytes()})
    spec = JobSpec(input_file_patterns=(str(inputs),), input_file_format="tfrecord", model_dir="given",
                   output_result_prefix=str(tmp_path / "r"), output_error_prefix=str(tmp_path / "e"))
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        assert run(spec, model=jpeg_path).predicted == 1
    assert any("JPEG decoding {'cpu_share'" in message for message in caplog.messages)


def test_on_cuda_detections_are_collected_on_a_stream_above_the_models_priority(monkeypatch):
    # No GPU in CI: the streams CUDA would make are recorded instead. On an H200 the collecting
    # thread fell behind the GPU at the model's priority (docs/benchmarks.md, 0b).
    made: list[int] = []

    class RecordedStream:
        def __init__(self, device=None, priority=0):
            made.append(priority)

    class RecordedEvent:
        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", RecordedStream)
    monkeypatch.setattr(torch.cuda, "Event", RecordedEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    streams = DeviceStreams(torch.device("cuda"))
    assert made == [0, -1]  # preparing at the default priority, collecting above it
    assert streams._collect is not None
