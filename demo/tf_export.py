"""The trained detector as a TF Object Detection API SavedModel, its weights ported from PyTorch.

The graph mirrors `detector.ShapeDetector` op for op (explicit symmetric padding, nearest x2
upsampling by repetition), so both forms give the same raw outputs. `serving_default` is what
TF OD API exports offer: `encoded_image_string_tensor`, a `[None]` string tensor of JPEG/PNG
images of any size, decoded and resized inside the graph; peak picking and per-class NMS inside;
`detection_boxes` normalized ymin, xmin, ymax, xmax of the original image.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import torch

from .detector import INPUT_SIZE, MAX_LOG_DISTANCE, STRIDE, ShapeDetector

MAX_DETECTIONS = 100
NMS_IOU = 0.5
MIN_SCORE = 0.01
RAW_SIGNATURE = "raw_outputs"


def _conv_weights(conv: torch.nn.Conv2d) -> tuple[tf.Variable, tf.Variable]:
    """A (BN-folded) torch conv's kernel as HWIO and its bias, as TF variables."""
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    bias = conv.bias.detach().numpy()
    return tf.Variable(np.ascontiguousarray(kernel), trainable=False), tf.Variable(bias, trainable=False)


def _conv(x: tf.Tensor, weights: tuple[tf.Variable, tf.Variable], stride: int, relu: bool = True) -> tf.Tensor:
    kernel, bias = weights
    pad = kernel.shape[0] // 2
    y = tf.nn.conv2d(x, kernel, strides=stride, padding=[[0, 0], [pad, pad], [pad, pad], [0, 0]]) + bias
    return tf.nn.relu(y) if relu else y


def _upsample2(x: tf.Tensor) -> tf.Tensor:
    return tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)


def _decode_and_resize(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), [INPUT_SIZE, INPUT_SIZE], method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0) / 255.0


class TFShapeDetector(tf.Module):
    """The exported module: the network's weights and its two signatures."""

    def __init__(self, network: ShapeDetector) -> None:
        super().__init__()
        self.num_classes = network.num_classes
        self.stages = [[_conv_weights(block[0]) for block in stage] for stage in network.stages]
        self.top = _conv_weights(network.top[0])
        self.laterals = [_conv_weights(lateral[0]) for lateral in network.laterals]
        self.head_conv = _conv_weights(network.head[0][0])
        self.head_out = _conv_weights(network.head[1])

    def raw(self, images: tf.Tensor) -> tf.Tensor:
        """NHWC float RGB in [0, 1] -> the network's raw map, NHWC."""
        features, x = [], images
        for stage in self.stages:
            for i, weights in enumerate(stage):
                x = _conv(x, weights, 2 if i == 0 else 1)
            features.append(x)
        merged = _conv(features[-1], self.top, 1, relu=False)
        for i, lateral in enumerate(self.laterals):
            merged = _upsample2(merged) + _conv(features[-2 - i], lateral, 1, relu=False)
        return _conv(_conv(merged, self.head_conv, 1), self.head_out, 1, relu=False)

    def outputs(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Per-cell class scores [N, h, w, C] and boxes [N, h, w, 4] (x1, y1, x2, y2, input pixels)."""
        raw = self.raw(images)
        scores = tf.sigmoid(raw[..., : self.num_classes])
        distances = tf.exp(tf.minimum(raw[..., self.num_classes :], MAX_LOG_DISTANCE)) * STRIDE
        h, w = tf.shape(raw)[1], tf.shape(raw)[2]
        ys = (tf.cast(tf.range(h), tf.float32) + 0.5) * STRIDE
        xs = (tf.cast(tf.range(w), tf.float32) + 0.5) * STRIDE
        cy, cx = ys[None, :, None], xs[None, None, :]
        boxes = tf.stack(
            [cx - distances[..., 0], cy - distances[..., 1], cx + distances[..., 2], cy + distances[..., 3]], axis=-1
        )
        return scores, boxes

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    def raw_outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        scores, boxes = self.outputs(images)
        return {"scores": scores, "boxes": boxes}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_image_string_tensor")])
    def serve(self, encoded_image_string_tensor: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.map_fn(
            _decode_and_resize, encoded_image_string_tensor,
            fn_output_signature=tf.TensorSpec([INPUT_SIZE, INPUT_SIZE, 3], tf.float32),
        )
        return self.detect(images)

    def detect(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Score-map peaks (a 3x3 max) as candidates, then per-class NMS, in TF OD API form."""
        scores, boxes = self.outputs(images)
        batch = tf.shape(scores)[0]
        peaks = scores * tf.cast(tf.equal(scores, tf.nn.max_pool2d(scores, 3, 1, "SAME")), tf.float32)
        top_scores, top = tf.math.top_k(tf.reshape(peaks, [batch, -1]), k=MAX_DETECTIONS)
        cells, classes = top // self.num_classes, top % self.num_classes
        top_boxes = tf.gather(tf.reshape(boxes, [batch, -1, 4]), cells, batch_dims=1) / INPUT_SIZE
        normalized = tf.gather(top_boxes, [1, 0, 3, 2], axis=-1)  # ymin, xmin, ymax, xmax
        per_class = tf.one_hot(classes, self.num_classes) * top_scores[..., None]
        nms = tf.image.combined_non_max_suppression(
            normalized[:, :, None, :], per_class, MAX_DETECTIONS, MAX_DETECTIONS,
            iou_threshold=NMS_IOU, score_threshold=MIN_SCORE, clip_boxes=True,
        )
        return {
            "detection_boxes": nms.nmsed_boxes,
            "detection_scores": nms.nmsed_scores,
            "detection_classes": nms.nmsed_classes + 1.0,
            "num_detections": tf.cast(nms.valid_detections, tf.float32),
        }


def export_saved_model(network: ShapeDetector, path: str) -> None:
    """Write the SavedModel; `network` must already have its batch norms folded."""
    module = TFShapeDetector(network)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve, RAW_SIGNATURE: module.raw_outputs})
