"""Loading any model first gives the process's CUDA streams hardware queues of their own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from backend_helpers import REPO

SPEC = str(REPO / "examples" / "specs" / "yolox_nano.yaml")

_LOAD_AND_SHOW = """
import os, sys
from batch_predict.models import load_model
from batch_predict.spec import ModelSettings
load_model(ModelSettings(model_dir=sys.argv[1], model_spec=sys.argv[2], device="cpu"))
print(os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"))
"""


@pytest.mark.parametrize(("preset", "expected"), [(None, "32"), ("4", "4")])
def test_loading_a_model_sets_the_cuda_queue_count_unless_the_user_chose_one(yolox_dir, preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    if preset is not None:
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = preset
    shown = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_SHOW, str(yolox_dir / "yolox_nano_torchscript.pt"), SPEC],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    )
    assert shown.stdout.strip().splitlines()[-1] == expected
