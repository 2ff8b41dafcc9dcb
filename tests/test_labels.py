import pytest

from batch_predict.models.labels import LabelMapError, load_label_map


def test_pbtxt_prefers_display_name(tmp_path):
    path = tmp_path / "label_map.pbtxt"
    path.write_text(
        "item {\n  id: 1\n  name: '/m/01g317'\n  display_name: \"person\"\n}\n"
        "item { name: 'bicycle' id: 2 }\n"
    )
    assert load_label_map(str(path)) == {1: "person", 2: "bicycle"}


def test_id_name_text_allows_spaces_in_names_and_comments(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("# coco\n1 person\n11 fire hydrant\n\n")
    assert load_label_map(str(path)) == {1: "person", 11: "fire hydrant"}


def test_a_malformed_line_is_named(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("1 person\nbicycle\n")
    with pytest.raises(LabelMapError, match=":2:"):
        load_label_map(str(path))


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(LabelMapError, match="cannot read"):
        load_label_map(str(tmp_path / "nope.pbtxt"))
