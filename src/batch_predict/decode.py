"""Turn encoded image bytes into what a model is fed: their size, or RGB pixels.

JPEGs are decoded by simplejpeg (libjpeg-turbo, the GIL released for the whole decode, so a
thread per core scales), anything else, and any JPEG simplejpeg refuses, by Pillow.
EXIF orientation is ignored on purpose: boxes refer to the pixel grid as stored in the
file, which is what TensorFlow's `decode_image` (inside TF OD API exports) and
torchvision's decoders see, so every backend and input kind agrees.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
import simplejpeg
from PIL import Image

from .errors import RecordFailure
from .records import Record

# The job enforces its own, configurable pixel limit (`check_size`), from the header, before
# any pixel is allocated; Pillow's fixed limit would override a user's higher --max_image_pixels.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
Image.MAX_IMAGE_PIXELS = None

_JPEG_MAGIC = b"\xff\xd8"
#: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC), which share the range.
_START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

_CHANNELS_TO_RGB = {1: lambda a: np.repeat(a, 3, axis=2), 3: lambda a: a, 4: lambda a: a[:, :, :3]}


class ImageDecodeError(RecordFailure, ValueError):
    """The bytes are not an image Pillow can decode, or the image is damaged."""


class ImageTooLarge(RecordFailure, ValueError):
    """The image declares more pixels than the job allows (a decompression bomb guard)."""


def check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}")


#: The image formats a job decodes. Pillow knows many more, some through outside programs (EPS
#: through Ghostscript): a record must not choose what runs on the worker.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy image of encoded bytes, in one of `IMAGE_FORMATS`; raises `ImageDecodeError` else."""
    if not data:
        raise ImageDecodeError("empty image bytes")
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a decodable image: none of {', '.join(IMAGE_FORMATS)} in its first bytes {data[:8]!r}"
        ) from None
    except Exception as exc:  # Pillow raises several types for bytes that are not an image
        raise ImageDecodeError(f"not a decodable image: {exc}") from None


def probe(record: Record, max_pixels: int, *, whole_jpeg: bool = False) -> Record:
    """Fill in the size from the image header alone, for models that decode for themselves.

    With `whole_jpeg`, for a JPEG the GPU will decode: one that ends before its image data does
    raises `ImageDecodeError`. Pillow and libjpeg refuse such a file, but nvjpeg and nvImageCodec's
    decoder on the GPU decode what there is and fill in the rest (`benchmarks/gpu_jpeg_kinds.py`),
    so the job checks the JPEGs it leaves to the GPU, and one is an error line there too. Its frame
    header is found once for both.
    """
    if record.array is not None:
        return record
    data = record.encoded or b""
    frame = _frame_header(data)
    if whole_jpeg:
        _check_whole(data, frame)
    size = _size_at(data, frame)
    record.width, record.height = size if size is not None else open_image(data).size
    check_size(record.width, record.height, max_pixels)
    return record


def is_jpeg(data: bytes) -> bool:
    return data[:2] == _JPEG_MAGIC


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None for anything else (Pillow then says).

    Walks the segment markers to the first start-of-frame: a few steps, against opening the
    file with Pillow, which parses every header segment in Python while holding the GIL. At
    ten thousand images a second that difference is a third of a core.
    """
    return _size_at(data, _frame_header(data))


def _size_at(data: bytes, frame: int | None) -> tuple[int, int] | None:
    if frame is None or frame + 9 > len(data):
        return None
    height, width = struct.unpack_from(">HH", data, frame + 5)
    return (width, height) if width and height else None


def _check_whole(data: bytes, frame: int | None) -> None:
    """A JPEG is whole if an end-of-image marker follows its frame header (bytes after the marker
    are allowed, as by Pillow; an EXIF thumbnail's marker comes before the header). One search from
    the end, which finds a whole JPEG's marker at once."""
    if frame is None or data.rfind(b"\xff\xd9", frame) < 0:
        raise ImageDecodeError("damaged image: the JPEG is truncated (no end-of-image marker after its image data)")


def _frame_header(data: bytes) -> int | None:
    """Where a JPEG's frame header (start of frame) starts, or None if the header breaks off or
    ends first. The segments are stepped over by their lengths, so the markers of a JPEG inside
    one (an EXIF thumbnail's) are not taken for the image's."""
    if not is_jpeg(data):
        return None
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in _START_OF_FRAME:
            return at
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
        elif marker in (0xD9, 0xDA):  # end of image, or start of scan, first
            return None
        else:
            at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 from any Pillow mode: grey, palette, alpha, CMYK and 16-bit included."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: keep the high byte, as an 8-bit export of the same image would.
        wide = np.asarray(image, dtype=np.uint32)
        return to_uint8_rgb((wide >> 8).clip(0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from an HxW, HxWx1, HxWx3 or HxWx4 array of 0..255 values."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _CHANNELS_TO_RGB:
        raise ImageDecodeError(f"expected an HxWx3 image array, got shape {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageDecodeError(f"image array has no pixels (shape {list(array.shape)})")
    return np.ascontiguousarray(_CHANNELS_TO_RGB[array.shape[2]](array))


def decode(record: Record, max_pixels: int) -> Record:
    """Decode to RGB pixels, for models fed image tensors."""
    if record.array is None:
        data = record.encoded or b""
        record.array = _decode_jpeg(data, max_pixels) if is_jpeg(data) else None
        if record.array is None:
            record.array = _decode_any(data, max_pixels)
        record.encoded = None
    record.height, record.width = record.array.shape[:2]
    check_size(record.width, record.height, max_pixels)
    return record


def _decode_jpeg(data: bytes, max_pixels: int) -> np.ndarray | None:
    """simplejpeg's RGB pixels, or None for a JPEG it cannot read (CMYK, damaged): Pillow then tries."""
    size = jpeg_size(data)
    if size is None:
        return None
    check_size(*size, max_pixels)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None


def _decode_any(data: bytes, max_pixels: int) -> np.ndarray:
    image = open_image(data)
    check_size(*image.size, max_pixels)
    try:
        image.load()
        return to_rgb_array(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"damaged image: {exc}") from None


def encode_png(record: Record) -> Record:
    """Encode an array record losslessly, for models that take encoded strings."""
    if record.array is not None:
        buffer = io.BytesIO()
        Image.fromarray(record.array).save(buffer, format="PNG", compress_level=1)
        record.height, record.width = record.array.shape[:2]
        record.encoded, record.array = buffer.getvalue(), None
    return record


def usable_cpus() -> int:
    """The CPUs this process may run on: all of the machine's, or those a container's cpuset or `taskset` leaves it."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
