import itertools
import threading
import time

import numpy as np
import pytest

import torch

from batch_predict.pipeline import (
    Batch, BatchLimit, PixelBudget, StagedModel, Stopped, _Writer, background, form_batches, is_out_of_memory,
    launch_prepared, launch_threads_of, predict_isolating, prepare_for, run_pipeline,
)
from batch_predict.records import Detections, Prediction, Record, FailedRecord, UnitEnd

from images import encode, gradient
from conftest import one_unit_output
from toymodels import MeanColourModel, StagedMeanColourModel


def _record(key, width=8, height=6):
    return Record(key, "src", 0, array=np.full((height, width, 3), 128, np.uint8), width=width, height=height)


def test_one_bad_record_fails_alone_and_its_batch_mates_are_predicted():
    model = MeanColourModel()
    batch = [_record(f"r{i}") for i in range(16)]
    batch[11] = _record("poison-11")
    outcomes = predict_isolating(model, batch)
    assert [o.record.key if isinstance(o, Prediction) else o.key for o in outcomes] == [r.key for r in batch]
    (error,) = [o for o in outcomes if isinstance(o, FailedRecord)]
    assert error.key == "poison-11" and error.error_type == "ValueError" and error.stage == "predict"
    assert len(model.batch_sizes) <= 1 + 2 * 4  # bisection, not one call per record


def test_same_size_batches_group_by_size_and_errors_pass_straight_through():
    error = FailedRecord("bad", "src", 0, "E", "m", "read")
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
    assert isinstance(bad, FailedRecord) and bad.stage == "decode" and bad.key == "bad"


def test_every_record_ends_once_in_results_or_errors(tmp_path):
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8 + i % 3, 8))) for i in range(50)]
    records[7] = Record("poison", "src", 7, encoded=encode(gradient(8, 8)))
    records[20] = Record("broken", "src", 20, encoded=b"not an image")
    records.insert(30, FailedRecord("unread", "src", 30, "TFRecordCorruption", "m", "read"))
    outputs = one_unit_output(tmp_path, labels={1: "image"})
    read = run_pipeline(
        records, MeanColourModel(), outputs, batch_size=8, max_image_pixels=1 << 20, num_decode_workers=2, queue_depth=2
    )
    counts = outputs.commit(read)
    assert (counts.records_read, counts.predicted, counts.failed) == (51, 48, 3)
    assert counts.error_types == {"ImageDecodeError": 1, "TFRecordCorruption": 1, "ValueError": 1}
    assert threading.active_count() < 10


# Out of device memory: split and retry, then cut later batches to the size that worked.
# torch.cuda.OutOfMemoryError is the real exception type; only its cause is simulated.

def test_out_of_memory_batches_are_split_and_later_batches_cut_to_what_worked():
    model, limit = MeanColourModel(memory=3), BatchLimit()
    first = predict_isolating(model, [_record(f"a{i}") for i in range(16)], limit)
    assert model.batch_sizes[:4] == [16, 8, 4, 2]  # bisected until a part fits
    tries_of_the_first_batch = len(model.batch_sizes)
    later = [o for b in range(3) for o in predict_isolating(model, [_record(f"b{b}-{i}") for i in range(16)], limit)]
    assert all(isinstance(o, Prediction) for o in first + later) and len(first + later) == 64
    # No more out-of-memory tries: every later batch goes at the size that worked.
    assert limit.size == 2 and set(model.batch_sizes[tries_of_the_first_batch:]) == {2}


def test_a_record_too_big_for_memory_alone_is_an_error_and_shrinks_batches_once_at_most():
    model, limit = MeanColourModel(), BatchLimit()
    batch = [_record(f"r{i}") for i in range(16)]
    batch[3] = _record("too-big-3")
    outcomes = predict_isolating(model, batch, limit)
    (error,) = [o for o in outcomes if isinstance(o, FailedRecord)]
    assert (error.key, error.error_type, error.stage) == ("too-big-3", "OutOfMemoryError", "predict")
    assert limit.size == 8  # the half without it worked whole


def test_out_of_memory_is_recognised_across_frameworks():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("bad shape"))


# Stopping and failing: every thread of the pipeline ends.

def _pipeline_threads():
    return [t for t in threading.enumerate() if t.name.startswith("batch-predict")]


def _wait_until_no_pipeline_threads():
    for _ in range(100):
        if not _pipeline_threads():
            return
        time.sleep(0.1)
    raise AssertionError(f"pipeline threads still running: {_pipeline_threads()}")


