"""JPEG batches on the model's device: each image through the first decoder that reads it.

The hardware JPEG engines cannot exist here (no GPU in CI): a stand-in decoder refuses what the
engines refuse (progressive and CMYK JPEGs) and decodes the rest with torchvision, so that the
fallback, image by image, runs for real on the CPU.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from batch_predict.decode import jpeg_size
from batch_predict.models.device_decode import DeviceDecodeError, falling_back, nvjpeg_decoder
from batch_predict.models.preprocess import arrays_to_device, device_images

from conftest import REPO
from images import encode

CPU = torch.device("cpu")


def _jpeg(image: Image.Image, **options) -> bytes:
    return encode(image, "JPEG", quality=90, **options)


class EngineStandIn:
    """Decodes baseline RGB JPEGs and refuses progressive or CMYK ones, as the hardware engines do;
    counts how many images each call was given."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._decode = nvjpeg_decoder(CPU)

    def __call__(self, jpegs):
        self.calls.append(len(jpegs))
        refused = [b"\xff\xc2" in j[:2000] or Image.open(io.BytesIO(j)).mode == "CMYK" for j in jpegs]
        decoded = self._decode([j for j, r in zip(jpegs, refused) if not r])
        return [None if r else decoded.pop(0) for r in refused]


@pytest.fixture
def photo(photos_dir) -> Image.Image:
    return Image.open(photos_dir / "zidane.jpg").convert("RGB").resize((160, 96))


def test_what_the_engines_refuse_is_decoded_by_the_next_decoder_with_the_same_pixels(photo):
    engine, second_calls = EngineStandIn(), []
    nvjpeg = nvjpeg_decoder(CPU)

    def second(jpegs):
        second_calls.append(len(jpegs))
        return nvjpeg(jpegs)

    jpegs = [_jpeg(photo), _jpeg(photo, progressive=True), _jpeg(photo.convert("CMYK")), _jpeg(photo)]
    found = falling_back([engine, second], CPU)(jpegs)
    assert engine.calls == [4] and second_calls == [2]  # one batched call each, the refused ones only
    for data, image in zip(jpegs[:2], found[:2]):
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(expected.copy()))
    assert all(tuple(image.shape) == (3, 96, 160) for image in found)


def test_an_image_no_decoder_reads_is_none_and_fails_its_batch_by_name(photo):
    good = _jpeg(photo)
    truncated = good[: len(good) // 3]
    assert jpeg_size(truncated) == (160, 96)  # its header still reads
    found = falling_back([EngineStandIn(), nvjpeg_decoder(CPU)], CPU)([good, truncated])
    assert found[0] is not None and found[1] is None
    with pytest.raises(DeviceDecodeError, match="image 1 of the batch"):
        device_images([good, truncated], CPU, falling_back([EngineStandIn()], CPU))


def test_decoded_arrays_reach_the_device_grouped_by_size_with_their_pixels():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(4, 6, 3), (5, 2, 3), (4, 6, 3)]]
    for array, image in zip(arrays, arrays_to_device(arrays, CPU), strict=True):
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(array))


def test_bytes_become_tensors_without_a_warning_to_the_user():
    code = "from batch_predict.models.device_decode import as_tensor; print(as_tensor(b'ab').tolist())"
    found = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert found.returncode == 0 and found.stdout.strip() == "[97, 98]", found.stderr
