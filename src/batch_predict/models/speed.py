"""Speed options for PyTorch runners: reduced precision, channels-last, compilation.

Each is a job flag (a `ModelSettings` field) whose default leaves the model exactly as loaded. They wrap the
backend's runner, so every PyTorch backend gets them the same way, and the pre- and
post-processing around the call (in `TensorModel`) stays in float32.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..spec import ModelSettings
from .base import ModelLoadError
from .tensor_model import Runner, at_few_batch_sizes

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def is_default(settings: ModelSettings) -> bool:
    return settings.precision == "fp32" and not settings.channels_last and settings.compile == "none"


def input_dtype(settings: ModelSettings, module: Any) -> torch.dtype | None:
    """The dtype a `SpeedRunner` casts a batch to before calling `module`: a scripted module's
    reduced precision (eager modules take float32 under autocast); None where it casts nothing."""
    return _DTYPES.get(settings.precision) if isinstance(module, torch.jit.ScriptModule) else None


class SpeedRunner:
    """Calls a runner's `module` in reduced precision and/or channels-last memory layout.

    TorchScript modules have their weights cast and get inputs of that dtype (autocast
    does not reach inside a scripted graph); eager modules run under autocast, which keeps
    the numerically touchy parts (losses, box arithmetic, NMS) in float32.
    """

    def __init__(self, runner: Any, settings: ModelSettings, device: torch.device) -> None:
        module = runner.module
        self._dtype = _DTYPES.get(settings.precision)
        self._scripted = isinstance(module, torch.jit.ScriptModule)
        self._channels_last = settings.channels_last
        self._device = device
        if self._dtype is not None and self._scripted:
            module = module.to(self._dtype)
        if settings.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if settings.compile == "torch_compile":
            module = torch.compile(module, dynamic=False)
        runner.module = module
        self._runner = runner
        self._describe = {**runner.describe(), "precision": settings.precision, "channels_last": settings.channels_last, "compile": settings.compile}

    def _precision(self) -> contextlib.AbstractContextManager:
        if self._dtype is None or self._scripted:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._dtype)

    def _layout(self, inputs: Any) -> Any:
        if not isinstance(inputs, torch.Tensor):
            return [self._layout(image) for image in inputs]
        if self._dtype is not None and self._scripted:
            inputs = inputs.to(self._dtype)
        if self._channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def __call__(self, inputs: Any) -> Any:
        with self._precision():
            return self._runner(self._layout(inputs))

    def describe(self) -> dict[str, object]:
        return self._describe


class CudaGraphRunner:
    """Replays a CUDA graph captured on the first batch of each input shape.

    Kernel launches cost microseconds each, which for a small model on a large GPU adds
    up to a good share of the batch's time; a graph launches them all at once. Outputs
    live in the graph's static buffers and are overwritten by the next replay, so the
    caller copies them out (`PaddingRunner` joins its chunks into new tensors).
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}

    def __call__(self, inputs: Any) -> Any:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError("--compile cuda_graphs needs a model input of one fixed size (input.resize letterbox or stretch)")
        key = (tuple(inputs.shape), inputs.dtype)
        if key not in self._graphs:
            self._graphs[key] = self._capture(inputs)
        graph, static_input, static_output = self._graphs[key]
        static_input.copy_(inputs)
        graph.replay()
        return static_output

    def _capture(self, inputs: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]:
        static_input = inputs.clone()
        side = torch.cuda.Stream(inputs.device)
        side.wait_stream(torch.cuda.current_stream(inputs.device))
        # TorchScript's optimizing executor profiles and compiles fusions on its first calls,
        # which a capture cannot hold; plain execution records the same kernels.
        with torch.jit.optimized_execution(False):
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: cuDNN picks its algorithms outside the capture
                    self._runner(static_input)
            torch.cuda.current_stream(inputs.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_output = self._runner(static_input)
        return graph, static_input, static_output

    def describe(self) -> dict[str, object]:
        return self._runner.describe()


def accelerate(
    runner: Any, settings: ModelSettings, device: torch.device, *, export_batch: int | None = None
) -> Runner:
    """`runner` (one with a `module`) with the job's speed options, called at a few batch sizes
    only where new input shapes are costly (`at_few_batch_sizes`)."""
    if settings.compile == "cuda_graphs" and device.type != "cuda":
        raise ModelLoadError(f"--compile cuda_graphs: needs a CUDA device; the model is on {device}")
    if settings.precision == "fp16" and device.type == "cpu":
        raise ModelLoadError("--precision fp16: not on the CPU (few CPU kernels take float16); use bf16")
    if settings.compile == "torch_compile" and isinstance(runner.module, torch.jit.ScriptModule):
        raise ModelLoadError(
            "--compile torch_compile: torch.compile cannot compile a TorchScript module; export the model with "
            "torch.export (.pt2) or give its torchvision architecture, or use --compile cuda_graphs on a GPU"
        )
    fast: Runner = runner if is_default(settings) else SpeedRunner(runner, settings, device)
    if settings.compile == "cuda_graphs":
        fast = CudaGraphRunner(fast)
    costly_shapes = device.type == "cuda" or settings.compile != "none"
    return at_few_batch_sizes(fast, settings.batch_size, export_batch=export_batch, costly_shapes=costly_shapes)
