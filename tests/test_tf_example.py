import pytest

from batch_predict.inputs.tf_example import ExampleParseError, build_example, parse_bytes_features


def test_build_then_parse_round_trips_bytes_features():
    features = {"image/encoded": b"\xff\xd8jpeg", "image/source_id": b"img-1", "multi": [b"a", b"b"]}
    assert parse_bytes_features(build_example(features)) == {
        "image/encoded": [b"\xff\xd8jpeg"],
        "image/source_id": [b"img-1"],
        "multi": [b"a", b"b"],
    }


def test_parses_tensorflow_examples_and_skips_numeric_features():
    tf = pytest.importorskip("tensorflow")
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG..."])),
                "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[480])),
                "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1, 0.2])),
                "image/filename": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"cat.png"])),
            }
        )
    )
    parsed = parse_bytes_features(example.SerializeToString())
    assert parsed["image/encoded"] == [b"\x89PNG..."]
    assert parsed["image/filename"] == [b"cat.png"]
    assert parsed["image/height"] == [] and parsed["image/object/bbox/xmin"] == []


def test_tensorflow_reads_the_examples_we_build():
    tf = pytest.importorskip("tensorflow")
    example = tf.train.Example.FromString(build_example({"image/encoded": b"bytes", "image/source_id": b"k"}))
    assert example.features.feature["image/encoded"].bytes_list.value == [b"bytes"]
    assert example.features.feature["image/source_id"].bytes_list.value == [b"k"]


@pytest.mark.parametrize("garbage", [b"\x0a\xff", b"\x0a\x05abc", b"\x0f"])
def test_malformed_bytes_raise_a_parse_error(garbage):
    with pytest.raises(ExampleParseError):
        parse_bytes_features(garbage)
