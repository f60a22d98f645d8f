"""The label schema beside a model's weights: what the model predicts, without the dataset.

`mask-rcnn train` writes `model_dir/labels.json`; `convert-torchvision` writes
`<output minus .weights.h5>.labels.json` (COCO's schema, shipped as package data in
coco_labels.json). `predict`, `export` and `evaluate` read the schema found beside the weights
they load (find_label_schema) and fall back on the categories of the data's annotations file.

labels.json: {"categories": [{"id": 1, "name": "circle"}, ...] (entry i is class i + 1),
"keypoint_names": [...], "skeleton": [[a, b], ...] (1-based pairs)}.
"""

import json
import os
from importlib import resources

from mask_rcnn_tf.data.coco import LabelSchema
from mask_rcnn_tf.io_utils import atomic_write_json

SCHEMA_NAME = "labels.json"
_WEIGHTS_SUFFIX = ".weights.h5"


def schema_path_for_weights(weights):
    """Where the schema of a weights file is written: `X.weights.h5` -> `X.labels.json`."""
    weights = os.fspath(weights)
    stem = weights[:-len(_WEIGHTS_SUFFIX)] if weights.endswith(_WEIGHTS_SUFFIX) else weights
    return stem + ".labels.json"


def find_label_schema(weights):
    """The schema beside a weights file, or None.

    Looks for `X.labels.json` beside `X.weights.h5`, then `labels.json` in its folder and in the
    folder above (a checkpoint `model_dir/ckpt-N/model.weights.h5` -> `model_dir/labels.json`).
    """
    folder = os.path.dirname(os.path.abspath(weights))
    for path in (schema_path_for_weights(weights), os.path.join(folder, SCHEMA_NAME),
                 os.path.join(os.path.dirname(folder), SCHEMA_NAME)):
        if os.path.isfile(path):
            return read_label_schema_file(path)
    return None


def write_label_schema(path, schema):
    """Writes `schema` (a LabelSchema) to the JSON file `path`, atomically."""
    atomic_write_json(path, {
        "categories": [{"id": int(c), "name": str(n)} for c, n in schema.categories],
        "keypoint_names": list(schema.keypoint_names),
        "skeleton": [list(limb) for limb in schema.skeleton]})


def read_label_schema_file(path):
    """Reads a labels.json; ValueError naming the file and the field if it is malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        categories = [(int(c["id"]), str(c["name"])) for c in data["categories"]]
        keypoint_names = tuple(str(n) for n in data.get("keypoint_names", ()))
        skeleton = tuple((int(a), int(b)) for a, b in data.get("skeleton", ()))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a label schema ({type(error).__name__}: {error}); "
                         "expected categories [{id, name}], keypoint_names, skeleton") from None
    return LabelSchema(annotations_path=os.fspath(path), categories=categories,
                       keypoint_names=keypoint_names, skeleton=skeleton)


def coco_label_schema(contiguous=True, keypoints=False):
    """COCO's schema from the package data.

    Args:
      contiguous: the 80 categories as classes 1..80 in id order (81 outputs); False: one class
        per category id 1..90 (torchvision's 91 outputs), the 10 unused ids named "N/A".
      keypoints: person only (class 1) with its 17 keypoints and skeleton (Keypoint R-CNN).
    """
    data = json.loads(resources.files("mask_rcnn_tf.weights").joinpath(
        "coco_labels.json").read_text(encoding="utf-8"))
    names = {c["id"]: c["name"] for c in data["categories"]}
    source = "COCO (mask_rcnn_tf/weights/coco_labels.json)"
    if keypoints:
        person = data["person_keypoints"]
        return LabelSchema(source, [(1, names[1])], tuple(person["keypoints"]),
                           tuple(tuple(limb) for limb in person["skeleton"]))
    if contiguous:
        return LabelSchema(source, sorted(names.items()))
    return LabelSchema(source, [(i, names.get(i, "N/A")) for i in range(1, max(names) + 1)])


def check_label_schema(schema, num_classes, num_keypoints):
    """ValueError (one line naming the schema's file) if it does not fit the model's outputs;
    the same wording as export's checks of the names themselves (export/saved_model.py)."""
    if len(schema.categories) != num_classes - 1:
        raise ValueError(
            f"{schema.annotations_path}: {len(schema.categories)} categories, but "
            f"model.num_classes={num_classes} needs {num_classes - 1} class names (background "
            "excluded)")
    if num_keypoints and len(schema.keypoint_names) != num_keypoints:
        raise ValueError(
            f"{schema.annotations_path}: {len(schema.keypoint_names)} keypoint names in the "
            f"categories' 'keypoints', but model.keypoints.num_keypoints={num_keypoints}")


def label_schema_for(config, model_dir=None, weights=None, from_annotations=True):
    """What the model loaded from `model_dir` or `weights` predicts, checked against `config`.

    The schema beside the weights (find_label_schema) comes first; without one, the categories
    of data.train.annotations (else data.val), as before weights carried their labels, or None
    if not `from_annotations`.

    Raises:
      ValueError: no schema anywhere, or one that disagrees with model.num_classes or the
        number of keypoints (one line naming the file).
    """
    from mask_rcnn_tf.config import ConfigError
    from mask_rcnn_tf.data.inputs import load_label_schema
    from mask_rcnn_tf.weights.io import resolve_weights

    path = resolve_weights(model_dir, weights)
    schema = find_label_schema(path)
    if schema is None and not from_annotations:
        return None
    if schema is None:
        try:
            schema = load_label_schema(config.data)
        except ConfigError:
            raise ConfigError(f"{path}: no {SCHEMA_NAME} beside the weights and no "
                              "data.train.annotations to read the class names from") from None
    check_label_schema(schema, config.model.num_classes, config.model.keypoints.num_keypoints)
    return schema
