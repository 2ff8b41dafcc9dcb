"""`webdataset`: WebDataset tar shards (`.tar`, `.tar.gz`), as LAION, DataComp and most web-scale
sets are kept. One sample is the members sharing a key (a member's path up to the first dot of
its name); its image member (`jpg`, `jpeg`, `png`, `webp`, `bmp`, `gif`) is predicted and the
rest (`json`, `txt`...) ignored. Shards are read whole, as a stream, one member at a time.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

from ...records import FailedRecord, Record
from ..sources import InputFile
from . import InputFormat, Packing, ReadOptions
from .tfrecord import image_format

#: Image members, in the order one is chosen where a sample holds several.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member, as WebDataset splits them: at the first dot of the file name."""
    folder, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower()


def read_webdataset(file: InputFile, stream: Any, start: int, end: int | None, options: ReadOptions) -> Iterator[Record | FailedRecord]:
    index = 0
    key: str | None = None
    found: dict[str, bytes | int] = {}  # extension -> bytes, or the size of one too large to read
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, extension = split_name(member.name)
            if member_key != key:
                if key is not None:
                    yield _sample(file, key, index, found, options.max_record_bytes)
                    index += 1
                key, found = member_key, {}
            if extension in IMAGE_EXTENSIONS:
                reader = tar.extractfile(member) if member.size <= options.max_record_bytes else None
                found[extension] = reader.read() if reader is not None else member.size
    if key is not None:
        yield _sample(file, key, index, found, options.max_record_bytes)


def _sample(file: InputFile, key: str, index: int, found: dict[str, bytes | int], max_bytes: int) -> Record | FailedRecord:
    image = next((found[e] for e in IMAGE_EXTENSIONS if e in found), None)
    if image is None:
        return FailedRecord(key, file.url, index, "NoImageMember",
                            f"the sample has no {' / '.join(IMAGE_EXTENSIONS)} member", "read")
    if isinstance(image, int):
        return FailedRecord.too_large(key, file.url, index, f"image member of {image} bytes", max_bytes)
    return Record(key, file.url, index, encoded=image)


@contextlib.contextmanager
def sample_shard(raw: Any) -> Iterator[Callable[[str, bytes], None]]:
    """A WebDataset shard on `raw`: each image one sample of one member, `<key>.<image type>`, with
    the dots of the key's last part made dashes, since WebDataset's key ends at the first dot."""
    with tarfile.open(fileobj=raw, mode="w|") as tar:
        def write(key: str, payload: bytes) -> None:
            folder, base = posixpath.split(key)
            stem = posixpath.splitext(base)[0].replace(".", "-")
            info = tarfile.TarInfo(posixpath.join(folder, f"{stem}.{_image_type(payload, base)}"))
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        yield write


def _image_type(data: bytes, name: str) -> str:
    kind = image_format(data, name)
    return "jpg" if kind == "jpeg" else kind if kind in IMAGE_EXTENSIONS else "jpg"


FORMAT = InputFormat(
    "webdataset", read_webdataset,
    "WebDataset tar shards (.tar, .tar.gz): one record per sample, its image member predicted, keyed by __key__.",
    compression="infer", looks_like=lambda name, head: name.lower().endswith((".tar", ".tar.gz", ".tgz")),
    packing=Packing("tar", lambda key, data, record_kind: data, sample_shard),
)
