import io
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from batch_predict.decode import (
    ImageDecodeError, ImageTooLarge, decode, encode_png, jpeg_size, probe, usable_cpus,
)
from batch_predict.records import Record

from conftest import REPO, shared_file
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


# On a real photo: hostile headers, damage, pixel formats, EXIF.

LIMIT = 178_956_970


@pytest.fixture(scope="module")
def bus_jpeg() -> bytes:
    return shared_file("data/photos/bus.jpg").read_bytes()


@pytest.fixture(scope="module")
def bus(bus_jpeg) -> Image.Image:
    return Image.open(io.BytesIO(bus_jpeg)).convert("RGB")


def _png_declaring(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header declares `width` x `height` pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG with the frame header's dimensions rewritten."""
    at = 2
    while jpeg[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + struct.unpack(">H", jpeg[at + 2 : at + 4])[0]
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_fails_to_decode_but_its_header_still_probes(bus, fmt):
    data = encode(bus, fmt)
    cut = data[: len(data) // 2]
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode(_record(cut), LIMIT)
    # Encoded-input models decode for themselves: theirs is the error (see test_faults).
    assert probe(_record(cut), LIMIT).width == bus.width


def _with_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """`jpeg` with a complete JPEG inside an APP1 segment after its start marker, as an EXIF
    thumbnail is: its own start of scan and end-of-image marker come before the image's."""
    payload = b"Exif\0\0" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("cut", ["2 bytes", "1 byte", "half", "at its start of scan"])
def test_a_jpeg_cut_anywhere_after_its_frame_header_is_refused_as_truncated(bus, cut):
    """nvjpeg on the GPU decodes a truncated JPEG without an error (benchmarks/gpu_jpeg_kinds.py):
    the job refuses it before, as Pillow would."""
    thumbnail = encode(bus.resize((64, 48)), "JPEG")
    whole = _with_thumbnail(encode(bus, "JPEG"), thumbnail)
    probe(_record(whole), LIMIT, whole_jpeg=True)
    scan = whole.index(b"\xff\xda", whole.index(thumbnail) + len(thumbnail))
    end = {"2 bytes": len(whole) - 2, "1 byte": len(whole) - 1, "half": len(whole) // 2, "at its start of scan": scan}[cut]
    kept = whole[:end]
    assert jpeg_size(kept) == bus.size  # the image's frame header, not the thumbnail's
    with pytest.raises(ImageDecodeError, match="damaged image: the JPEG is truncated"):
        probe(_record(kept), LIMIT, whole_jpeg=True)
    with pytest.raises(ImageDecodeError, match="damaged image"):  # the CPU path's own decoders refuse it
        decode(_record(kept), LIMIT)


def test_bytes_after_a_jpegs_end_of_image_marker_do_not_make_it_truncated(bus):
    whole = encode(bus, "JPEG") + b"\0" * 100 + b"a trailer some cameras append"
    probe(_record(whole), LIMIT, whole_jpeg=True)
    assert decode(_record(whole), LIMIT).array.shape == (bus.height, bus.width, 3)


@pytest.mark.parametrize("step", [probe, decode])
@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_decompression_bomb_is_refused_from_its_header_before_allocating(bus_jpeg, step, kind):
    bomb = _png_declaring(60_000, 60_000) if kind == "png" else _jpeg_declaring(bus_jpeg, 65_000, 65_000)
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match=r"exceeds the limit of 178956970"):
            step(_record(bomb), LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # decoding would need 10 GiB or more


def test_pixel_limit_is_the_jobs_not_pillows(bus):
    small = encode(bus.resize((200, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match="200x100 = 20000 pixels exceeds the limit of 19999"):
        decode(_record(small), 19_999)
    # Above Pillow's own bomb limit (2 x 89 M pixels): allowed when the job allows it.
    assert probe(_record(_png_declaring(20_000, 20_000)), 400_000_000).width == 20_000


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_every_pixel_format_of_a_photo_keeps_its_content(bus, mode):
    grey = np.asarray(bus.convert("L"))
    if mode == "I;16":
        image, fmt = Image.fromarray(grey.astype(np.uint16) * 257), "PNG"  # 16-bit PNG
    elif mode == "CMYK":
        image, fmt = bus.convert("CMYK"), "JPEG"
    elif mode == "P":
        image, fmt = bus.quantize(256), "PNG"
    else:
        image, fmt = bus.convert(mode), "PNG"
    record = decode(_record(encode(image, fmt)), LIMIT)
    assert record.array.shape == (bus.height, bus.width, 3) and record.array.dtype == np.uint8
    assert (record.width, record.height) == bus.size
    reference = np.asarray(bus) if mode in ("RGBA", "CMYK", "P") else np.repeat(grey[:, :, None], 3, axis=2)
    tolerance = 10 if mode in ("CMYK", "P") else 0  # lossy JPEG, 256-colour palette
    assert np.abs(record.array.astype(int) - reference).mean() <= tolerance


def test_exif_orientation_is_ignored_boxes_refer_to_the_stored_pixel_grid(bus):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated_tag = encode(bus, "PNG", exif=exif.tobytes())
    plain = decode(_record(encode(bus, "PNG")), LIMIT)
    tagged = decode(_record(rotated_tag), LIMIT)
    assert Image.open(io.BytesIO(rotated_tag)).getexif()[0x0112] == 6
    assert (tagged.width, tagged.height) == (bus.width, bus.height)
    assert np.array_equal(tagged.array, plain.array)


# The CPU's share of a GPU model's JPEGs: set by the job's measured rate.

@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_the_listed_formats_decode(fmt):
    record = decode(Record("k", "s", 0, encoded=encode(gradient(16, 12), fmt)), 1 << 20)
    assert record.array.shape == (12, 16, 3)


@pytest.mark.parametrize("data", [
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # handed to Ghostscript where it is installed
    encode(gradient(8, 8), "PPM"),
])
def test_formats_outside_the_list_are_refused_unopened(data):
    with pytest.raises(ImageDecodeError, match="none of JPEG, PNG, GIF, BMP, WEBP, TIFF"):
        decode(Record("k", "s", 0, encoded=data), 1 << 20)


def test_decode_threads_default_to_the_cpus_the_process_may_use():
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "from batch_predict.decode import usable_cpus; print(usable_cpus())"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert found.stdout.strip() == "1" and usable_cpus() >= 1
