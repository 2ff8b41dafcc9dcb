"""The demo detector: a small anchor-free, single-stage CNN (CenterNet/TTFNet style), in PyTorch.

A stride-2 backbone and a top-down merge give one stride-4 map. Each cell holds a score per
class (a Gaussian peak at object centres) and the distances from the cell's centre to the four
sides of its object. Peaks of the score map are the detections; there are no anchors to tune,
which is what lets a model this small train in minutes on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

INPUT_SIZE = 128
"""Images are resized (not letterboxed) to INPUT_SIZE x INPUT_SIZE, so normalized boxes carry over."""
STRIDE = 4
STAGES = ((16, 1), (32, 2), (64, 2), (96, 2), (128, 2))
"""(channels, convs) per backbone stage; each stage opens with a stride-2 conv."""
FPN_CHANNELS = 64
MAX_LOG_DISTANCE = 6.0
"""Distances are exp(raw) strides; the clamp keeps an untrained map finite."""


class ConvBN(nn.Sequential):
    """3x3 (or 1x1) conv, batch norm, optional ReLU. BN is folded into the conv for export."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ShapeDetector(nn.Module):
    """The bare network: NCHW float RGB in [0, 1], H and W multiples of 32 -> raw map [N, classes + 4, H/4, W/4]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        stages, cin = [], 3
        for channels, convs in STAGES:
            stages.append(nn.Sequential(*[ConvBN(cin if i == 0 else channels, channels, 2 if i == 0 else 1) for i in range(convs)]))
            cin = channels
        self.stages = nn.ModuleList(stages)
        # Top-down merge: the deepest stage's projection, then each shallower one in turn (down to stride 4).
        self.top = ConvBN(STAGES[-1][0], FPN_CHANNELS, kernel=1, relu=False)
        self.laterals = nn.ModuleList([ConvBN(c, FPN_CHANNELS, kernel=1, relu=False) for c, _ in STAGES[-2:0:-1]])
        self.head = nn.Sequential(ConvBN(FPN_CHANNELS, FPN_CHANNELS), nn.Conv2d(FPN_CHANNELS, num_classes + 4, 1))
        prior = 0.01
        nn.init.constant_(self.head[-1].bias[:num_classes], -torch.log(torch.tensor((1 - prior) / prior)).item())
        nn.init.constant_(self.head[-1].bias[num_classes:], 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        merged = self.top(features[-1])
        for i, lateral in enumerate(self.laterals):
            merged = F.interpolate(merged, scale_factor=2.0, mode="nearest") + lateral(features[-2 - i])
        return self.head(merged)


class DeployedDetector(nn.Module):
    """What is exported: the network with BN folded, its raw map turned into per-cell results.

    Returns `scores` [N, classes, h, w] (sigmoid) and `boxes` [N, 4, h, w]: x1, y1, x2, y2 in
    input pixels of the box each cell predicts. Peak picking and NMS are post-processing.
    """

    def __init__(self, network: ShapeDetector) -> None:
        super().__init__()
        self.network = network
        self.num_classes = network.num_classes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.network(images)
        return raw_to_outputs(raw, self.num_classes)


def raw_to_outputs(
    raw: torch.Tensor, num_classes: int, stride: int = STRIDE, max_log_distance: float = MAX_LOG_DISTANCE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid scores, and each cell's distances to its box's sides as a box around the cell centre."""
    scores = torch.sigmoid(raw[:, :num_classes])
    distances = torch.exp(torch.clamp(raw[:, num_classes:], max=max_log_distance)) * stride
    h, w = raw.shape[2], raw.shape[3]
    ys = (torch.arange(h, dtype=raw.dtype, device=raw.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=raw.dtype, device=raw.device) + 0.5) * stride
    cx, cy = xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)
    boxes = torch.stack(
        [cx - distances[:, 0], cy - distances[:, 1], cx + distances[:, 2], cy + distances[:, 3]], dim=1
    )
    return scores, boxes


def fold_batch_norm(network: ShapeDetector) -> ShapeDetector:
    """The same network in eval mode with every BN folded into its conv (what both exports hold)."""
    network = network.eval().requires_grad_(False)
    for module in network.modules():
        if isinstance(module, ConvBN):
            module[0] = nn.utils.fusion.fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return network
