"""Each batch's JPEGs shared between CPU threads and the device's decoder, the share climbed on the
job's rate. The device decoder here is torchvision's on the CPU (no GPU in CI): the same calls,
on real JPEGs."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from batch_predict.models.decode_split import (
    DecodeSplit, nvimgcodec_host_decoder, simplejpeg_host_decoder, split_decoder,
)
from batch_predict.models.device_decode import nvjpeg_decoder

from images import encode

CPU = torch.device("cpu")

#: Each way of decoding the CPU's share: simplejpeg on threads, and nvImageCodec's CPU decoder (the
#: `nvimgcodec` extra, installed with the test dependencies: its CPU decoder needs no GPU).
HOST_DECODERS = {"simplejpeg": simplejpeg_host_decoder, "nvimgcodec": nvimgcodec_host_decoder}


def _jpeg(image: Image.Image, **options) -> bytes:
    return encode(image, "JPEG", quality=90, **options)


class CountingDecoder:
    """torchvision's decoder, counting the images of each call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._decode = nvjpeg_decoder(CPU)

    def __call__(self, jpegs):
        self.calls.append(len(jpegs))
        return self._decode(jpegs)


@pytest.fixture
def jpegs(photos_dir) -> list[bytes]:
    photos = [Image.open(path).convert("RGB") for path in sorted(photos_dir.glob("*.jpg"))]
    return [_jpeg(photo.resize((96 + 16 * i, 64 + 8 * i))) for i, photo in enumerate(photos * 4)][:8]


@pytest.mark.parametrize("on_host", HOST_DECODERS)
def test_the_cpu_share_of_a_batch_is_decoded_on_the_cpu_to_the_device_decoders_pixels(jpegs, on_host):
    device = CountingDecoder()
    found = split_decoder(device, DecodeSplit(shares=(0.5,)), CPU, on_host=HOST_DECODERS[on_host](3))(jpegs)
    assert device.calls == [4]  # one call, for the half not given to the CPU
    expected = nvjpeg_decoder(CPU)(jpegs)
    for image, reference in zip(found, expected, strict=True):
        assert image.shape == reference.shape and image.dtype == torch.uint8
        assert (image.int() - reference.int()).abs().max() <= 1  # both libjpeg-turbo, its accurate IDCT


def test_without_a_cpu_share_the_device_decodes_the_whole_batch_in_one_call(jpegs):
    device = CountingDecoder()
    found = split_decoder(device, DecodeSplit(shares=(0.0,)), CPU)(jpegs)
    assert device.calls == [8] and all(image is not None for image in found)


