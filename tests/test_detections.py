"""Padded detections back to each original image: geometry, clipping, thresholds, class ids."""

from __future__ import annotations

import numpy as np
import pytest

from batch_predict.models.detections import Geometry, PaddedDetections, tfod_to_padded, to_detections


def _padded(boxes, scores, classes, counts) -> PaddedDetections:
    return PaddedDetections(
        np.array(boxes, np.float32), np.array(scores, np.float32), np.array(classes, np.int64), np.array(counts)
    )


def test_boxes_map_back_through_the_letterbox_and_are_clipped_to_the_image():
    # An 832x416 image letterboxed into 416x416, centred: scale 2, image from input y=104.
    padded = _padded([[[100, 154, 200, 254], [-10, 90, 500, 400]]], [[0.9, 0.8]], [[3, 4]], [2])
    geometry = Geometry(scale=np.array([[2.0, 2.0]]), offset=np.array([[0.0, 104.0]]))
    (found,) = to_detections(padded, geometry, np.array([[832, 416]]), 0.5)
    np.testing.assert_allclose(found.boxes, [[200, 100, 400, 300], [0, 0, 832, 416]])
    np.testing.assert_allclose(found.scores, [0.9, 0.8])
    assert found.classes.tolist() == [3, 4]


def test_only_counted_rows_above_the_threshold_are_kept_per_image():
    padded = _padded(np.zeros((2, 3, 4)), [[0.9, 0.4, 0.8], [0.7, 0.6, 0.0]], [[1, 2, 3], [4, 5, 6]], [2, 3])
    first, second = to_detections(padded, Geometry.identity(2), np.array([[10, 10], [10, 10]]), 0.5)
    assert first.classes.tolist() == [1] and second.classes.tolist() == [4, 5]


def test_label_order_maps_output_k_to_the_kth_label_id():
    padded = _padded(np.zeros((1, 2, 4)), [[0.9, 0.8]], [[0, 2]], [2])
    (found,) = to_detections(padded, Geometry.identity(1), np.array([[9, 9]]), 0.1, class_ids=np.array([1, 2, 3]))
    assert found.classes.tolist() == [1, 3]
    with pytest.raises(ValueError, match="the model output class 2 but the labels list 2 classes"):
        to_detections(padded, Geometry.identity(1), np.array([[9, 9]]), 0.1, class_ids=np.array([1, 2]))


def test_tfod_outputs_become_pixel_boxes_of_the_input():
    outputs = {
        "detection_boxes": np.array([[[0.5, 0.25, 1.0, 0.75], [0, 0, 1, 1]]]),
        "detection_scores": np.array([[0.9, 0.1]]),
        "detection_classes": np.array([[18.0, 1.0]]),
        "num_detections": np.array([1.0]),
    }
    padded = tfod_to_padded(outputs, np.array([[200, 100]]))
    np.testing.assert_allclose(padded.boxes[0, 0], [50, 50, 150, 100])
    assert padded.classes[0, 0] == 18 and padded.counts.tolist() == [1]
