"""A GPU's CUDA context opened through the driver alone, while the framework still imports.

Making a CUDA context is the driver's work (0.7-0.9 s of a job's start on an H200, docs/benchmarks.md, 0)
and needs no framework. Called through ctypes, which lets go of the GIL for the call, it runs on
a thread beside `import torch` instead of after it. PyTorch, like any user of the CUDA runtime,
works in the device's primary context, so it finds the context made and takes it over.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Callable

#: The driver library, as Linux names it; where it cannot be loaded there is nothing to open.
DRIVER = "libcuda.so.1"


def cuda_ordinal(device: str) -> int | None:
    """The CUDA device `--device` will run on if it runs on a GPU (`auto` is the first), else None."""
    if device == "cpu":
        return None
    index = device.partition(":")[2]
    return int(index) if index.isdigit() else 0


def _load() -> Any:
    return ctypes.CDLL(DRIVER)


def _started(load_driver: Callable[[], Any]) -> Any:
    """The driver library, started (`cuInit`); None where there is no driver or no GPU."""
    try:
        driver = load_driver()
    except OSError:
        return None
    return None if driver.cuInit(0) else driver


def device_count(load_driver: Callable[[], Any] = _load) -> int:
    """How many GPUs the CUDA driver shows this process (after CUDA_VISIBLE_DEVICES), without
    importing a framework: 0 where there is no driver or no GPU. The driver reads
    CUDA_VISIBLE_DEVICES when it starts, here, so a process that will narrow it must not call this
    before it has."""
    driver, count = _started(load_driver), ctypes.c_int()
    if driver is None or driver.cuDeviceGetCount(ctypes.byref(count)):
        return 0
    return count.value


class PrimaryContext:
    """Device `ordinal`'s primary context, opened on a thread of its own from construction.

    It holds a reference to the context until `hand_over`, called once the framework has opened
    the device itself: the framework's own reference then keeps the context, and one that no
    framework took (PyTorch chose the CPU) is closed.
    """

    def __init__(self, ordinal: int, load_driver: Callable[[], Any] = _load) -> None:
        self.ordinal = ordinal
        self._load_driver = load_driver
        self._held: tuple[Any, ctypes.c_int] | None = None
        # PyTorch sets this before it starts CUDA, and the driver reads it when it starts. Set
        # here, before the thread: setting the environment while another thread reads it can crash.
        os.environ.setdefault("CUDA_MODULE_LOADING", "LAZY")
        self._thread = threading.Thread(target=self._open, name="batch-predict-cuda-context", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        driver, device, context = _started(self._load_driver), ctypes.c_int(), ctypes.c_void_p()
        if driver is None or driver.cuDeviceGet(ctypes.byref(device), self.ordinal):
            return
        if driver.cuDevicePrimaryCtxRetain(ctypes.byref(context), device) == 0:
            self._held = (driver, device)

    @property
    def opened(self) -> bool:
        """Whether the context was opened and is still held here (waits for the opening)."""
        self._thread.join()
        return self._held is not None

    def hand_over(self) -> None:
        """Wait for the opening, then let go of this reference to the context."""
        self._thread.join()
        if self._held is not None:
            driver, device = self._held
            self._held = None
            driver.cuDevicePrimaryCtxRelease_v2(device)
