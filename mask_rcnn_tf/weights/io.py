"""Reading a model's weights: training checkpoints, `.weights.h5` files and backbone files.

Layout of a model directory (written by training/checkpoints.py):

    model_dir/ckpt-00003/model.weights.h5      model.save_weights of one checkpoint
    model_dir/model.weights.h5                 the final weights
    model_dir/labels.json                      the label schema (weights/labels.py)

A backbone file (what `convert-torchvision` writes for an ImageNet classifier) is an HDF5 file
with one dataset per backbone weight, named by the weight's path inside the model
("backbone/res2_block0_conv1/kernel", Keras layout), and attributes saying which ResNet it
holds (BACKBONE_ATTRIBUTES) and the preprocessing its weights expect.
"""

import os
import re
import warnings

import numpy as np

WEIGHTS_NAME = "model.weights.h5"
# The model's parts holding weights (MaskRCNN attributes, the first part of a weight_key), in
# the order of the network.
PARTS = ("backbone", "fpn", "rpn_head", "box_head", "mask_head", "keypoint_head")
BACKBONE_FORMAT = "mask_rcnn_tf/backbone/1"
# Architecture attributes of a backbone file, compared with model.backbone before loading.
BACKBONE_ATTRIBUTES = ("depth", "groups", "width_per_group", "base_width", "stride_in_1x1")
_CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)$")


def list_checkpoints(model_dir):
    """(epoch, path) of every complete `ckpt-NNNNN` folder in `model_dir`, oldest first."""
    if not os.path.isdir(model_dir):
        return []
    found = []
    for entry in os.listdir(model_dir):
        match = _CHECKPOINT_RE.match(entry)
        path = os.path.join(model_dir, entry)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(model_dir):
    """Path of the newest complete checkpoint folder in `model_dir`, or None if there is none.

    Temporary folders left by an interrupted save are ignored.
    """
    found = list_checkpoints(model_dir)
    return found[-1][1] if found else None


def one_line(error):
    """An exception's message on one line of at most 300 characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


class PartialLoadError(ValueError):
    """Part of a weights file did not fit the model (Keras only warned about it)."""


def strict_load_weights(model, path):
    """`model.load_weights(path)` that fails where Keras would load only part of the file.

    Keras 3's saving_lib meets a nested container of the model without a matching group in the
    file with a UserWarning ("Skipping nested container ... Affected layers will retain their
    freshly-initialized weights") and goes on: a model that looks loaded but is partly random.
    Here that warning is an error.

    Raises:
      PartialLoadError: the warning's text.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Skipping", category=UserWarning)
        try:
            model.load_weights(path)
        except UserWarning as warning:
            raise PartialLoadError(str(warning)) from None


def load_weights_file(model, weights):
    """Loads a `.weights.h5` file into a built `model`; returns the path."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    try:
        strict_load_weights(model, weights)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"cannot load weights file {weights} into model {model.name!r}: {one_line(error)}"
        ) from error
    return weights


def resolve_weights(model_dir=None, weights=None):
    """The `.weights.h5` path of exactly one source: the newest checkpoint of `model_dir`, or
    `weights` itself.

    Raises:
      ValueError: not exactly one source.
      FileNotFoundError: no checkpoint in `model_dir`.
    """
    if (model_dir is None) == (weights is None):
        raise ValueError("pass exactly one of model_dir or weights to load_model_weights")
    if model_dir is not None:
        latest = latest_checkpoint(model_dir)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {model_dir}")
        return os.path.join(latest, WEIGHTS_NAME)
    return weights


def load_model_weights(model, model_dir=None, weights=None):
    """Loads model weights for evaluation, prediction or export (no optimizer state).

    Exactly one source: `model_dir` loads the newest checkpoint's `model.weights.h5`,
    `weights` a `.weights.h5` file. The model must be built (called once) beforehand.

    Args:
      model: a built keras.Model.
      model_dir: a training directory holding `ckpt-*` folders.
      weights: path of a `.weights.h5` file.

    Returns:
      str, the path of the weights file that was loaded.

    Raises:
      ValueError: not exactly one source, or the file does not fit the model.
      FileNotFoundError: no checkpoint in `model_dir`, or `weights` does not exist.
    """
    return load_weights_file(model, resolve_weights(model_dir, weights))


def mismatch_summary(missing, unexpected, mismatched, limit):
    """One line on weights that do not fit a model, for an error message.

    Args:
        missing, unexpected, mismatched: lists of str (weight names, or "name shape -> ...").
        limit: int, names shown per list; the rest are counted.

    Returns:
        str, e.g. "2 missing: a, b; 14 unexpected: c, d, ... (+12 more)"; empty lists left out.
    """
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("mis-shaped", mismatched)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(problems)


def weight_key(variable):
    """A model weight's name without the model's own name: "backbone/stem_conv/kernel"."""
    parts = variable.path.split("/")
    return "/".join(parts[-3:])


def write_backbone_file(path, tensors, attributes):
    """Writes a backbone file (see the module docstring); the caller makes it atomic.

    Args:
      path: str, the file to create.
      tensors: dict of weight key ("backbone/<layer>/<variable>") -> float32 array.
      attributes: dict with BACKBONE_ATTRIBUTES, "channel_order", "mean", "std", "source".
    """
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format"] = BACKBONE_FORMAT
        for name, value in attributes.items():
            f.attrs[name] = value
        group = f.create_group("weights")
        for key, value in tensors.items():
            group.create_dataset(key, data=np.asarray(value, np.float32))


def read_backbone_file(path):
    """(tensors, attributes) of a backbone file, or None if `path` is another HDF5 file.

    Raises:
      OSError: not an HDF5 file (h5py's error).
    """
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != BACKBONE_FORMAT:
            return None
        tensors = {}
        f["weights"].visititems(lambda name, obj: tensors.__setitem__(
            name, np.asarray(obj)) if hasattr(obj, "shape") else None)
        attributes = {name: _plain(value) for name, value in f.attrs.items()}
    return tensors, attributes


def _plain(value):
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
