import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mask_rcnn_tf.data.shapes import make_shapes

# Full-shape pixel areas for sizes 16 and 48: circle pi (d/2)^2, square s^2, triangle h^2/sqrt(3).
AREA_BOUNDS = {
    1: (np.pi * 8 ** 2, np.pi * 24 ** 2),
    2: (16 ** 2, 48 ** 2),
    3: (16 ** 2 / np.sqrt(3), 48 ** 2 / np.sqrt(3)),
}


def _files(folder):
    return {name: (folder / "images" / name).read_bytes()
            for name in sorted(os.listdir(folder / "images"))}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    make_shapes(tmp_path / "a", num_images=3, seed=11, image_size=64)
    make_shapes(tmp_path / "b", num_images=3, seed=11, image_size=64)
    make_shapes(tmp_path / "c", num_images=3, seed=12, image_size=64)
    assert (tmp_path / "a/annotations.json").read_bytes() == \
        (tmp_path / "b/annotations.json").read_bytes()
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert (tmp_path / "a/annotations.json").read_bytes() != \
        (tmp_path / "c/annotations.json").read_bytes()
    assert _files(tmp_path / "a")["000000.png"] != _files(tmp_path / "c")["000000.png"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]  # no staging folders left behind


def test_annotations_follow_the_spec(shapes_dir):
    data = json.loads((shapes_dir / "annotations.json").read_text())
    assert data["categories"] == [
        {"id": 1, "name": "circle", "supercategory": "shape"},
        {"id": 2, "name": "square", "supercategory": "shape"},
        {"id": 3, "name": "triangle", "supercategory": "shape"},
    ]
    assert [im["file_name"] for im in data["images"]] == [f"{i:06d}.png" for i in range(20)]
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    assert min(a["id"] for a in data["annotations"]) >= 1
    per_image = {im["id"]: [] for im in data["images"]}
    for annotation in data["annotations"]:
        per_image[annotation["image_id"]].append(annotation)
    assert all(1 <= len(anns) <= 4 for anns in per_image.values())

    for image in data["images"]:
        pixels = np.asarray(Image.open(shapes_dir / "images" / image["file_name"]))
        assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        covered = np.zeros((128, 128), bool)
        for annotation in per_image[image["id"]]:
            mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
            ys, xs = np.nonzero(mask)
            x, y = xs.min(), ys.min()
            assert annotation["bbox"] == [x, y, xs.max() + 1 - x, ys.max() + 1 - y]
            assert annotation["area"] == mask.sum()
            assert annotation["iscrowd"] == 0
            low, high = AREA_BOUNDS[annotation["category_id"]]
            assert 0.3 * low * 0.9 <= annotation["area"] <= high * 1.05
            # Masks are exact: every visible pixel has the object's single colour.
            assert len(np.unique(pixels[mask], axis=0)) == 1
            assert not (covered & mask).any()
            covered |= mask
        background = pixels[~covered].astype(float)
        assert background.std(axis=0).max() < 10  # uniform colour plus mild noise


def test_pycocotools_loads_the_file(shapes_dir):
    coco = COCO(os.fspath(shapes_dir / "annotations.json"))
    assert len(coco.getImgIds()) == 20
    assert coco.getCatIds() == [1, 2, 3]
    annotation = coco.loadAnns(coco.getAnnIds(imgIds=[0]))[0]
    assert coco.annToMask(annotation).sum() == annotation["area"]


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="out: output_dir exists and is not empty"):
        make_shapes(target, num_images=1, seed=0, image_size=64)
    summary = make_shapes(target, num_images=2, seed=0, image_size=64, overwrite=True)
    assert sorted(os.listdir(target)) == ["annotations.json", "images"]
    assert summary["num_images"] == 2
    assert summary["num_annotations"] == sum(summary["instances_per_category"].values())
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_rejects_too_small_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size must be an integer >= 51, got 32"):
        make_shapes(tmp_path / "out", num_images=1, seed=0, image_size=32)


@pytest.mark.parametrize("kind,area", [
    ("ring", np.pi * (20 ** 2 - 10 ** 2)),                  # outer diameter 40, inner 20
    ("cross", 2 * 40 * 40 / 3 - (40 / 3) ** 2),              # two 40 x 40/3 bars, overlap once
    ("hexagon", 3 * np.sqrt(3) / 2 * 20 ** 2),               # circumradius 20
    ("diamond", 2 * 20 * 10),                                # diagonals 40 and 20
])
def test_extra_shapes_have_their_geometric_area(kind, area):
    from mask_rcnn_tf.data.shapes import _shape_mask

    mask, _, _ = _shape_mask(kind, 40.0, 0.3, 50.0, 50.0)
    assert abs(mask.sum() - area) / area < 0.03


def test_extra_shape_set_has_its_own_four_categories(tmp_path):
    summary = make_shapes(tmp_path / "extra", num_images=12, seed=3, image_size=64,
                          shape_set="extra")
    coco = COCO(summary["annotations_path"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "ring", "cross", "hexagon", "diamond"]
    assert set(summary["instances_per_category"]) == {"ring", "cross", "hexagon", "diamond"}
    assert summary["num_annotations"] == len(coco.getAnnIds()) > 0
    with pytest.raises(ValueError, match="--shape-set must be one of basic, extra"):
        make_shapes(tmp_path / "bad", num_images=1, seed=0, shape_set="stars")
