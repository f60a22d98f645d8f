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


@pytest.fixture(scope="session")
def tiny_keypoint_export(tmp_path_factory):
    """The tiny Keypoint R-CNN of tests/export/helpers.py (random weights) exported once.

    Shared by the export and serving tests of the keypoint outputs, which only read it: a test
    that writes another version or changes the model must work on its own copy. A dict of
    annotations (path), config, weights (path), model (the Keras model), base (export base
    path), export_dir (str, base/1) and loaded (tf.saved_model.load of export_dir).
    """
    import tensorflow as tf

    from mask_rcnn_tf.export.saved_model import export_saved_model
    from tests.export.helpers import make_annotations, random_model, tiny_config

    root = tmp_path_factory.mktemp("keypoint_export")
    annotations = make_annotations(root)
    config, _ = tiny_config(annotations)
    weights = root / "tiny.weights.h5"
    model = random_model(config, weights)
    base = root / "models"
    export_dir = export_saved_model(config, base, weights=str(weights))
    return {"annotations": annotations, "config": config, "weights": weights, "model": model,
            "base": base, "export_dir": export_dir, "loaded": tf.saved_model.load(export_dir)}


@pytest.fixture(scope="session")
def tiny_shapes_export(tmp_path_factory):
    """The shapes demo narrowed to 64 px (tests/export/helpers.py SHAPES_TINY), random weights
    (helpers.random_model), exported once with the default outputs (no full or encoded masks).

    Shared by tests that only read it (the served end-to-end tests); a test that writes into
    its base must copy it first. A dict of config, weights (path), base (export base path) and
    export_dir (str, base/1).
    """
    from mask_rcnn_tf.config import load_config
    from mask_rcnn_tf.data.shapes import make_shapes
    from mask_rcnn_tf.export.saved_model import export_saved_model
    from tests.export.helpers import SHAPES_CONFIG, SHAPES_TINY, random_model

    root = tmp_path_factory.mktemp("shapes_export")
    shapes = make_shapes(root / "shapes", num_images=2, seed=0, image_size=64)
    config = load_config(SHAPES_CONFIG, SHAPES_TINY + [
        f"data.train.annotations={shapes['annotations_path']}"])
    weights = root / "tiny.weights.h5"
    random_model(config, weights)
    base = root / "models"
    export_dir = export_saved_model(config, base, weights=str(weights))
    return {"config": config, "weights": weights, "base": base, "export_dir": export_dir}
