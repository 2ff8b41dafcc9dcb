"""The pipeline under failure: a record that breaks the model, out-of-memory, a stop request."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from batch_predict.pipeline import BatchLimit, Stopped, is_out_of_memory, predict_isolating, run_pipeline
from batch_predict.records import Outcome, Prediction, Record, RecordError

from conftest import shared_file
from toymodels import BrightnessModel


class ListSink:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def write(self, outcomes: list[Outcome]) -> None:
        self.outcomes += outcomes


@pytest.fixture(scope="module")
def photos() -> list[Record]:
    folder = shared_file("data/photos")
    encoded = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
    return [Record(f"photo-{i}", "photos", i, encoded=data) for i, data in enumerate(encoded * 3)]


def _records(photos: list[Record]) -> list[Record]:
    return [Record(r.key, r.source, r.index, encoded=r.encoded) for r in photos]


def _run(model, records, batch_size=8, **options) -> ListSink:
    sink = ListSink()
    read = run_pipeline(records, model, sink, batch_size=batch_size, max_image_pixels=10**8,
                        num_decode_workers=2, queue_depth=2, **options)
    assert read == len(records) == len(sink.outcomes)
    return sink


def test_a_record_that_breaks_the_model_fails_alone(photos):
    model = BrightnessModel(poison=frozenset({"photo-5"}))
    sink = _run(model, _records(photos))
    errors = [o for o in sink.outcomes if isinstance(o, RecordError)]
    assert [(e.key, e.error_type, e.stage) for e in errors] == [("photo-5", "ValueError", "predict")]
    assert "cannot handle ['photo-5']" in errors[0].message
    assert sum(isinstance(o, Prediction) for o in sink.outcomes) == len(photos) - 1
    # One bad record in a batch of 8 costs a bisection: 1 + 2 * log2(8) calls, not 8.
    assert len(model.calls) == len(photos) // 8 + (len(photos) % 8 > 0) + 6


def test_out_of_memory_batches_are_split_and_later_batches_cut_to_what_worked(photos):
    model = BrightnessModel(memory=3)
    sink = _run(model, _records(photos), batch_size=16)
    assert all(isinstance(o, Prediction) for o in sink.outcomes)
    assert model.calls[:4] == [16, 8, 4, 2]  # bisected until a part fits
    succeeded = np.cumsum([size if size <= 3 else 0 for size in model.calls])
    first_batch_done = int(np.searchsorted(succeeded, 16)) + 1
    # Every later batch goes at the size that worked, without running out of memory again.
    assert set(model.calls[first_batch_done:]) == {2}


def test_a_record_too_big_for_memory_alone_is_an_error_and_does_not_shrink_batches(photos):
    limit = BatchLimit()
    model = BrightnessModel(too_big=frozenset({"photo-3"}))
    records = _records(photos)[:16]
    for record in records:
        record.array, record.width, record.height = np.zeros((4, 4, 3), np.uint8), 4, 4
    outcomes = predict_isolating(model, records, limit)
    errors = [o for o in outcomes if isinstance(o, RecordError)]
    assert [(e.key, e.error_type) for e in errors] == [("photo-3", "OutOfMemoryError")]
    assert limit.size == 8  # the half without photo-3 worked at 8


def test_out_of_memory_is_recognised_across_frameworks():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("bad shape"))


def _pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("batch-predict")]


def _wait_until_no_pipeline_threads() -> None:
    for _ in range(100):
        if not _pipeline_threads():
            return
        time.sleep(0.1)
    raise AssertionError(f"pipeline threads still running: {_pipeline_threads()}")


def test_abandon_stops_before_the_next_batch_and_stops_every_thread(photos):
    abandon = threading.Event()
    model = BrightnessModel(on_predict=lambda _: abandon.set())
    endless = (r for _ in range(1000) for r in _records(photos))
    with pytest.raises(Stopped):
        run_pipeline(endless, model, ListSink(), batch_size=4, max_image_pixels=10**8,
                     num_decode_workers=2, queue_depth=2, abandon=abandon)
    assert model.calls == [4]
    _wait_until_no_pipeline_threads()


def test_a_source_that_fails_mid_way_raises_and_stops_every_thread(photos):
    def failing():
        yield from _records(photos)[:10]
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        _run(BrightnessModel(), failing())
    _wait_until_no_pipeline_threads()
