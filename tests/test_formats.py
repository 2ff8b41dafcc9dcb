"""`--model_dir` is recognised by content, and its spec file found beside or inside it."""

from __future__ import annotations

import zipfile

import pytest
import torch

from batch_predict.models import ModelLoadError
from batch_predict.models.formats import find_spec_file, identify_file, locate
from batch_predict.models.model_spec import build_spec, load_spec


class _Tiny(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(1, 2, 3))


def test_shipped_models_are_recognised_by_their_bytes(yolox_dir, tmp_path):
    # Names that say nothing: the content decides.
    for source, expected in (("yolox_nano_torchscript.pt", "torchscript"), ("yolox_nano.onnx", "onnx")):
        renamed = tmp_path / f"{expected}.bin"
        renamed.write_bytes((yolox_dir / source).read_bytes())
        assert identify_file(str(renamed)) == expected


def test_torch_files_are_told_apart_by_their_archive_members(tmp_path):
    torch.export.save(torch.export.export(_Tiny(), (torch.zeros(2, 3, 4, 4),)), tmp_path / "program.pt2")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert identify_file(str(tmp_path / "program.pt2")) == "torch_export"
    assert identify_file(str(tmp_path / "weights.pth")) == "state_dict"
    assert identify_file(str(tmp_path / "legacy.pth")) == "state_dict"


def test_anything_else_is_refused_with_what_was_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        archive.writestr("a.jpg", b"\xff\xd8")
    with pytest.raises(ModelLoadError, match="not a model file this build recognises"):
        identify_file(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelLoadError, match="a zip archive but not a PyTorch model file"):
        identify_file(str(tmp_path / "photos.zip"))


def test_a_spec_beside_a_model_file_is_found_by_its_stem_first(tmp_path):
    model = tmp_path / "detector.onnx"
    model.write_bytes(b"")
    assert find_spec_file(str(model)) is None
    (tmp_path / "model.yaml").write_text("{}")
    assert find_spec_file(str(model)) == str(tmp_path / "model.yaml")
    (tmp_path / "detector.yaml").write_text("{}")
    assert find_spec_file(str(model)) == str(tmp_path / "detector.yaml")
    assert find_spec_file(str(tmp_path)) == f"{tmp_path}/model.yaml"


def test_a_folder_is_a_savedmodel_or_holds_a_spec_naming_its_model(tmp_path, yolox_dir):
    located = locate(str(yolox_dir / "raw_savedmodel"), build_spec({}, {}, source="t", base=None))
    assert located.format == "savedmodel"
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / "weights.bin").write_bytes((yolox_dir / "yolox_nano.onnx").read_bytes())
    (folder / "model.yaml").write_text("model: weights.bin\n")
    located = locate(str(folder), load_spec(find_spec_file(str(folder))))
    assert (located.format, located.path, located.folder) == ("onnx", f"{folder}/weights.bin", str(folder))
    with pytest.raises(ModelLoadError, match="holds no SavedModel .* names a model file in its `model:` field"):
        locate(str(tmp_path), build_spec({}, {}, source="t", base=None))
    with pytest.raises(ModelLoadError, match="does not exist"):
        locate(str(tmp_path / "missing"), build_spec({}, {}, source="t", base=None))


def test_a_model_file_named_without_a_folder_lies_in_the_working_folder(tmp_path, monkeypatch, yolox_dir):
    (tmp_path / "detector.onnx").write_bytes((yolox_dir / "yolox_nano.onnx").read_bytes())
    monkeypatch.chdir(tmp_path)
    located = locate("detector.onnx", build_spec({}, {}, source="t", base=None))
    assert (located.format, located.folder) == ("onnx", ".")
