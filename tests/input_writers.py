"""The same images written in each input format, with the tools each world uses (files,
Python's `tarfile` for WebDataset shards, pyarrow for Parquet): inputs for tests that read them."""

from __future__ import annotations

import csv
import io
import tarfile
from collections.abc import Mapping
from pathlib import Path


def write_folder(images: Mapping[str, bytes], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in images]


def write_file_list(locations: list[str], path: Path, keys: list[str] | None = None) -> Path:
    """A text list (one location per line, with a comment and a blank line), or with `keys` a CSV."""
    if keys is None:
        path.write_text("# images\n\n" + "".join(f"{location}\n" for location in locations))
        return path
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "uri"])
        writer.writerows(zip(keys, locations))
    return path


def write_webdataset(images: Mapping[str, bytes], path: Path, gzip: bool = False) -> Path:
    """One sample per image, `<stem>.jpg` (as named) beside `<stem>.json`, as WebDataset writes them."""
    with tarfile.open(path, "w:gz" if gzip else "w") as tar:
        for name, data in images.items():
            stem = name.split(".", 1)[0]
            for member, content in ((name, data), (f"{stem}.json", b'{"source": "test"}')):
                info = tarfile.TarInfo(member)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def write_parquet(images: Mapping[str, bytes], path: Path, *, as_struct: bool = False, row_group_size: int = 4) -> Path:
    """A table of `key` and `image`: bytes, or {bytes, path} structs as Hugging Face datasets writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = [{"bytes": data, "path": name} for name, data in images.items()] if as_struct else list(images.values())
    pq.write_table(pa.table({"key": list(images), "image": cells}), path, row_group_size=row_group_size)
    return path