class _ListSink:
    def __init__(self):
        self.outcomes = []

    def write(self, outcomes):
        self.outcomes += outcomes


def test_abandon_stops_before_the_next_batch_and_stops_every_thread():
    abandon = threading.Event()
    model = MeanColourModel(on_predict=lambda _: abandon.set())
    endless = (_record(f"k{i}") for i in range(10**9))
    with pytest.raises(Stopped):
        run_pipeline(endless, model, _ListSink(), batch_size=4, max_image_pixels=1 << 20,
                     num_decode_workers=2, queue_depth=2, abandon=abandon)
    assert model.batch_sizes == [4]
    _wait_until_no_pipeline_threads()


def test_a_source_that_fails_mid_way_raises_and_stops_every_thread():
    def failing():
        yield from (_record(f"k{i}") for i in range(10))
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        run_pipeline(failing(), MeanColourModel(), _ListSink(), batch_size=4, max_image_pixels=1 << 20,
                     num_decode_workers=2, queue_depth=2)
    _wait_until_no_pipeline_threads()


# Batches prepared ahead (StagedModel): the same outcomes as predicting each batch in turn.

def _outcomes_of(model, tmp_path, name, records):
    outputs = one_unit_output(tmp_path, name, f"{name}e", {1: "image"})
    read = run_pipeline(records, model, outputs, batch_size=8, max_image_pixels=1 << 20, num_decode_workers=2, queue_depth=2)
    counts = outputs.commit(read)
    lines = [(tmp_path / f"{name}{kind}-00000-of-00001.jsonl").read_text() for kind in ("", "e")]
    return counts, lines


def test_batches_prepared_ahead_give_the_outcomes_of_batches_predicted_in_turn(tmp_path):
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8 + i % 3, 8))) for i in range(60)]
    records[9] = Record("poison-9", "src", 9, encoded=encode(gradient(8, 8)))
    records[33] = Record("too-big-33", "src", 33, encoded=encode(gradient(8, 8)))
    staged = StagedMeanColourModel(memory=4)
    in_turn = _outcomes_of(MeanColourModel(memory=4), tmp_path, "turn", records)
    ahead = _outcomes_of(staged, tmp_path, "ahead", records)
    assert ahead == in_turn
    assert in_turn[0].failed == 2 and in_turn[0].predicted == 58
    assert staged.prepared  # the prepare stage ran


def test_a_staged_model_that_says_nothing_of_its_launching_threads_keeps_its_staged_path(tmp_path):
    staged = StagedMeanColourModel()
    assert not hasattr(staged, "launch_threads") and isinstance(staged, StagedModel)
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8, 8))) for i in range(24)]
    counts, _ = _outcomes_of(staged, tmp_path, "plain", records)
    assert counts.predicted == 24 and staged.prepared == [8, 8, 8] and staged.launched == [8, 8, 8]
    assert launch_threads_of(staged) == 1


def test_staged_batches_are_collected_on_a_thread_of_their_own_not_the_launching_one(tmp_path):
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8, 8))) for i in range(40)]
    staged = StagedMeanColourModel(fail_at="collect")
    counts, _ = _outcomes_of(staged, tmp_path, "staged", records)
    assert counts.predicted == 40 and sum(staged.launched) == 40
    assert staged.collected_on == {"batch-predict-collector"}


class _SlowFirstPrepare(StagedMeanColourModel):
    """Its first batch takes a while to prepare, as a GPU's JPEG decode that waits for the device."""

    def __init__(self, input_kind: str) -> None:
        super().__init__(fail_at="collect")
        self.input_kind = input_kind
        self.spans: list[tuple[str, float, float]] = []  # first key, when preparing began and ended
        self.launch_order: list[str] = []

    def prepare(self, records):
        began = time.perf_counter()
        if not self.spans and records[0].key == "k0":
            time.sleep(0.3)
        self.spans.append((records[0].key, began, time.perf_counter()))
        return super().prepare(records)

    def launch(self, prepared):
        self.launch_order.append(prepared[0].key)
        return super().launch(prepared)


@pytest.mark.parametrize("input_kind", ["jpeg", "image"])
def test_a_model_decoding_jpegs_on_its_device_prepares_two_batches_at_once_launched_in_order(tmp_path, input_kind):
    # PNGs: decoded to pixels by the pipeline for either kind of model, which the toy model reads.
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8, 8), "PNG")) for i in range(40)]
    model = _SlowFirstPrepare(input_kind)
    counts, _ = _outcomes_of(model, tmp_path, "two", records)
    assert counts.predicted == 40
    first = next(span for span in model.spans if span[0] == "k0")
    second = next(span for span in model.spans if span[0] == "k8")
    # Prepared while the first batch still was, where the model decodes JPEGs; after it otherwise.
    assert (second[2] < first[2]) == (input_kind == "jpeg")
    assert model.launch_order == [f"k{i}" for i in range(0, 40, 8)]


