import json
import os

import numpy as np
import pytest
from PIL import Image

from mask_rcnn_tf.data.shapes import make_shapes


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """A 20-image shapes dataset shared by the tests that only read it."""
    output_dir = tmp_path_factory.mktemp("shapes") / "data"
    make_shapes(output_dir, num_images=20, seed=7)
    return output_dir


@pytest.fixture
def write_coco(tmp_path):
    """Returns a function writing a small COCO dataset with random RGB images.

    write(images, annotations, categories=None, raw=None) takes images as a list of dicts
    {"id", "height", "width"} (file_name f"{id}.png" added) and writes them; `raw` replaces
    the JSON text. Returns (annotations_path, images_dir).
    """

    def write(images, annotations, categories=None, raw=None):
        images_dir = tmp_path / "images"
        images_dir.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        listed = []
        for image in images:
            image = dict(image, file_name=image.get("file_name", f"{image['id']}.png"))
            pixels = rng.integers(0, 256, size=(image["height"], image["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images_dir / image["file_name"])
            listed.append(image)
        if categories is None:
            categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
        path = tmp_path / "annotations.json"
        text = raw if raw is not None else json.dumps(
            {"images": listed, "annotations": annotations, "categories": categories})
        path.write_text(text)
        return os.fspath(path), os.fspath(images_dir)

    return write
