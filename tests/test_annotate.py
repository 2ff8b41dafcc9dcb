"""Detections drawn on real pixels: boxes where the result says, in the class's color, labels above."""

from __future__ import annotations

import numpy as np
from PIL import Image

from batch_predict.tools.annotate import class_color, draw_detections

GREY = (128, 128, 128)


def test_a_box_is_drawn_at_its_pixels_in_its_class_color_after_shrinking():
    image = Image.new("RGB", (960, 480), GREY)
    drawn = np.asarray(draw_detections(image, [{"box": [200, 100, 600, 400], "score": 0.9, "class_id": 18,
                                                "label": "dog"}], width=480))
    assert drawn.shape == (240, 480, 3)
    color = class_color(18)
    assert tuple(drawn[200, 100]) == color and tuple(drawn[150, 300]) == color  # left and right edges, halved
    assert tuple(drawn[120, 200]) == GREY  # inside the box stays the image
    label_band = drawn[25:50, 100:150].reshape(-1, 3)
    assert (label_band == color).all(axis=1).any() and (label_band == 0).all(axis=1).any()  # filled tag, black text


def test_small_images_keep_their_size_and_classes_get_distinct_colors():
    image = Image.new("L", (100, 80), 50)
    assert draw_detections(image, []).size == (100, 80)
    assert len({class_color(c) for c in range(1, 91)}) == 90
