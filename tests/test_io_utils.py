"""Atomic writes (mask_rcnn_tf/io_utils.py): content, replacement, no leftovers on failure."""

import os

import pytest

from mask_rcnn_tf import io_utils


def test_write_bytes_creates_and_replaces(tmp_path):
    path = tmp_path / "weights.bin"
    io_utils.atomic_write_bytes(path, b"first")
    io_utils.atomic_write_bytes(str(path), b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(tmp_path) == ["weights.bin"]


def test_write_json_is_sorted_and_indented(tmp_path):
    path = tmp_path / "metrics.json"
    io_utils.atomic_write_json(path, {"segm": {"AP": 0.5}, "bbox": [1, 2]})
    assert path.read_text() == (
        '{\n  "bbox": [\n    1,\n    2\n  ],\n  "segm": {\n    "AP": 0.5\n  }\n}\n')


def test_failed_json_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(TypeError, match="metrics.json"):
        io_utils.atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_atomic_path_keeps_the_name_and_moves_on_success(tmp_path):
    path = tmp_path / "model.weights.h5"
    with io_utils.atomic_path(path) as temp_path:
        assert os.path.basename(temp_path) == "model.weights.h5"
        assert os.path.dirname(os.path.dirname(temp_path)) == str(tmp_path)
        assert not os.path.exists(temp_path) and not path.exists()
        with open(temp_path, "w") as f:
            f.write("done")
    assert path.read_text() == "done"
    assert os.listdir(tmp_path) == ["model.weights.h5"]


def test_atomic_path_writes_a_directory(tmp_path):
    path = tmp_path / "saved_model"
    with io_utils.atomic_path(path) as temp_path:
        os.makedirs(os.path.join(temp_path, "variables"))
        with open(os.path.join(temp_path, "saved_model.pb"), "wb") as f:
            f.write(b"pb")
    assert sorted(os.listdir(path)) == ["saved_model.pb", "variables"]
    assert os.listdir(tmp_path) == ["saved_model"]


def test_atomic_path_error_keeps_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with io_utils.atomic_path(path) as temp_path:
            with open(temp_path, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_atomic_path_bad_destinations(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        with io_utils.atomic_path(tmp_path / "missing" / "x.json"):
            pass
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with io_utils.atomic_path(tmp_path / "x.json"):
            pass
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError, match="x.bin"):
        io_utils.atomic_write_bytes(tmp_path / "x.bin", "text, not bytes")
