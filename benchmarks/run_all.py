"""Every benchmark of docs/benchmarks.md, in one run on the same inputs.

    PYTHONPATH=src:benchmarks python benchmarks/run_all.py --photos ../shared/data/photos \\
        --yolox ../shared/models/yolox_nano/yolox_nano_torchscript.pt --spec examples/specs/yolox_nano.yaml \\
        --out "$OUT"

Each measurement runs for a fixed time after a warm-up, inside its own try/except (one
failure loses only itself), and is appended to <out>/results.json as soon as it ends; a
table of the figures and their ratios is printed last. `--quick` runs everything on tiny
inputs, on the CPU when there is no GPU, to check the script before spending GPU time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import baselines
import ceiling
import end_to_end
import host
import stages
from make_inputs import make_file
from batch_predict.models import load_model
from batch_predict.records import Record
from batch_predict.spec import ModelSettings
from batch_predict.inputs.tfrecord import read_records

log = logging.getLogger("bench")


class Results:
    """Measurements by name, rewritten to disk after each one."""

    def __init__(self, path: Path, context: dict) -> None:
        self.path = path
        self.data: dict = {"context": context, "results": {}}
        self._save()

    def measure(self, name: str, fn: Callable[[], dict]) -> dict | None:
        log.info("-- %s", name)
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # one failed measurement must not lose the others
            log.error("%s failed: %s\n%s", name, exc, traceback.format_exc())
            result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        result["took_s"] = round(time.perf_counter() - started, 1)
        log.info("%s: %s", name, result)
        self.data["results"][name] = result
        self._save()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return result

    def figure(self, name: str, key: str = "items_per_s") -> float | None:
        return self.data["results"].get(name, {}).get(key)

    def _save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))


def make_inputs(photos: Path, folder: Path, images: int, files: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    per_file = [images // files + (i < images % files) for i in range(files)]
    paths = [folder / f"bench-{i:05d}-of-{files:05d}.tfrecord" for i in range(files)]
    with ProcessPoolExecutor(min(files, os.cpu_count() or 1)) as pool:
        list(pool.map(make_file, [photos] * files, paths, per_file, range(files)))
    return paths


def encoded_images(paths: list[Path], count: int) -> list[bytes]:
    found: list[bytes] = []
    for path in paths:
        with open(path, "rb") as stream:
            found += list(read_records(stream))
        if len(found) >= count:
            break
    return found[:count]


def agreement(reference: list, other: list, min_score: float = 0.5, min_iou: float = 0.5) -> dict:
    """How far other detections are from the reference's: each reference detection scoring at least
    `min_score` is matched to the same-class detection of most overlap, which must reach `min_iou`;
    max score and box differences."""
    score_diff, box_diff, unmatched, matched = 0.0, 0.0, 0, 0
    for ref, got in zip(reference, other):
        for box, score, cls in zip(ref.boxes, ref.scores, ref.classes):
            if score < min_score:
                continue
            same = got.classes == cls
            if not same.any():
                unmatched += 1
                continue
            boxes = got.boxes[same]
            lo, hi = np.maximum(boxes[:, :2], box[:2]), np.minimum(boxes[:, 2:], box[2:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
            iou = inter / (area(boxes) + area(box) - inter)
            best = int(iou.argmax())
            if iou[best] < min_iou:
                unmatched += 1
                continue
            matched += 1
            score_diff = max(score_diff, float(abs(got.scores[same][best] - score)))
            box_diff = max(box_diff, float(np.abs(boxes[best] - box).max()))
    return {"matched": matched, "unmatched": unmatched, "max_score_diff": round(score_diff, 4),
            "max_box_diff_px": round(box_diff, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    parser.add_argument("--yolox", required=True, help="YOLOX-Nano TorchScript file (labels.txt beside it)")
    parser.add_argument("--spec", required=True, help="its model spec")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench-out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-work"))
    parser.add_argument("--images", type=int, default=16_000)
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each timed loop")
    parser.add_argument("--quick", action="store_true", help="tiny inputs and models: check the script end to end")
    args = parser.parse_args()
    if args.quick:
        args.images, args.files, args.seconds = 96, 8, 0.5
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(args.out / "bench.log"), logging.StreamHandler(sys.stdout)])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    gpus = torch.cuda.device_count()
    half = "fp16" if cuda else "bf16"
    yolox_batch, frcnn_batch = (8, 2) if args.quick else (256, 32)
    # The CPU cannot run Faster R-CNN at 800 px in the quick check's time: smaller inputs, fewer proposals.
    frcnn_args = {"min_size": 320, "max_size": 320, "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 100} if args.quick else {}
    results = Results(args.out / "results.json", {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "gpus": gpus, "cpus": os.cpu_count(),
        "images": args.images, "files": args.files, "seconds": args.seconds, "quick": args.quick,
    })

    paths: list[Path] = []

    def inputs() -> dict:
        paths.extend(make_inputs(args.photos, args.work / "inputs", args.images, args.files))
        return {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths)}

    results.measure("inputs", inputs)
    pattern = str(args.work / "inputs" / "bench-*.tfrecord")
    frcnn_files = max(1, len(paths) * 1500 // args.images) if not args.quick else 2
    frcnn_pattern = ",".join(str(p) for p in paths[:frcnn_files])
    encoded = encoded_images(paths, 2048 if not args.quick else 64)

    # 1. Ceilings.
    results.measure("plumbing_no_model", lambda: host.plumbing(pattern, args.work / "plumbing", 0, yolox_batch))
    for precision, batch, cl in [("fp32", yolox_batch, False), (half, yolox_batch, False),
                                 (half, 2 * yolox_batch, False), (half, yolox_batch, True)]:
        name = f"yolox_model_{precision}_b{batch}" + ("_cl" if cl else "")
        results.measure(name, lambda p=precision, b=batch, c=cl: ceiling.yolox_model_only(
            args.yolox, device, b, p, args.seconds, channels_last=c))
    if cuda:
        results.measure("decode_nvjpeg_b256", lambda: ceiling.nvjpeg_decode(encoded, device, 256, args.seconds))
    else:
        results.data["results"]["decode_nvjpeg_b256"] = {"error": "not measured: no CUDA"}
    results.measure("decode_pillow_1_core", lambda: ceiling.pil_decode(encoded, args.seconds, threads=1))
    results.measure("decode_pillow_all_cores", lambda: ceiling.pil_decode(encoded, args.seconds, threads=os.cpu_count() or 1))
    for precision, cl in [("fp32", False), (half, False), (half, True)]:
        results.measure(f"frcnn_model_{precision}_b{frcnn_batch}" + ("_cl" if cl else ""),
                        lambda p=precision, c=cl: ceiling.fasterrcnn_model_only(device, frcnn_batch, p, args.seconds,
                                                                                channels_last=c, **frcnn_args))

    # Reduced precision against fp32, on real images through the job's model.
    def precision_agreement() -> dict:
        common = dict(model_dir=args.yolox, model_spec=args.spec, device=str(device))
        records = [Record(str(i), "x", i, encoded=b) for i, b in enumerate(encoded[:256])]
        if not cuda:
            from batch_predict.decode import decode
            records = [decode(r, 1 << 30) for r in records]
        reference = load_model(ModelSettings(**common)).predict(records)
        return {precision: agreement(reference, load_model(ModelSettings(**common, precision=precision)).predict(records))
                for precision in (["fp16", "bf16"] if cuda else ["bf16"])}

    results.measure("yolox_precision_agreement", precision_agreement)

    # 2. This project, end to end, through the CLI.
    frcnn_weights = ceiling.fasterrcnn_model_file(args.work / "frcnn", **frcnn_args)
    # Units of 2000 records (8 batches of 256) for YOLOX, 250 (8 of 32) for Faster R-CNN: each
    # unit fills and drains the pipeline once, as a shard of a real job does.
    yolox_args = ["--input_file_patterns", pattern, "--input_file_format", "tfrecord", "--model_dir", args.yolox,
                  "--model_spec", args.spec, "--device", "cuda" if cuda else "cpu",
                  "--num_output_shards", str(max(2, args.images // 2000))]
    frcnn_cli = ["--input_file_patterns", frcnn_pattern, "--input_file_format", "tfrecord",
                 "--model_dir", str(frcnn_weights), "--device", "cuda" if cuda else "cpu",
                 "--batch_size", str(frcnn_batch), "--num_output_shards", "6"]
    cli_log = args.out / "cli.log"
    runs = [
        ("e2e_yolox_fp32", yolox_args + ["--batch_size", str(yolox_batch)], 1),
        (f"e2e_yolox_{half}", yolox_args + ["--batch_size", str(yolox_batch), "--precision", half], 1),
        (f"e2e_yolox_{half}_decode_threads_all", yolox_args + ["--batch_size", str(yolox_batch), "--precision", half,
                                                               "--num_decode_workers", str(os.cpu_count())], 1),
        ("e2e_frcnn_fp32", frcnn_cli, 1),
        (f"e2e_frcnn_{half}", frcnn_cli + ["--precision", half], 1),
    ]
    workers = gpus if gpus > 1 else (2 if not cuda else 0)
    if workers:
        runs += [
            (f"e2e_yolox_{half}_x{workers}", yolox_args + ["--batch_size", str(yolox_batch), "--precision", half], workers),
            (f"e2e_frcnn_{half}_x{workers}", frcnn_cli + ["--precision", half], workers),
        ]
    for name, cli_args, count in runs:
        results.measure(name, lambda a=cli_args, c=count, n=name: end_to_end.run_cli(a, args.work / n, c, cli_log))

    # 3. The usual ways.
    yolox = ceiling.load_yolox(args.yolox, device)
    frcnn = ceiling.fasterrcnn(device, **frcnn_args)
    for name, model in (("yolox", yolox), ("frcnn", frcnn)):
        results.measure(f"loop_{name}_per_image", lambda n=name, m=model: baselines.per_image_loop(
            n, m, device, paths, args.work / f"loop_{n}.jsonl", args.seconds))
        results.measure(f"dataloader_{name}_b32", lambda n=name, m=model: baselines.dataloader_script(
            n, m, device, paths, args.work / f"dl_{n}.jsonl", 32 if not args.quick else 4, args.seconds,
            workers=None if not args.quick else 2))

    # Where the time of the job's own model path goes, stage by stage.
    for precision in ("fp32", half):
        results.measure(f"stages_yolox_{precision}", lambda p=precision: stages.stage_times(ModelSettings(
            model_dir=args.yolox, model_spec=args.spec, device=str(device), precision=p, batch_size=yolox_batch),
            encoded[: 8 * yolox_batch], yolox_batch))

    if cuda:  # last: a capture that fails can leave the device in a state later work trips on
        results.measure(f"yolox_model_{half}_b{yolox_batch}_graph", lambda: ceiling.yolox_model_only(
            args.yolox, device, yolox_batch, half, args.seconds, cuda_graph=True))
        graphs = yolox_args + ["--batch_size", str(yolox_batch), "--precision", half, "--compile", "cuda_graphs"]
        results.measure(f"e2e_yolox_{half}_graphs", lambda: end_to_end.run_cli(graphs, args.work / "graphs", 1, cli_log))
    print_table(results, half, yolox_batch, frcnn_batch, workers)


def print_table(results: Results, half: str, yolox_batch: int, frcnn_batch: int, workers: int) -> None:
    rows = []
    for name, result in results.data["results"].items():
        if "error" in result:
            figure = "FAILED " + result["error"][:80]
        else:
            figure = next((f"{result[k]:>10}" for k in ("steady_per_s", "items_per_s", "slowest_stage_per_s") if result.get(k) is not None), "")
            if "whole_command_per_s" in result:
                figure += f"   (whole command {result['whole_command_per_s']}/s, {result['records']} records)"
            if name == "yolox_precision_agreement":
                figure = json.dumps({k: v for k, v in result.items() if k != "took_s"})
        rows.append(f"{name:<34} {figure}")
    f = results.figure
    best_yolox = max(filter(None, [f(f"e2e_yolox_{half}", "steady_per_s"), f(f"e2e_yolox_{half}_graphs", "steady_per_s")]),
                     default=None)
    best_frcnn_model = max(filter(None, [f(f"frcnn_model_{half}_b{frcnn_batch}"), f(f"frcnn_model_{half}_b{frcnn_batch}_cl")]),
                           default=None)
    ratios = {
        "yolox e2e / model-only fp16": (best_yolox, f(f"yolox_model_{half}_b{yolox_batch}")),
        "frcnn e2e / model-only (same precision)": (f(f"e2e_frcnn_{half}", "steady_per_s"), f(f"frcnn_model_{half}_b{frcnn_batch}")),
        "frcnn model-only best / eager fp32": (best_frcnn_model, f(f"frcnn_model_fp32_b{frcnn_batch}")),
        "yolox e2e / per-image loop": (best_yolox, f("loop_yolox_per_image")),
        "yolox e2e / DataLoader script": (best_yolox, f("dataloader_yolox_b32")),
        "frcnn e2e / per-image loop": (f(f"e2e_frcnn_{half}", "steady_per_s"), f("loop_frcnn_per_image")),
        "frcnn e2e / DataLoader script": (f(f"e2e_frcnn_{half}", "steady_per_s"), f("dataloader_frcnn_b32")),
        f"yolox x{workers} / x1": (f(f"e2e_yolox_{half}_x{workers}", "steady_per_s"), f(f"e2e_yolox_{half}", "steady_per_s")),
        f"frcnn x{workers} / x1": (f(f"e2e_frcnn_{half}_x{workers}", "steady_per_s"), f(f"e2e_frcnn_{half}", "steady_per_s")),
    }
    rows.append("")
    for label, (a, b) in ratios.items():
        rows.append(f"{label:<42} {a / b:6.2f}" if a and b else f"{label:<42}    n/a")
    results.data["ratios"] = {k: (round(a / b, 3) if a and b else None) for k, (a, b) in ratios.items()}
    results._save()
    print("\n".join(["", "name                               images/s (steady state for e2e)"] + rows), flush=True)


if __name__ == "__main__":
    main()
