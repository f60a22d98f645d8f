import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def tiny_shapes_split(tmp_path_factory):
    """Four 64x64 shapes images: `--set` overrides naming them as data.train."""
    from mask_rcnn_tf.data.shapes import make_shapes

    folder = tmp_path_factory.mktemp("tiny_shapes") / "shapes"
    make_shapes(folder, num_images=4, seed=0, image_size=64)
    return [f"data.train.annotations={folder / 'annotations.json'}",
            f"data.train.images={folder / 'images'}"]
