"""Hostile inputs must not run code: model files, record keys, anything reaching a shell."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch

from batch_predict.models import ModelLoadError, load_model
from batch_predict.spec import JobSpec

SOURCE = Path(__file__).resolve().parents[1] / "src" / "batch_predict"


class _Payload:
    """Unpickling this creates `marker`: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.pkl", "model.torchscript", "saved_model.pb"])
@pytest.mark.parametrize("packing", ["pickle", "torch.save"])
def test_a_model_file_with_a_pickled_payload_is_refused_without_running_it(tmp_path, name, packing):
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if packing == "pickle":
        (model_dir / name).write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"model": _Payload(marker)}, model_dir / name)
    spec = JobSpec(
        input_file_patterns=("unused",), input_file_format="tfrecord", model_dir=str(model_dir),
        output_result_prefix=str(tmp_path / "r"), output_error_prefix=str(tmp_path / "e"),
    )
    with pytest.raises(ModelLoadError):
        load_model(spec.model_settings())
    assert not marker.exists()


def _calls(pattern: str) -> list[str]:
    found = []
    for path in SOURCE.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line):
                found.append(f"{path.relative_to(SOURCE)}:{number}: {line.strip()}")
    return found


def test_no_shell_is_ever_invoked():
    assert _calls(r"shell\s*=\s*True|os\.system\(|os\.popen\(|import subprocess|from subprocess") == []


def _arguments(text: str, start: int) -> str:
    """The text of a call's arguments, from just after its opening parenthesis."""
    depth = 1
    for end in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end]
    return text[start:]


def test_every_torch_load_refuses_pickled_code():
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        for call in re.finditer(r"torch\.load\(", text):
            assert "weights_only=True" in _arguments(text, call.end()), (
                f"{path.relative_to(SOURCE)}: torch.load without weights_only=True"
            )
