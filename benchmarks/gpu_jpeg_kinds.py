"""Which kinds of JPEG each of the job's GPU decoders reads, and how close its pixels are to Pillow's.

A second GPU decoder behind nvjpeg (the job's, `device_decode.device_decoder`) would earn its
place only by reading JPEGs that nvjpeg refuses; nvImageCodec's hardware decoder read none
(docs/benchmarks.md, 0e), so the job has none. This decodes one JPEG of each kind (sampling, progressive, grey, CMYK, restart markers, odd and
large sizes, truncated) with torchvision's nvjpeg and nvImageCodec's hardware decoder, each image
on its own and all in one batch:

    PYTHONPATH=src:benchmarks python benchmarks/gpu_jpeg_kinds.py --photo ../shared/data/photos/bus.jpg --out "$OUT" \\
        [--model ../shared/models/yolox_nano/yolox_nano_torchscript.pt --spec examples/specs/yolox_nano.yaml]

With a model, the job also runs on the GPU over one TFRecord file of them all: which ended as
results and which as error lines. Writes <out>/gpu_jpeg_kinds.json.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image

from engines import hardware_decoder
from batch_predict import JobSpec, run
from batch_predict.inputs.tfrecord import write_record
from batch_predict.models.device_decode import nvjpeg_decoder


def kinds(photo: Image.Image) -> dict[str, bytes]:
    """One JPEG of each kind, from `photo`."""

    def pil(image: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90, **options)
        return buffer.getvalue()

    rgb = np.asarray(photo)
    found = {
        "baseline_420": pil(photo, subsampling=2), "baseline_422": pil(photo, subsampling=1),
        "baseline_444": pil(photo, subsampling=0), "optimized_huffman": pil(photo, optimize=True),
        "progressive": pil(photo, progressive=True), "grey": pil(photo.convert("L")), "cmyk": pil(photo.convert("CMYK")),
        "odd_size_17x13": pil(photo.resize((17, 13))), "one_pixel": pil(photo.resize((1, 1))),
        "large_6000x4000": pil(photo.resize((6000, 4000))),
        **{f"sampling_{s}": simplejpeg.encode_jpeg(rgb, 90, colorsubsampling=s) for s in ("440", "411")},
    }
    try:
        found["restart_markers"] = pil(photo, restart_marker_rows=1)
    except TypeError:  # a Pillow before 10.1 writes none
        pass
    found["truncated"] = found["baseline_420"][: len(found["baseline_420"]) // 2]
    return found


def compare(decoded: torch.Tensor | None, data: bytes) -> dict:
    if decoded is None:
        return {"read": False}
    try:
        reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)
    except OSError as exc:
        return {"read": True, "pillow": f"{type(exc).__name__}: {exc}"}
    pixels = decoded.permute(1, 2, 0).cpu().numpy().astype(np.int16)
    if pixels.shape != reference.shape:
        return {"read": True, "shape": list(pixels.shape), "pillow_shape": list(reference.shape)}
    diff = np.abs(pixels - reference)
    return {"read": True, "mean_abs_diff": round(float(diff.mean()), 2), "max_abs_diff": int(diff.max())}


def job_over(jpegs: dict[str, bytes], model: str, spec: str | None, folder: Path) -> dict[str, str]:
    """The job on the GPU over one TFRecord file of `jpegs`, in their order: for each kind,
    "result" or its error line's type and message."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "kinds.tfrecord", "wb") as stream:
        for data in jpegs.values():
            write_record(stream, data)
    run(JobSpec(input_file_patterns=(str(folder / "kinds.tfrecord"),), input_file_format="tfrecord", model_dir=model,
                model_spec=spec, output_result_prefix=str(folder / "results"), output_error_prefix=str(folder / "errors"),
                batch_size=len(jpegs), overwrite=True, max_error_rate=1.0))
    lines = lambda kind: [json.loads(line) for p in folder.glob(f"{kind}-*.jsonl") for line in p.open()]  # noqa: E731
    outcome = {line["record_index"]: "result" for line in lines("results")}
    outcome |= {line["record_index"]: f"{line['error_type']}: {line['message']}" for line in lines("errors")}
    return {kind: outcome.get(i, "missing") for i, kind in enumerate(jpegs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", help="a model for the job over the JPEGs (its --model_dir)")
    parser.add_argument("--spec", help="its --model_spec")
    args = parser.parse_args()
    device = torch.device("cuda")
    jpegs = kinds(Image.open(args.photo).convert("RGB"))
    decoders = {"nvjpeg": nvjpeg_decoder(device), "hardware": hardware_decoder(device)}
    found: dict[str, dict] = {}
    for name, decode in decoders.items():
        if decode is None:
            found[name] = {"error": "not available"}
            continue
        alone = {kind: compare(decode([data])[0], data) for kind, data in jpegs.items()}
        batched = dict(zip(jpegs, decode(list(jpegs.values()))))
        found[name] = {kind: {**alone[kind], "read_in_a_batch": batched[kind] is not None} for kind in jpegs}
    if args.model:
        found["job"] = job_over(jpegs, args.model, args.spec, args.out / "job")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_jpeg_kinds.json").write_text(json.dumps(found, indent=1))
    for kind in jpegs:
        print(f"{kind:18s}", "  ".join(f"{name}: {found[name].get(kind)}" for name in found))


if __name__ == "__main__":
    main()
