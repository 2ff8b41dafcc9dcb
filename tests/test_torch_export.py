"""torch.export programs: run end to end through the CLI with exact letterbox geometry, in fixed
batches when exported so, and refused when loading them would unpickle objects."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from PIL import Image

from backend_helpers import predict, write_tfrecord
from batch_predict.models import ModelLoadError, load_model
from batch_predict.spec import JobSpec


class FixedBoxes(torch.nn.Module):
    """Two detections per image at fixed model-input pixels, whatever the image: a box over the
    whole 416x416 input, and x 100-200, y 50-150."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rows", torch.tensor([[0.0, 0, 416, 416, 0.9, 0], [100, 50, 200, 150, 0.8, 1]]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        touched = images.mean(dim=(1, 2, 3)).view(-1, 1, 1) * 0
        return self.rows.expand(images.shape[0], 2, 6) + touched


SPEC = """
input: {size: 416, resize: letterbox, placement: center}
output: {decoder: boxes}
labels: [whole, part]
"""


def _export(path, dynamic: bool):
    example = (torch.zeros(2 if dynamic else 1, 3, 416, 416),)
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    torch.export.save(torch.export.export(FixedBoxes(), example, dynamic_shapes=shapes), path)
    return path


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 60, 90)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path):
    return write_tfrecord(tmp_path / "images.tfrecord", {"wide": _png(832, 416), "tall": _png(416, 832), "square": _png(100, 100)})


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic batch", "batch fixed at 1"])
def test_boxes_come_back_in_original_pixels_through_a_centred_letterbox(tmp_path, images, dynamic):
    model = _export(tmp_path / "fixed_boxes.pt2", dynamic)
    (tmp_path / "fixed_boxes.yaml").write_text(SPEC)  # found beside the model by its stem
    results = predict([images], model, tmp_path / "out", "--batch_size", "3")
    # wide 832x416: scale 2, image from input y 104; tall 416x832: scale 2, from input x 104.
    wide, tall = results["wide"]["detections"], results["tall"]["detections"]
    assert [d["label"] for d in wide] == ["whole", "part"]
    assert [d["box"] for d in wide] == [[0, 0, 832, 416], [200, 0, 400, 92]]
    assert [d["box"] for d in tall] == [[0, 0, 416, 832], [0, 100, 192, 300]]
    assert results["square"]["detections"][1]["box"] == pytest.approx([100 / 4.16, 50 / 4.16, 200 / 4.16, 150 / 4.16], abs=0.01)


def test_an_archive_that_would_unpickle_an_object_is_refused(tmp_path):
    source = _export(tmp_path / "plain.pt2", dynamic=True)
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(tampered, "w") as copy:
        for item in original.infolist():
            data = original.read(item)
            if item.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                config["config"] = {"evil": {"path_name": "weight_0", "is_param": False, "use_pickle": True}}
                data = json.dumps(config).encode()
            copy.writestr(item, data)
    job = JobSpec(
        input_file_patterns=("unused",), input_file_format="tfrecord", model_dir=str(tampered),
        output_result_prefix="unused", output_error_prefix="unused", device="cpu",
        model_options=("output.decoder=boxes", "input.size=416"),
    )
    with pytest.raises(ModelLoadError, match=r"stores 1 pickled object\(s\) \(evil\); refusing to unpickle them"):
        load_model(job.model_settings())
