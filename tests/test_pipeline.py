import threading
import time

import numpy as np
import pytest

from batch_predict.pipeline import background, form_batches, predict_isolating, prepare_for, run_pipeline
from batch_predict.records import Detections, Prediction, Record, RecordError
from batch_predict.sinks import JobOutputs

from images import encode, gradient


class MeanColourModel:
    """A real, if trivial, detector: one whole-image box scored by mean brightness.

    Fails any batch holding a record whose key starts with "poison", as a model fails
    on an input it cannot handle, and counts its calls.
    """

    input_kind = "image"
    same_size_batches = True
    labels = {1: "image"}

    def __init__(self):
        self.batch_sizes = []

    def predict(self, records):
        self.batch_sizes.append(len(records))
        if any(r.key.startswith("poison") for r in records):
            raise ValueError("cannot handle poison")
        return [
            Detections(
                boxes=np.array([[0, 0, r.width, r.height]], np.float32),
                scores=np.array([r.array.mean() / 255], np.float32),
                classes=np.array([1]),
            )
            for r in records
        ]

    def describe(self):
        return {"backend": "test"}


def _record(key, width=8, height=6):
    return Record(key, "src", 0, array=np.full((height, width, 3), 128, np.uint8), width=width, height=height)


def test_one_bad_record_fails_alone_and_its_batch_mates_are_predicted():
    model = MeanColourModel()
    batch = [_record(f"r{i}") for i in range(16)]
    batch[11] = _record("poison-11")
    outcomes = predict_isolating(model, batch)
    assert [o.record.key if isinstance(o, Prediction) else o.key for o in outcomes] == [r.key for r in batch]
    (error,) = [o for o in outcomes if isinstance(o, RecordError)]
    assert error.key == "poison-11" and error.error_type == "ValueError" and error.stage == "predict"
    assert len(model.batch_sizes) <= 1 + 2 * 4  # bisection, not one call per record


def test_same_size_batches_group_by_size_and_errors_pass_straight_through():
    error = RecordError("bad", "src", 0, "E", "m", "read")
    items = [_record("a", 8, 6), _record("b", 4, 4), error, _record("c", 8, 6), _record("d", 4, 4), _record("e", 8, 6)]
    out = list(form_batches(items, batch_size=3, same_size=True))
    assert out[0] is error
    batches = [[r.key for r in b] for b in out[1:]]
    assert batches == [["a", "c", "e"], ["b", "d"]]


def test_waiting_groups_are_bounded_by_flushing_the_largest():
    sizes = [(i % 10 + 1, 1) for i in range(100)]
    items = [_record(f"k{i}", w, h) for i, (w, h) in enumerate(sizes)]
    out = list(form_batches(items, batch_size=4, same_size=True))
    assert sorted(r.key for b in out for r in b) == sorted(r.key for r in items)
    assert all(len({(r.width, r.height) for r in b}) == 1 for b in out)


def test_mixed_sizes_share_batches_when_the_model_resizes():
    items = [_record("a", 8, 6), _record("b", 4, 4), _record("c", 2, 2)]
    assert [len(b) for b in form_batches(items, batch_size=2, same_size=False)] == [2, 1]


def test_background_reraises_the_producers_exception():
    def failing():
        yield 1
        raise OSError("disk gone")

    consumed = []
    with pytest.raises(OSError, match="disk gone"):
        for item in background(failing(), depth=2):
            consumed.append(item)
    assert consumed == [1]


def test_background_runs_at_most_depth_ahead():
    produced = []

    def counting():
        for i in range(100):
            produced.append(i)
            yield i

    stream = background(counting(), depth=3)
    next(stream)
    time.sleep(0.2)
    assert len(produced) <= 1 + 3 + 1  # consumed, queued, and one blocked in put
    stream.close()


def test_decode_failures_become_errors_of_the_decode_stage():
    prepare = prepare_for(MeanColourModel(), max_pixels=1 << 20)
    good = prepare(Record("ok", "src", 0, encoded=encode(gradient())))
    bad = prepare(Record("bad", "src", 1, encoded=b"nope"))
    assert isinstance(good, Record) and good.array.shape == (48, 64, 3)
    assert isinstance(bad, RecordError) and bad.stage == "decode" and bad.key == "bad"


def test_every_record_ends_once_in_results_or_errors(tmp_path):
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8 + i % 3, 8))) for i in range(50)]
    records[7] = Record("poison", "src", 7, encoded=encode(gradient(8, 8)))
    records[20] = Record("broken", "src", 20, encoded=b"not an image")
    records.insert(30, RecordError("unread", "src", 30, "TFRecordCorruption", "m", "read"))
    outputs = JobOutputs(str(tmp_path / "r"), str(tmp_path / "e"), 2, {1: "image"})
    read = run_pipeline(
        records, MeanColourModel(), outputs, batch_size=8, max_image_pixels=1 << 20, num_decode_workers=2, queue_depth=2
    )
    summary = outputs.close(1, read, 1.0)
    assert (summary.records_read, summary.predicted, summary.failed) == (51, 48, 3)
    assert summary.error_types == {"ImageDecodeError": 1, "TFRecordCorruption": 1, "ValueError": 1}
    assert threading.active_count() < 10
