"""Planning work units: deterministic, complete, balanced, and shared out among workers."""

from __future__ import annotations

import fsspec
import pytest

from batch_predict.inputs.sources import InputFile
from batch_predict.inputs.units import AUTO_MAX_UNITS, Slice, num_units, plan_units, units_for_worker

FS = fsspec.filesystem("memory")


def _files(*sizes: int) -> list[InputFile]:
    return [InputFile(f"memory://in/{i:03d}", FS, f"/in/{i:03d}", size) for i, size in enumerate(sizes)]


def _coverage(units) -> dict[str, list[tuple[int, int | None]]]:
    covered: dict[str, list[tuple[int, int | None]]] = {}
    for unit in units:
        for piece in unit.slices:
            covered.setdefault(piece.file.url, []).append((piece.start, piece.end))
    return covered


def test_default_is_one_unit_per_file_each_reading_it_whole():
    files = _files(10, 2000, 30)
    units = plan_units(files, "tfrecord", 0)
    assert [(u.index, u.count) for u in units] == [(0, 3), (1, 3), (2, 3)]
    assert [u.slices for u in units] == [(Slice(f),) for f in files]


def test_auto_unit_count_is_capped():
    assert num_units(0, 3 * AUTO_MAX_UNITS) == AUTO_MAX_UNITS
    assert num_units(5, 3) == 5


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_fewer_units_than_files_group_contiguous_whole_files_none_empty(count):
    files = _files(100, 1, 1, 1, 300, 50, 50, 200)
    units = plan_units(files, "tfrecord", count)
    flat = [piece for unit in units for piece in unit.slices]
    assert flat == [Slice(f) for f in files]
    assert len(units) == count and all(unit.slices for unit in units)


def test_grouping_balances_bytes():
    units = plan_units(_files(*[10] * 40), "json", 4)
    assert [len(u.slices) for u in units] == [10, 10, 10, 10]


def test_more_units_than_files_split_files_into_contiguous_byte_ranges_by_size():
    files = _files(1000, 3000)
    units = plan_units(files, "tfrecord", 8)
    assert all(len(u.slices) == 1 for u in units)
    covered = _coverage(units)
    assert covered[files[0].url] == [(0, 500), (500, None)]
    assert covered[files[1].url] == [(0, 500), (500, 1000), (1000, 1500), (1500, 2000), (2000, 2500), (2500, None)]


def test_gzip_files_are_not_split_and_spare_units_stay_empty():
    units = plan_units(_files(1000, 3000), "tfrecord_gzip", 4)
    assert [len(u.slices) for u in units] == [1, 1, 0, 0]
    assert all(piece.end is None and piece.start == 0 for u in units for piece in u.slices)


def test_plan_is_the_same_for_the_same_inputs():
    files = _files(5, 900, 77, 0, 12)
    for count in (0, 2, 5, 13):
        assert plan_units(files, "json", count) == plan_units(list(files), "json", count)


def test_workers_share_units_by_stride_each_unit_exactly_once():
    units = plan_units(_files(*[1] * 10), "tfrecord", 0)
    shares = [units_for_worker(units, index, 3) for index in range(3)]
    assert [[u.index for u in share] for share in shares] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError):
        units_for_worker(units, 3, 3)
