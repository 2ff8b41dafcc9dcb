"""How people run a detector over a folder of images today, written as they usually are.

Two scripts per model: a per-image loop (Pillow decode, batch 1, fp32, as in the Kubeflow
example) and a `torch.utils.data.DataLoader` with worker processes feeding an eager model
in batches. Both write one JSON line per image, as the job does.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.ops import batched_nms
from torchvision.transforms.functional import pil_to_tensor

from batch_predict.inputs.tfrecord import read_records
from timing import sync

SIZE = 416
STRIDES = (8, 16, 32)


def images(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with open(path, "rb") as stream:
            yield from read_records(stream)


def yolox_input(data: bytes, dtype: type = np.float32) -> np.ndarray:
    """YOLOX's own preprocessing: letterbox to 416 top-left, pad 114, BGR, 0..255 CHW."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    ratio = min(SIZE / image.height, SIZE / image.width)
    resized = np.asarray(image.resize((int(image.width * ratio), int(image.height * ratio)), Image.BILINEAR))
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized[..., ::-1]
    return canvas.transpose(2, 0, 1).astype(dtype)


def fasterrcnn_input(data: bytes) -> torch.Tensor:
    return pil_to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).float() / 255


def _grid(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    cells, strides = [], []
    for stride in STRIDES:
        n = SIZE // stride
        y, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        cells.append(torch.stack([x.reshape(-1), y.reshape(-1)], 1))
        strides.append(torch.full((n * n, 1), stride))
    return torch.cat(cells).float().to(device), torch.cat(strides).float().to(device)


def yolox_postprocess(head: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor]) -> list[dict]:
    """YOLOX demo-style post-processing: per image, best class, threshold 0.3, class-aware NMS."""
    cells, strides = grid
    head = head.float()
    centres = (head[..., :2] + cells) * strides
    half = torch.exp(head[..., 2:4]) * strides / 2
    boxes = torch.cat([centres - half, centres + half], -1)
    results = []
    for i in range(head.shape[0]):
        score, label = (head[i, :, 5:] * head[i, :, 4:5]).max(1)
        keep = score >= 0.3
        b, s, c = boxes[i][keep], score[keep], label[keep]
        order = batched_nms(b, s, c, 0.45)[:100]
        results.append({"boxes": b[order].tolist(), "scores": s[order].tolist(), "classes": c[order].tolist()})
    return results


def fasterrcnn_postprocess(outputs: list[dict]) -> list[dict]:
    return [{k: v.tolist() for k, v in o.items()} for o in outputs]


def per_image_loop(
    model_name: str, model: torch.nn.Module, device: torch.device, files: list[Path], out: Path, seconds: float
) -> dict:
    """One image at a time: decode, preprocess, model, post-process, write a line."""
    grid = _grid(device)
    done = 0
    with open(out, "w") as sink, torch.inference_mode():
        started = None
        for n, data in enumerate(images(files)):
            if n == 3:  # after warm-up
                sync()
                started = time.perf_counter()
            if model_name == "yolox":
                x = torch.from_numpy(yolox_input(data))[None].to(device)
                found = yolox_postprocess(model(x), grid)[0]
            else:
                found = fasterrcnn_postprocess(model([fasterrcnn_input(data).to(device)]))[0]
            sink.write(json.dumps({"key": n, **found}) + "\n")
            if started is not None:
                done += 1
                if time.perf_counter() - started >= seconds:
                    break
    elapsed = time.perf_counter() - started
    return {"items_per_s": round(done / elapsed, 1), "items": done, "seconds": round(elapsed, 2)}


class _TFRecordImages(IterableDataset):
    """The records of the files, divided among the DataLoader's workers by file."""

    def __init__(self, files: list[Path], model_name: str, uint8: bool = False) -> None:
        self.files = files
        self.model_name = model_name
        self.uint8 = uint8

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        mine = self.files if info is None else self.files[info.id :: info.num_workers]
        for data in images(mine):
            if self.model_name == "yolox":
                yield yolox_input(data, np.uint8 if self.uint8 else np.float32)
            else:
                yield fasterrcnn_input(data)


def _as_list(batch: list) -> list:
    return batch


def dataloader_script(
    model_name: str, model: torch.nn.Module, device: torch.device, files: list[Path], out: Path, batch: int,
    seconds: float | None, workers: int | None = None, half: bool = False,
) -> dict:
    """DataLoader(num_workers, pin_memory) -> eager model in batches -> JSON lines.

    With `half` (YOLOX only), workers send uint8 and the model runs in fp16: the better way.
    With `seconds` None, one whole pass over the files, timed from the loader's creation.
    """
    workers = workers if workers is not None else min(16, os.cpu_count() or 1)
    started_all = time.perf_counter()
    loader = DataLoader(
        _TFRecordImages(files, model_name, uint8=half), batch_size=batch, num_workers=workers,
        pin_memory=device.type == "cuda", collate_fn=None if model_name == "yolox" else _as_list,
    )
    if half:
        model = model.half()
    grid = _grid(device)
    done, started = 0, None
    with open(out, "w") as sink, torch.inference_mode():
        for n, inputs in enumerate(loader):
            if n == 2 and seconds is not None:  # workers started and warmed up
                sync()
                started = time.perf_counter()
            if model_name == "yolox":
                x = inputs.to(device, non_blocking=True)
                found = yolox_postprocess(model(x.half() if half else x), grid)
            else:
                found = fasterrcnn_postprocess(model([x.to(device, non_blocking=True) for x in inputs]))
            for item in found:
                sink.write(json.dumps(item) + "\n")
            if started is not None or seconds is None:
                done += len(found)
                if seconds is not None and time.perf_counter() - started >= seconds:
                    break
    sync()
    elapsed = time.perf_counter() - (started if seconds is not None else started_all)
    return {"items_per_s": round(done / elapsed, 1), "items": done, "seconds": round(elapsed, 2), "workers": workers,
            "batch": batch, "half": half}