@pytest.mark.parametrize("on_host", HOST_DECODERS)
def test_jpegs_the_cpu_cannot_read_go_to_the_device_decoder_and_only_unreadable_ones_are_none(photos_dir, on_host):
    photo = Image.open(photos_dir / "zidane.jpg").convert("RGB").resize((160, 96))
    good = _jpeg(photo)
    truncated, garbage = good[: len(good) // 3], b"\xff\xd8 not a JPEG after all"
    device = CountingDecoder()
    found = split_decoder(device, DecodeSplit(shares=(0.75,)), CPU, on_host=HOST_DECODERS[on_host](2))(
        [truncated, garbage, good, good])
    assert device.calls == [1, 2]  # the rest of the batch, then what the CPU could not read
    assert found[0] is None and found[1] is None and all(tuple(found[i].shape) == (3, 96, 160) for i in (2, 3))


@pytest.mark.parametrize("on_host", HOST_DECODERS)
def test_a_cmyk_jpeg_decoded_on_the_cpu_has_pillows_rgb(photos_dir, on_host):
    photo = Image.open(photos_dir / "zidane.jpg").convert("RGB").resize((160, 96))
    cmyk = _jpeg(photo.convert("CMYK"))
    device = CountingDecoder()
    (found,) = split_decoder(device, DecodeSplit(shares=(1.0,)), CPU, on_host=HOST_DECODERS[on_host](2))([cmyk])
    expected = np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB"))
    assert device.calls == [] and (found.permute(1, 2, 0).int() - torch.from_numpy(expected.copy()).int()).abs().max() <= 1


def test_the_cpu_share_carries_fractions_over_to_the_next_batches():
    split = DecodeSplit(shares=(0.125,))
    counts = [split.cpu_count(3) for _ in range(8)]
    assert sum(counts) == 3 and max(counts) == 1


def _run_split(split, rate_at_share, batches, images=256):
    """Feed `split` the batches of a job whose rate at each share is `rate_at_share(share)`."""
    now, shares = 0.0, []
    for _ in range(batches):
        split.batch_done(images, now)
        shares.append(split.cpu_share)
        now += images / rate_at_share(split.cpu_share)
    return shares


def test_the_split_keeps_every_jpeg_on_the_gpu_when_cpu_decoding_slows_the_job():
    split = DecodeSplit(window=4, settle=2, budget=0.1)
    shares = _run_split(split, lambda share: 6000 * (1 - share), 100)
    assert shares[-1] == 0.0 and max(shares) == DecodeSplit.SHARES[1]  # tried one step, came back


@pytest.mark.parametrize("batches", [150, 400, 2000, 10_000])
def test_tries_of_a_share_that_does_not_pay_stay_within_the_budget_of_the_jobs_batches(batches):
    shares = _run_split(DecodeSplit(budget=0.05), lambda share: 6000 * (1 - share), batches)
    off_the_gpu = len(shares) - Counter(shares)[0.0]
    assert off_the_gpu <= 0.05 * batches
    assert (off_the_gpu > 0) == (batches >= 1000)  # a long job still tries: it would find a share that paid


def test_a_job_too_short_to_pay_for_a_try_keeps_every_jpeg_on_the_gpu():
    """A few hundred batches are seconds on a GPU: a try there could cost more than any share could win."""
    shares = _run_split(DecodeSplit(), lambda share: 6000 * (1 + share), 300)  # the CPU would pay here
    assert set(shares) == {0.0}
    later = _run_split(DecodeSplit(), lambda share: 6000 * (1 + share), 1500)[-500:]
    assert Counter(later).most_common(1)[0][0] == DecodeSplit.SHARES[-1]  # a longer job climbs


def test_the_split_climbs_to_the_fastest_share_and_stays_there():
    best = 0.25
    split = DecodeSplit(window=4, settle=2, budget=0.1)
    shares = _run_split(split, lambda share: 4000 + 8000 * (share if share <= best else 2 * best - share), 200)
    assert shares[-1] == best and set(shares) <= {0.0, 0.125, 0.25, 0.5}


def test_the_split_tries_its_neighbours_again_and_follows_a_change():
    split = DecodeSplit(window=4, settle=2, budget=0.2)
    _run_split(split, lambda share: 6000 * (1 - share), 100)
    assert split.cpu_share == 0.0
    shares = _run_split(split, lambda share: 3000 + 3000 * share, 400)  # now the CPU is the faster side
    # Most of the time at the top, checking the share below now and then.
    assert Counter(shares[-100:]).most_common(1)[0][0] == DecodeSplit.SHARES[-1]


def test_the_batches_right_after_a_change_are_not_counted():
    split = DecodeSplit(window=2, settle=2, budget=1.0)
    # The first two batches fill the pipeline and are not counted; the next two, at share 0, run
    # at 1000 images/s; then the share moves, and the settling batches' rate (an outlier here)
    # must not be taken as share 0.125's.
    for now in (-1.5, -1.0, 0.0, 1.0, 2.0):
        split.batch_done(1000, now)
    assert split.cpu_share == 0.125 and split.describe()["images_per_s_by_share"] == {0.0: 1000}
    for now in (2.001, 2.002):  # settling: absurdly fast, ignored
        split.batch_done(1000, now)
    assert split.describe()["images_per_s_by_share"] == {0.0: 1000}


def test_a_larger_cpu_share_must_be_clearly_faster_to_be_kept():
    split = DecodeSplit(window=4, settle=2, budget=0.1)
    shares = _run_split(split, lambda share: 6000 * (1 + share / 4), 200)  # 3% faster per step: noise-sized
    assert shares[-1] == 0.0


def test_a_share_that_won_while_the_job_warmed_up_is_left_once_the_share_before_is_measured_again():
    split = DecodeSplit(window=4, settle=2, budget=0.1)
    warm_after = 80  # batches: share 0 is slow until then, as a GPU and its allocator warming up
    count = [0]

    def rate(share):
        count[0] += 1
        return (1000 if count[0] < warm_after else 6000) if share == 0.0 else 4000 * (1 - share)

    shares = _run_split(split, rate, 400)
    assert DecodeSplit.SHARES[1] in shares[:warm_after]  # taken on the warm-up's rate
    assert Counter(shares[-200:]).most_common(1)[0][0] == 0.0


@pytest.mark.parametrize("on_host", HOST_DECODERS)
def test_pixels_decoded_on_the_cpu_are_the_images_own(jpegs, on_host):
    """Not only close to the device decoder's: each image's own pixels, in its own place of the buffer."""
    found = split_decoder(CountingDecoder(), DecodeSplit(shares=(0.75,)), CPU, on_host=HOST_DECODERS[on_host](4))(jpegs)
    for data, image in zip(jpegs, found, strict=True):
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert (image.permute(1, 2, 0).int() - torch.from_numpy(expected.copy()).int()).abs().max() <= 1


def test_the_cpu_share_stops_at_the_pixels_one_batch_may_hold_in_host_memory(jpegs):
    device = CountingDecoder()
    first_two = sum(3 * (64 + 8 * i) * (96 + 16 * i) for i in range(2))
    found = split_decoder(device, DecodeSplit(shares=(0.75,)), CPU, host_bytes=first_two)(jpegs)
    assert device.calls == [6] and all(image is not None for image in found)  # 2 of the 6 asked fitted
    assert split_decoder(device, DecodeSplit(shares=(0.75,)), CPU, host_bytes=100)(jpegs[:4]) and device.calls[-1] == 4


def test_the_cpu_share_is_decoded_by_nvimgcodec_where_it_is_installed_else_by_simplejpeg(jpegs, monkeypatch):
    """The default `on_host`: nvImageCodec's one call a batch where the extra is installed."""
    calls = []
    real = nvimgcodec_host_decoder(2)
    assert real is not None  # the test dependencies install it

    def counted(threads):
        calls.append(threads)
        return real

    monkeypatch.setattr("batch_predict.models.decode_split.nvimgcodec_host_decoder", counted)
    assert all(i is not None for i in split_decoder(CountingDecoder(), DecodeSplit(shares=(1.0,)), CPU, threads=2)(jpegs))
    assert calls == [2]
    monkeypatch.setattr("batch_predict.models.decode_split.nvimgcodec_host_decoder", lambda threads: None)
    assert all(i is not None for i in split_decoder(CountingDecoder(), DecodeSplit(shares=(1.0,)), CPU, threads=2)(jpegs))


def test_the_cpu_share_takes_half_the_usable_cores_by_default_leaving_the_rest_to_the_jobs_threads(monkeypatch):
    calls = []
    monkeypatch.setattr("batch_predict.models.decode_split.usable_cpus", lambda: 16)
    monkeypatch.setattr("batch_predict.models.decode_split.nvimgcodec_host_decoder", lambda threads: calls.append(threads))
    monkeypatch.setattr("batch_predict.models.decode_split.simplejpeg_host_decoder", lambda threads: calls.append(threads))
    split_decoder(CountingDecoder(), DecodeSplit(), CPU)
    monkeypatch.setattr("batch_predict.models.decode_split.usable_cpus", lambda: 1)
    split_decoder(CountingDecoder(), DecodeSplit(), CPU)
    assert calls == [8, 8, 1, 1]  # nvImageCodec's, then (not installed here) simplejpeg's


def test_a_cpu_decoder_that_fails_leaves_its_share_to_the_device_decoder_and_says_so_once(jpegs, caplog):
    def broken(jpegs, host, starts, sizes):
        raise RuntimeError("the CPU decoder broke")

    device = CountingDecoder()
    decode = split_decoder(device, DecodeSplit(shares=(0.5,)), CPU, on_host=broken)
    with caplog.at_level("WARNING", logger="batch_predict"):
        for _ in range(2):
            assert all(image is not None for image in decode(jpegs))
    assert device.calls == [4, 4, 4, 4]  # each batch: the GPU's half, then the CPU's
    assert [r.getMessage() for r in caplog.records] == [
        "decoding JPEGs on the CPU failed (RuntimeError: the CPU decoder broke); the GPU decodes them"]
