"""A GPU's context opened through the driver is held until the framework has it, then let go
once; a machine without a driver or a GPU opens nothing. A GPU cannot exist in CI, so the
driver here is a stand-in that keeps the real driver's calls and return codes."""

from __future__ import annotations

import ctypes
import os

import pytest

from batch_predict.models.cuda_driver import PrimaryContext, cuda_ordinal, device_count

CUDA_ERROR_NO_DEVICE = 100


class Driver:
    """The calls of libcuda's API that `cuda_driver` makes, counting references to contexts."""

    def __init__(self, devices: int = 2) -> None:
        self.devices = devices
        self.references: dict[int, int] = {}

    def cuInit(self, flags: int) -> int:
        return 0 if self.devices else CUDA_ERROR_NO_DEVICE

    def cuDeviceGetCount(self, count) -> int:
        count._obj.value = self.devices
        return 0

    def cuDeviceGet(self, device, ordinal: int) -> int:
        if ordinal >= self.devices:
            return 101  # CUDA_ERROR_INVALID_DEVICE
        device._obj.value = ordinal
        return 0

    def cuDevicePrimaryCtxRetain(self, context, device: ctypes.c_int) -> int:
        self.references[device.value] = self.references.get(device.value, 0) + 1
        context._obj.value = 0x1000 + device.value
        return 0

    def cuDevicePrimaryCtxRelease_v2(self, device: ctypes.c_int) -> int:
        self.references[device.value] -= 1
        return 0


@pytest.mark.parametrize(("device", "ordinal"), [("cpu", None), ("auto", 0), ("cuda", 0), ("cuda:3", 3), ("gpu:1", 1)])
def test_the_device_flag_names_the_cuda_device_opened(device, ordinal):
    assert cuda_ordinal(device) == ordinal


def test_the_context_is_held_until_handed_over_then_let_go_once():
    driver = Driver()
    context = PrimaryContext(1, load_driver=lambda: driver)
    assert context.opened
    assert driver.references == {1: 1}
    context.hand_over()
    context.hand_over()
    assert driver.references == {1: 0}
    assert not context.opened


@pytest.mark.parametrize(("driver", "ordinal"), [(Driver(devices=0), 0), (Driver(devices=1), 1)], ids=["no-gpu", "no-such-gpu"])
def test_a_driver_that_refuses_leaves_nothing_to_let_go(driver, ordinal):
    context = PrimaryContext(ordinal, load_driver=lambda: driver)
    assert not context.opened
    context.hand_over()
    assert driver.references == {}


def no_driver():
    raise OSError("libcuda.so.1: cannot open shared object file")


def test_a_machine_without_the_driver_opens_nothing():
    context = PrimaryContext(0, load_driver=no_driver)
    assert not context.opened
    context.hand_over()


@pytest.mark.parametrize(("load_driver", "count"), [(lambda: Driver(devices=2), 2), (lambda: Driver(devices=0), 0), (no_driver, 0)],
                         ids=["two-gpus", "no-gpu", "no-driver"])
def test_the_driver_counts_the_gpus_it_shows(load_driver, count):
    assert device_count(load_driver) == count


def test_the_driver_starts_with_lazy_kernel_loading_as_under_pytorch(monkeypatch):
    monkeypatch.setenv("CUDA_MODULE_LOADING", "unset below, restored after")
    monkeypatch.delenv("CUDA_MODULE_LOADING")
    PrimaryContext(0, load_driver=Driver).hand_over()
    assert os.environ["CUDA_MODULE_LOADING"] == "LAZY"
