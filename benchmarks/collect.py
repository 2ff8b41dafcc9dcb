"""The collecting stage alone: one batch's detections decoded on the GPU and read back, as the
job's collecting thread does it (`TensorModel.collect`), with the GPU idle and with the model
running beside it on another stream, as in the job; and a profile of the collections beside the model.

The job's pace is set by the slower of the model's batch and the collection of one (docs/benchmarks.md,
0b): this measures the collection on its own, on a real batch of YOLOX-Nano outputs.

    PYTHONPATH=src:benchmarks python benchmarks/collect.py --photos ../shared/data/photos \\
        --yolox ../shared/models/yolox_nano/yolox_nano_torchscript.pt --spec examples/specs/yolox_nano.yaml --out /tmp/c
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import torch

from batch_predict.models import load_model
from batch_predict.models.detections import to_detections
from batch_predict.records import Record
from batch_predict.spec import ModelSettings
from decoders import _images, yolox_parser


def timed(fn, count: int) -> dict:
    """Wall and CPU milliseconds of `count` calls of `fn`: median and 90th percentile."""
    walls, cpus = [], []
    for _ in range(count):
        wall, cpu = time.perf_counter(), time.thread_time()
        fn()
        walls.append((time.perf_counter() - wall) * 1e3)
        cpus.append((time.thread_time() - cpu) * 1e3)
    walls.sort()
    return {"wall_ms": round(statistics.median(walls), 2), "wall_p90_ms": round(walls[int(0.9 * len(walls))], 2),
            "cpu_ms": round(statistics.median(cpus), 2)}


class ModelBeside:
    """The network run over and over on a stream of its own, two batches queued, as the job's
    launching thread keeps it."""

    def __init__(self, model, prepared) -> None:
        self._model, self._prepared = model, prepared
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stream = torch.cuda.Stream()
        queued: list[torch.cuda.Event] = []
        with torch.inference_mode(), torch.cuda.stream(stream):
            while not self._stop.is_set():
                self._model.infer(self._prepared)
                done = torch.cuda.Event()
                done.record(stream)
                queued.append(done)
                if len(queued) > 2:
                    queued.pop(0).synchronize()
            stream.synchronize()

    def __enter__(self) -> "ModelBeside":
        self._thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = yolox_parser(__doc__)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--name", default="collect")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = [Record(f"r{i}", "mem", i, encoded=data) for i, data in enumerate(_images(args.photos, args.out, args.batch))]
    model = load_model(ModelSettings(model_dir=args.yolox, model_spec=args.spec, device="cuda", precision="fp16",
                                     batch_size=args.batch))
    model.decode_split = None
    prepared = model.prepare(records)
    launched = model.launch(prepared)
    torch.cuda.synchronize()

    def decode_only() -> None:
        with torch.inference_mode(), model._streams.collecting(launched.done):
            model.decode(launched.outputs, prepared)

    padded = model.decode(launched.outputs, prepared)

    def host_only() -> None:
        to_detections(padded, prepared.geometry, prepared.image_sizes, model.spec.thresholds.score, model._class_ids)

    found = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name(0),
             "batch": args.batch, "detections": int(padded.counts.sum())}
    for _ in range(5):
        model.collect(launched)
    found["idle"] = {"collect": timed(lambda: model.collect(launched), args.calls),
                     "decode": timed(decode_only, args.calls), "to_detections": timed(host_only, args.calls)}
    with ModelBeside(model, prepared):
        found["beside_the_model"] = {"collect": timed(lambda: model.collect(launched), args.calls),
                                     "decode": timed(decode_only, args.calls)}
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                model.collect(launched)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    (args.out / f"{args.name}-profile.txt").write_text(table)
    (args.out / f"{args.name}.json").write_text(json.dumps(found, indent=1))
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