class _HeldLaunches(StagedMeanColourModel):
    """Each launch holds its thread for a while, as Faster R-CNN's forward waits on its GPU; the
    pipeline launches from `launch_threads` threads."""

    def __init__(self, launch_threads: int) -> None:
        super().__init__(memory=4)
        self.launch_threads = launch_threads
        self.spans: list[tuple[float, float, str]] = []  # when each launch began and ended, and on which thread

    def launch(self, prepared):
        began = time.perf_counter()
        time.sleep(0.03)
        try:
            return super().launch(prepared)
        finally:
            self.spans.append((began, time.perf_counter(), threading.current_thread().name))


@pytest.mark.parametrize("launch_threads", [1, 2])
def test_batches_launched_from_several_threads_at_once_give_the_outcomes_of_batches_predicted_in_turn(tmp_path, launch_threads):
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8 + i % 3, 8))) for i in range(60)]
    records[9] = Record("poison-9", "src", 9, encoded=encode(gradient(8, 8)))
    records[33] = Record("too-big-33", "src", 33, encoded=encode(gradient(8, 8)))
    model = _HeldLaunches(launch_threads)
    in_turn = _outcomes_of(MeanColourModel(memory=4), tmp_path, "turn", records)
    launched = _outcomes_of(model, tmp_path, "launched", records)
    assert launched == in_turn  # the same lines in the same order: each batch written in its place
    assert in_turn[0].failed == 2 and in_turn[0].predicted == 58
    overlapping = any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(model.spans, 2))
    assert overlapping == (launch_threads > 1)
    threads = {span[2] for span in model.spans}
    assert all(name.startswith("batch-predict-launch") for name in threads) == (launch_threads > 1)


