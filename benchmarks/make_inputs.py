"""Benchmark inputs: TFRecords of 640x480 JPEGs cut from the shared photos.

Each image is a random crop of a random photo, resized to 640x480 and JPEG-encoded at
quality 90, so that every record is distinct (no cache or dedupe effects) while its
content stays realistic. Deterministic for a given seed.

    python benchmarks/make_inputs.py --photos ../shared/data/photos --out /tmp/bench --images 20000 --files 16
"""

from __future__ import annotations

import argparse
import io
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from batch_predict.inputs.tfrecord import write_record

SIZE = (640, 480)


def _load(photo_dir: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(photo_dir.iterdir()) if p.suffix in (".jpg", ".png")]


def make_file(photo_dir: Path, path: Path, count: int, seed: int) -> int:
    """Write one TFRecord file of `count` distinct JPEGs; returns its size in bytes."""
    photos = _load(photo_dir)
    rng = random.Random(seed)
    with open(path, "wb") as stream:
        for _ in range(count):
            photo = rng.choice(photos)
            scale = rng.uniform(0.6, 1.0)
            w, h = int(photo.width * scale), int(photo.height * scale)
            x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            image = photo.crop((x, y, x + w, y + h)).resize(SIZE, Image.BILINEAR)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            write_record(stream, buffer.getvalue())
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    per_file = [args.images // args.files + (i < args.images % args.files) for i in range(args.files)]
    paths = [args.out / f"bench-{i:05d}-of-{args.files:05d}.tfrecord" for i in range(args.files)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        sizes = list(pool.map(make_file, [args.photos] * args.files, paths, per_file, [args.seed + i for i in range(args.files)]))
    total = sum(sizes)
    print(f"{args.images} JPEGs of {SIZE[0]}x{SIZE[1]}, {total / args.images / 1024:.1f} KiB each, in {args.files} files under {args.out}")


if __name__ == "__main__":
    main()
