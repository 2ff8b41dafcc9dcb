"""Fixtures shared by the tests: the real assets in shared/, and TFRecords made from them."""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from batch_predict.spec import JobSpec

if importlib.util.find_spec("torchvision") is not None:
    # A process that imports torchvision after TensorFlow 2.21 dies (triton loads beside TF's
    # libraries); the other order works. The suite imports both, in whatever order tests run.
    importlib.import_module("torchvision")

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path | None:
    """`$BATCH_PREDICT_SHARED`, else `../shared` beside the repository if it exists."""
    configured = os.environ.get("BATCH_PREDICT_SHARED")
    if configured:
        return Path(configured).resolve()
    fallback = REPO.parent / "shared"
    return fallback if fallback.is_dir() else None


def shared_file(relative: str) -> Path:
    """A shared asset. Missing while BATCH_PREDICT_SHARED is set (as in CI): the test fails.
    Missing on a machine without shared/: the test is skipped, saying why."""
    root = shared_root()
    if root is None:
        pytest.skip("shared test assets not found: set BATCH_PREDICT_SHARED or place shared/ beside the repository")
    path = root / relative
    if not path.exists():
        if os.environ.get("BATCH_PREDICT_SHARED"):
            pytest.fail(f"BATCH_PREDICT_SHARED is set but {path} is missing")
        pytest.skip(f"shared asset {relative} not found under {root}")
    return path


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return shared_file("data/photos")


@pytest.fixture(scope="session")
def yolox_dir() -> Path:
    return shared_file("models/yolox_nano")


def photo_job(tmp_path: Path, **settings) -> "JobSpec":
    """A small real job: the photos as two JSON-lines files keyed by name, plus a record the test
    model fails on (`poison-bus.jpg`: ValueError) and one that is not an image (ImageDecodeError)."""
    import base64
    import json

    from batch_predict.spec import JobSpec

    photos = sorted(shared_file("data/photos").iterdir())
    lines = [{"key": p.name, "b64": base64.b64encode(p.read_bytes()).decode()} for p in photos]
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines += [{"key": "poison-bus.jpg", "b64": lines[0]["b64"]}, {"key": "junk.jpg", "b64": base64.b64encode(b"no image").decode()}]
    for i in range(2):
        (tmp_path / f"in-{i}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines[i::2]))
    return JobSpec(
        input_file_patterns=(str(tmp_path / "in-*.jsonl"),), input_file_format="json",
        model_dir="unused: the model is given", output_result_prefix=str(tmp_path / "out" / "results"),
        output_error_prefix=str(tmp_path / "out" / "errors"), batch_size=2, num_decode_workers=2, **settings,
    )


def one_unit_output(folder: Path, results: str = "r", errors: str = "e", labels: dict[int, str] | None = None):
    """The output of a job's only unit: `<folder>/<results>-00000-of-00001.jsonl` and its error shard."""
    from batch_predict.inputs.units import Unit
    from batch_predict.outputs.files import FileSink
    from batch_predict.outputs.layout import OutputLayout
    from batch_predict.outputs.result_formats import JsonlResults

    sink = FileSink(OutputLayout(str(folder / results), str(folder / errors)), JsonlResults)
    return sink.open(Unit(0, 1, ()), labels or {})