class _SlowFirstWrite:
    """An `OutcomeSink` whose first write takes `seconds`, as a commit's disk syncs can."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.outcomes, self.first_done = seconds, [], None

    def write(self, outcomes):
        if not self.outcomes:
            time.sleep(self.seconds)
            self.first_done = time.perf_counter()
        self.outcomes += outcomes

    def end(self, mark):
        pass


def test_batches_are_collected_while_the_writing_thread_is_held_up():
    records = [Record(f"k{i}", "src", i, encoded=encode(gradient(8, 8))) for i in range(80)]
    staged, sink = StagedMeanColourModel(fail_at="collect"), _SlowFirstWrite(0.5)
    run_pipeline(records, staged, sink, batch_size=8, max_image_pixels=1 << 20, num_decode_workers=2, queue_depth=2)
    assert len(sink.outcomes) == 80
    # One thread collecting and writing would have collected one batch before its first write returned.
    assert sum(at < sink.first_done for at in staged.collected_at) >= 4


@pytest.mark.parametrize("fail_at", ["launch", "collect"])
def test_a_prepared_batch_that_fails_is_bisected_so_only_its_bad_record_fails(fail_at):
    model, limit = StagedMeanColourModel(fail_at=fail_at), BatchLimit()
    batch = Batch(_record(f"r{i}") for i in range(8))
    batch[5] = _record("poison-5")
    outcomes = launch_prepared(model, batch, model.prepare(batch), limit)()
    assert [o.key for o in outcomes if isinstance(o, FailedRecord)] == ["poison-5"]
    assert [o.record.key for o in outcomes if isinstance(o, Prediction)] == [r.key for r in batch if r.key != "poison-5"]


def test_a_prepared_batch_larger_than_the_memory_limit_is_cut_first():
    model, limit = StagedMeanColourModel(memory=2), BatchLimit()
    limit.size = 2
    batch = Batch(_record(f"r{i}") for i in range(8))
    outcomes = launch_prepared(model, batch, model.prepare(batch), limit)()
    assert all(isinstance(o, Prediction) for o in outcomes) and set(model.batch_sizes) == {2}


# Several units through one pipeline: batches run across their ends, each end is delivered in place.

def test_a_batch_runs_across_a_unit_end_and_carries_it_in_place():
    end_a, error_b = UnitEnd("a", 3), FailedRecord("bad-b", "src", 9, "E", "m", "read")
    items = [_record("a0"), _record("a1"), _record("a2"), end_a, _record("b0"), error_b, _record("b1"), _record("b2")]
    out = list(form_batches(items, batch_size=5, same_size=False))
    assert [[r.key for r in b] for b in out] == [["a0", "a1", "a2", "b0", "b1"], ["b2"]]
    assert out[0].marks == [(3, end_a), (4, error_b)] and out[1].marks == []


@pytest.mark.parametrize("same_size", [False, True])
def test_once_asked_to_stop_the_batches_end_with_the_next_unit(same_size):
    stop = threading.Event()
    stop.set()
    end_a = UnitEnd("a", 2)
    items = [_record("a0"), _record("a1"), end_a, _record("b0"), UnitEnd("b", 1)]
    out = list(form_batches(items, batch_size=4, same_size=same_size, stop=stop))
    assert [list(b) if isinstance(b, Batch) else b for b in out][-1] in (end_a, [items[0], items[1]])
    assert all(r.key.startswith("a") for b in out if isinstance(b, Batch) for r in b)
    assert sum(b is end_a or (isinstance(b, Batch) and any(m is end_a for _, m in b.marks)) for b in out) == 1


def test_same_size_batches_end_with_their_unit():
    end_a = UnitEnd("a", 2)
    items = [_record("a0", 8, 6), _record("a1", 4, 4), end_a, _record("b0", 8, 6)]
    out = list(form_batches(items, batch_size=4, same_size=True))
    assert [[r.key for r in b] if isinstance(b, Batch) else b for b in out] == [["a0"], ["a1"], end_a, ["b0"]]


class _UnitSink(_ListSink):
    def __init__(self):
        super().__init__()
        self.units = []

    def end(self, mark):
        self.units.append((mark.unit, [o.key if isinstance(o, FailedRecord) else o.record.key for o in self.outcomes]))
        self.outcomes = []


@pytest.mark.parametrize("model", [MeanColourModel(same_size_batches=False), StagedMeanColourModel(same_size_batches=False)],
                         ids=["in turn", "staged"])
def test_each_unit_end_reaches_the_sink_after_exactly_its_own_outcomes(model):
    def units():
        for unit in range(5):
            keys = [f"u{unit}-{i}" for i in range(unit + 2)]
            yield from (_record(k) if k != "u3-1" else FailedRecord(k, "src", 1, "E", "m", "read") for k in keys)
            yield UnitEnd(unit, len(keys))

    sink = _UnitSink()
    read = run_pipeline(units(), model, sink, batch_size=4, max_image_pixels=1 << 20, num_decode_workers=2, queue_depth=2)
    assert read == 2 + 3 + 4 + 5 + 6
    assert [(unit, sorted(keys)) for unit, keys in sink.units] == [
        (unit, sorted(f"u{unit}-{i}" for i in range(unit + 2))) for unit in range(5)
    ]
    assert model.batch_sizes == [4, 4, 4, 4, 3]  # only the last unit ends in a partial batch


def test_a_budget_smaller_than_a_batch_still_predicts_every_record_in_order_of_room(tmp_path):
    """Each image takes the whole budget: batches leave as they are, one image at a time, and
    nothing waits forever (records are admitted in stream order, and the batches being filled
    leave when a decode waits)."""
    images = [Record(f"k{i}", "src", i, encoded=encode(gradient(40 + i % 3, 30))) for i in range(12)]
    outputs = one_unit_output(tmp_path, labels={1: "image"})
    read = run_pipeline(images, MeanColourModel(same_size_batches=False), outputs, batch_size=8, max_image_pixels=1 << 20,
                        num_decode_workers=4, queue_depth=2, max_decoded_bytes=40 * 30 * 3)
    counts = outputs.commit(read)
    assert (counts.records_read, counts.predicted, counts.failed) == (12, 12, 0)


def test_a_batchs_pixel_bytes_go_back_to_the_budget_only_once_its_outcomes_are_written():
    """The records hold their pixels until written (`--visualize` draws on them): the budget must count them till then."""
    budget, writing, go_on = PixelBudget(100), threading.Event(), threading.Event()

    class HeldUp:
        def write(self, outcomes):
            writing.set()
            go_on.wait(10)

        def end(self, mark):
            pass

    budget.acquire(60)
    writer = _Writer(HeldUp(), 2, budget)
    nothing = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    writer.put([[Prediction(_record("a"), nothing)]], charged=60)
    assert writing.wait(10)
    assert not budget.try_acquire(60)  # still held while the write is under way
    go_on.set()
    writer.finish()
    assert budget.try_acquire(100)
