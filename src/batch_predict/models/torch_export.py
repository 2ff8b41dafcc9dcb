"""`torch.export` programs (`.pt2` archives from `torch.export.save`).

`torch.export.load` unpickles some archive members with `weights_only=False`. An archive is
therefore checked first: weights, constants and sample inputs must be plain tensors, or the
file is refused, so that no object in it is ever unpickled.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping

import torch
from torch.export.passes import move_to_device_pass

from ..spec import ModelSettings
from .base import ModelLoadError
from .formats import Located, read_bytes
from .model_spec import DTYPES, ModelSpec
from .speed import accelerate
from .tensor_model import ModuleRunner, TensorModel, open_torch_runtime, torch_device


open_runtime = open_torch_runtime


def check_plain_archive(data: bytes, path: str) -> None:
    """Refuse a `.pt2` archive whose loading would unpickle anything but plain tensors."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    for name in archive.namelist():
        if name.endswith(("_weights_config.json", "_constants_config.json")):
            config = json.loads(archive.read(name)).get("config", {})
            pickled = sorted(key for key, meta in config.items() if meta.get("use_pickle"))
            if pickled:
                raise ModelLoadError(
                    f"--model_dir: {path!r} stores {len(pickled)} pickled object(s) ({', '.join(pickled[:3])}); "
                    "refusing to unpickle them. Re-export the program with plain tensors"
                )
        elif name.endswith(".pt") and ("/data/weights/" in name or "/data/constants/" in name):
            raise ModelLoadError(f"--model_dir: {path!r} is a legacy .pt2 archive that stores pickles; re-export it")
        elif "/data/sample_inputs/" in name:
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:  # anything torch refuses to read as plain tensors
                raise ModelLoadError(
                    f"--model_dir: {path!r} has sample inputs that are not plain tensors; refusing to unpickle them"
                ) from None


def _declared_input(program: torch.export.ExportedProgram) -> tuple[list[int | None] | None, str | None]:
    """The first user input's shape (None for dynamic dimensions) and dtype, as exported."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor):
                shape: list[int | None] = [d if isinstance(d, int) else None for d in value.shape]
                return shape, str(value.dtype).removeprefix("torch.")
            return None, None
    return None, None


def load(located: Located, spec: ModelSpec, labels: Mapping[int, str], settings: ModelSettings) -> TensorModel:
    device = torch_device(settings.device)
    data = read_bytes(located.path)
    check_plain_archive(data, located.path)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types for archives it cannot read
        raise ModelLoadError(f"--model_dir: cannot load torch.export program {located.path!r}: {exc}") from None
    program = move_to_device_pass(program, device)
    shape, dtype = _declared_input(program)
    batch = shape[0] if shape else None
    resolved = spec.resolve_input(shape, dtype if dtype in DTYPES else None)
    runner = accelerate(ModuleRunner(program.module(), {"format": "torch_export"}), settings, device, export_batch=batch)
    return TensorModel(runner, resolved, labels, device, backend="torch_export")
