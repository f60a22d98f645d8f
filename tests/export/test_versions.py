"""Version folders as TF Serving polls them: numbering, refusal to overwrite, atomic appearance."""

import os
import re

import pytest

from mask_rcnn_tf.export.versions import (existing_versions, next_version, publish_version,
                                          resolve_version)


def _write(content):
    """A `write` callback creating a SavedModel-like folder holding `content`."""

    def write(path):
        os.makedirs(os.path.join(path, "variables"))
        with open(os.path.join(path, "saved_model.pb"), "w") as f:
            f.write(content)

    return write


def _read(base, version):
    with open(os.path.join(base, str(version), "saved_model.pb")) as f:
        return f.read()


def test_numbering_ignores_non_integer_entries(tmp_path):
    base = tmp_path / "models"
    assert next_version(base) == 1 and existing_versions(base) == []
    for name in ("3", "10", "junk", ".11.tmp-abc", "2a"):
        (base / name).mkdir(parents=True)
    (base / "12").write_text("a file, not a version folder")
    assert existing_versions(base) == [3, 10]
    assert next_version(base) == 11


def test_versions_count_up_and_explicit_versions_are_kept(tmp_path):
    base = str(tmp_path / "models")
    assert publish_version(base, None, _write("a")) == os.path.join(base, "1")
    assert publish_version(base, None, _write("b")) == os.path.join(base, "2")
    publish_version(base, 7, _write("c"))
    publish_version(base, None, _write("d"))
    assert sorted(os.listdir(base)) == ["1", "2", "7", "8"]
    assert [_read(base, v) for v in (1, 2, 7, 8)] == ["a", "b", "c", "d"]


def test_existing_version_refused_and_left_intact(tmp_path):
    base = str(tmp_path)
    publish_version(base, 1, _write("original"))
    called = []
    with pytest.raises(FileExistsError, match=r"1 already exists; pass --overwrite .* "
                                              r"version 2"):
        publish_version(base, 1, lambda path: called.append(path))
    assert not called  # refused before any writing
    assert _read(base, 1) == "original"
    assert os.listdir(base) == ["1"]


def test_overwrite_replaces_the_version_and_leaves_nothing_else(tmp_path):
    base = str(tmp_path)
    publish_version(base, 1, _write("original"))
    publish_version(base, 1, _write("replacement"), overwrite=True)
    assert _read(base, 1) == "replacement"
    assert os.listdir(base) == ["1"]
    assert sorted(os.listdir(os.path.join(base, "1"))) == ["saved_model.pb", "variables"]


def test_interrupted_write_leaves_no_version_folder(tmp_path):
    base = str(tmp_path)

    def write_then_fail(path):
        _write("half")(path)
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        # What the server polling `base` can see while the write is in progress.
        assert existing_versions(base) == []
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        publish_version(base, None, write_then_fail)
    assert os.listdir(base) == []


def test_interrupted_overwrite_keeps_the_old_version(tmp_path):
    base = str(tmp_path)
    publish_version(base, 4, _write("original"))

    def write_then_fail(path):
        _write("half")(path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        publish_version(base, 4, write_then_fail, overwrite=True)
    assert os.listdir(base) == ["4"] and _read(base, 4) == "original"


@pytest.mark.parametrize("version", [0, -3, 1.5, "2", True])
def test_bad_version(tmp_path, version):
    with pytest.raises(ValueError, match=re.escape(
            f"export version must be a positive integer, got {version!r}")):
        resolve_version(str(tmp_path), version)
