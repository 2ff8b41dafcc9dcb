"""Write the demo's inputs: TFRecords of JPEGs, and the ground truth of the generated scenes.

    python -m demo.make_samples --out_dir demo-out/samples

`generated.tfrecord` holds generated scenes (their exact boxes go to `ground_truth.json`);
`photos.tfrecord` holds real photos bundled with scikit-image and one record whose bytes are
not an image, so that the job's error file has a line to show. Records are `tf.train.Example`s
with `image/encoded` and `image/source_id` (the job's key), as TF OD API datasets are written.
The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from batch_predict.inputs.tf_example import build_example
from batch_predict.inputs.tfrecord import write_record

from .scenes import CLASSES, JPEG_QUALITY, SAMPLES_SPLIT, encode_jpeg, job_scene, load_backgrounds

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
BAD_RECORD_KEY = "not-an-image"


def _example(key: str, encoded: bytes) -> bytes:
    return build_example({"image/encoded": encoded, "image/source_id": key.encode(), "image/format": b"jpeg"})


def write_scenes(path: Path, count: int) -> dict[str, dict]:
    """`count` generated scenes as one TFRecord file; returns their ground truth by key."""
    photos = load_backgrounds()
    truth = {}
    with path.open("wb") as stream:
        for index in range(count):
            scene = job_scene(SAMPLES_SPLIT, index, photos)
            key = f"scene-{index:04d}"
            write_record(stream, _example(key, encode_jpeg(scene.image, JPEG_QUALITY)))
            truth[key] = {
                "width": scene.image.width,
                "height": scene.image.height,
                "objects": [
                    {"box": [round(v, 2) for v in box], "class_id": class_id, "label": CLASSES[class_id - 1]}
                    for box, class_id in zip(scene.boxes.tolist(), scene.classes.tolist())
                ],
            }
    return truth


def write_photos(path: Path) -> None:
    """Real photos (no shapes in them), then one record of bytes that are not an image."""
    from skimage import data

    with path.open("wb") as stream:
        for name in PHOTOS:
            image = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
            write_record(stream, _example(f"photo-{name}", encode_jpeg(image, JPEG_QUALITY)))
        write_record(stream, _example(BAD_RECORD_KEY, b"these bytes are not an image"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="demo-out/samples")
    parser.add_argument("--scenes", type=int, default=24, help="Number of generated scenes.")
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = write_scenes(out_dir / "generated.tfrecord", args.scenes)
    write_photos(out_dir / "photos.tfrecord")
    (out_dir / "ground_truth.json").write_text(json.dumps({"classes": list(CLASSES), "images": truth}))
    objects = sum(len(t["objects"]) for t in truth.values())
    print(f"wrote {args.scenes} scenes ({objects} objects), {len(PHOTOS)} photos and 1 bad record under {out_dir}/")


if __name__ == "__main__":
    main()
