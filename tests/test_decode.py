import numpy as np
import pytest
from PIL import Image

from batch_predict.decode import ImageDecodeError, ImageTooLarge, decode, encode_png, probe
from batch_predict.records import Record

from images import encode, gradient


def _record(data: bytes) -> Record:
    return Record("k", "src", 0, encoded=data)


def test_probe_reads_the_size_without_decoding():
    record = probe(_record(encode(gradient(64, 48))), max_pixels=10_000)
    assert (record.width, record.height) == (64, 48) and record.array is None


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(gradient()).convert("L"),
        Image.fromarray(gradient()).convert("RGBA"),
        Image.fromarray(gradient()).convert("P"),
        Image.fromarray(gradient()).convert("CMYK"),
        Image.fromarray((gradient()[:, :, 0].astype(np.uint16) * 257)).convert("I;16"),
    ],
    ids=["grey", "rgba", "palette", "cmyk", "16-bit"],
)
def test_every_mode_decodes_to_rgb_uint8(image):
    fmt = "JPEG" if image.mode in ("L", "CMYK") else "PNG"
    record = decode(_record(encode(image, fmt)), max_pixels=10_000)
    assert record.array.shape == (48, 64, 3) and record.array.dtype == np.uint8
    assert (record.width, record.height) == (64, 48)


def test_sixteen_bit_keeps_the_high_byte():
    wide = np.full((2, 2), 0xAB12, dtype=np.uint16)
    record = decode(_record(encode(Image.fromarray(wide), "PNG")), max_pixels=100)
    assert (record.array == 0xAB).all()


def test_images_over_the_pixel_limit_are_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="64x48"):
        probe(_record(encode(gradient(64, 48))), max_pixels=64 * 48 - 1)


def test_a_truncated_jpeg_is_a_decode_error():
    data = encode(gradient(256, 256), quality=95)
    with pytest.raises(ImageDecodeError, match="damaged"):
        decode(_record(data[: len(data) // 2]), max_pixels=1 << 20)


@pytest.mark.parametrize("data", [b"", b"plain text, not an image"])
def test_non_images_are_decode_errors(data):
    with pytest.raises(ImageDecodeError):
        probe(_record(data), max_pixels=1 << 20)


def test_arrays_are_encoded_losslessly_for_models_that_take_strings():
    pixels = gradient(5, 4)
    record = encode_png(Record("k", "src", 0, array=pixels))
    assert record.array is None and (record.width, record.height) == (5, 4)
    np.testing.assert_array_equal(decode(record, max_pixels=100).array, pixels)
