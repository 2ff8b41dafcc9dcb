"""Where a batch's time goes in the job's own model path, one stage at a time.

Each stage of `TensorModel` runs alone, synchronized, over the same batches: decode and
preprocess (`prepare`), the network (`infer`), head decoding with NMS and the copy back
(`complete` less `infer`), and formatting the JSON lines. Run serially their sum bounds
one process from below; the pipeline overlaps them, so the largest one bounds it from above.
"""

from __future__ import annotations

import time


from batch_predict import decode
from batch_predict.models import load_model
from batch_predict.records import Prediction, Record
from batch_predict.outputs.result_formats import result_lines
from batch_predict.spec import ModelSettings

from timing import sync


def stage_times(settings: ModelSettings, encoded: list[bytes], batch: int) -> dict:
    model = load_model(settings)
    records = [decode.probe(Record(str(i), "bench", i, encoded=data), 1 << 30) for i, data in enumerate(encoded)]
    if model.input_kind == "image":
        records = [decode.decode(r, 1 << 30) for r in records]
    batches = [records[i : i + batch] for i in range(0, len(records) - batch + 1, batch)]
    model.predict(batches[0])  # warm-up
    totals = {"prepare": 0.0, "infer": 0.0, "decode_nms_copy": 0.0, "json": 0.0}
    for chunk in batches:
        sync()
        t0 = time.perf_counter()
        prepared = model.prepare(chunk)
        sync()
        t1 = time.perf_counter()
        launched = model.launch(prepared)
        sync()
        t2 = time.perf_counter()
        found = model.collect(launched)
        t3 = time.perf_counter()
        lines = result_lines([Prediction(r, d) for r, d in zip(chunk, found)], model.labels)
        t4 = time.perf_counter()
        totals["prepare"] += t1 - t0
        totals["infer"] += t2 - t1
        totals["decode_nms_copy"] += t3 - t2
        totals["json"] += t4 - t3
        assert lines.count(b"\n") == len(chunk)
    images = len(batches) * batch
    per_image = {f"{k}_us": round(v / images * 1e6, 1) for k, v in totals.items()}
    return {**per_image, "images": images, "batch": batch,
            "serial_per_s": round(images / sum(totals.values()), 1),
            "slowest_stage_per_s": round(images / max(totals.values()), 1)}
