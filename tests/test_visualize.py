"""`--visualize N`: the first N predicted images of a run, drawn, beside the results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from PIL import Image

from batch_predict.tools.annotate import class_color
from batch_predict.runners.local import run
from batch_predict.outputs.layout import OutputLayout
from batch_predict.tools.visualize import picture_name

from conftest import photo_job
from toymodels import MeanColourModel


def test_n_predicted_images_are_drawn_with_their_boxes(tmp_path):
    spec = dataclasses.replace(photo_job(tmp_path), visualize=3)
    run(spec, model=MeanColourModel())
    pictures = sorted(Path(OutputLayout(spec.output_result_prefix).visualized).iterdir())
    assert len(pictures) == 3
    keys = {json.loads(line)["key"] for p in Path(spec.output_result_prefix).parent.glob("results-*.jsonl") for line in p.open()}
    assert {p.name for p in pictures} <= {picture_name(k) for k in keys}
    for path in pictures:
        with Image.open(path) as picture:
            assert picture.format == "JPEG" and picture.width <= 800
            # MeanColourModel's box is the whole image: its outline, in class 1's colour, runs down the left edge.
            edge = picture.convert("RGB").getpixel((0, picture.height // 2))
            assert max(abs(a - b) for a, b in zip(edge, class_color(1))) < 40


def test_no_pictures_unless_asked(tmp_path):
    spec = photo_job(tmp_path)
    run(spec, model=MeanColourModel())
    assert not Path(OutputLayout(spec.output_result_prefix).visualized).exists()


def test_picture_names_have_no_folders_and_one_jpg_ending():
    assert picture_name("train/000000000009.jpg") == "train_000000000009.jpg"
    assert picture_name("gs://b/x y.png") == "gs___b_x_y.png.jpg"
    assert picture_name("../../etc/passwd") == "_.._etc_passwd.jpg"
