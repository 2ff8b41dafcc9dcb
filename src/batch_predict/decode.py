"""Turn encoded image bytes into what a model is fed: their size, or RGB pixels.

JPEGs are decoded by simplejpeg (libjpeg-turbo, the GIL released for the whole decode, so a
thread per core scales), anything else, and any JPEG simplejpeg refuses, by Pillow.
EXIF orientation is ignored on purpose: boxes refer to the pixel grid as stored in the
file, which is what TensorFlow's `decode_image` (inside TF OD API exports) and
torchvision's decoders see, so every backend and input kind agrees.
"""

from __future__ import annotations

import io
import struct
import threading
import time
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


def probe(record: Record, max_pixels: int) -> Record:
    """Fill in the size from the image header alone, for models that decode for themselves."""
    if record.array is not None:
        return record
    data = record.encoded or b""
    size = jpeg_size(data)
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
    if not is_jpeg(data):
        return None
    at, end = 2, len(data)
    while at + 9 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _START_OF_FRAME:
            height, width = struct.unpack_from(">HH", data, at + 5)
            return (width, height) if width and height else None
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
        elif marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
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


class DecodeSplit:
    """How many JPEGs the pipeline's CPU workers decode for a model that decodes on its GPU.

    The share is set from the job's own measured rate, not from what either side can do
    alone: CPU decoding competes with the rest of the pipeline for the interpreter and for
    memory bandwidth, and GPU decoding with the model for the SMs, in ways no per-side rate
    shows (docs/benchmarks.md). So the split climbs: it measures images per second over a
    window of batches at one share, tries the next larger share, keeps whichever was faster,
    and tries its neighbours again, soon at first (the first windows run while the GPU and its
    allocator warm up) and then ever less often, so that it follows a job whose images change.
    A window right after a change is not counted: images decoded at the old share are still
    in the queues. The decode workers ask `to_cpu()` of each JPEG; the model reports
    each batch it finished to `batch_done`.
    """

    #: The shares tried, from all on the GPU to mostly on the CPU.
    SHARES = (0.0, 0.125, 0.25, 0.5, 0.75)

    def __init__(self, window: int = 12, recheck_every: int = 16, shares: tuple[float, ...] = SHARES) -> None:
        self.shares = shares
        self._window, self._recheck_every = window, recheck_every
        self._index = 0
        self._rates: dict[int, float] = {}
        self._settling = True
        self._settled_windows = 0
        self._recheck_in = min(2, recheck_every)  # early rates include warm-up: recheck soon, then ever less often
        self._batches = self._images = 0
        self._since: float | None = None
        self._credit = 0.0
        self._lock = threading.Lock()

    @property
    def cpu_share(self) -> float:
        return self.shares[self._index]

    def to_cpu(self) -> bool:
        """Whether the next JPEG goes to a CPU worker: true for `cpu_share` of the calls, spread evenly."""
        with self._lock:
            self._credit += self.shares[self._index]
            if self._credit >= 1.0:
                self._credit -= 1.0
                return True
            return False

    def batch_done(self, images: int, now: float | None = None) -> None:
        """The model finished a batch of `images` (at `now`, a `time.perf_counter()` reading)."""
        now = time.perf_counter() if now is None else now
        with self._lock:
            if self._since is None:
                self._since = now
                return
            self._batches += 1
            self._images += images
            if self._batches < self._window:
                return
            rate = self._images / max(now - self._since, 1e-9)
            self._batches = self._images = 0
            self._since = now
            if self._settling:
                self._settling = False
                return
            self._rates[self._index] = rate
            self._choose()

    def _choose(self) -> None:
        here, best = self._index, max(self._rates, key=self._rates.__getitem__)
        if best != here:
            self._move(best)
        elif here + 1 < len(self.shares) and here + 1 not in self._rates:
            self._move(here + 1)  # the best so far: see whether more on the CPU is faster still
        else:
            self._settled_windows += 1
            if self._settled_windows >= self._recheck_in:
                self._settled_windows = 0
                self._recheck_in = min(2 * self._recheck_in, self._recheck_every)
                for neighbour in (here - 1, here + 1):
                    self._rates.pop(neighbour, None)
                self._move(here - 1 if here > 0 else min(here + 1, len(self.shares) - 1))

    def _move(self, index: int) -> None:
        if index != self._index:
            self._index, self._settling = index, True

    def describe(self) -> dict[str, object]:
        return {"cpu_share": self.cpu_share,
                "images_per_s_by_share": {self.shares[i]: round(r) for i, r in sorted(self._rates.items())}}
