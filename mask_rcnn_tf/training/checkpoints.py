"""Atomic training checkpoints (model, optimizer, epoch) and weights-only loading.

Layout of a model directory:

    model_dir/ckpt-00003/state.index           tf.train.Checkpoint of model, optimizer, epoch
    model_dir/ckpt-00003/state.data-*          (everything needed to resume training)
    model_dir/ckpt-00003/model.weights.h5      model.save_weights (evaluate, predict, export)
    model_dir/.tmp-ckpt-4-1234/                a save in progress, or one killed midway

A save writes everything into a temporary folder, flushes it to disk, then renames the folder
to `ckpt-NNNNN`: a directory rename is atomic, so a `ckpt-*` folder is always complete and a
crash at any point leaves the previous checkpoints as they were.
"""

import os
import re
import shutil

import tensorflow as tf

from mask_rcnn_tf.io_utils import fsync_path, fsync_tree

STATE_NAME = "state"
WEIGHTS_NAME = "model.weights.h5"
_CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)$")
_TEMP_PREFIX = ".tmp-ckpt-"


def checkpoint_path(model_dir, epoch):
    """Folder of the checkpoint saved after `epoch` epochs: `model_dir/ckpt-<epoch:05d>`."""
    return os.path.join(model_dir, f"ckpt-{epoch:05d}")


def _checkpoints(model_dir):
    """(epoch, path) of every complete checkpoint in `model_dir`, oldest first."""
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
    found = _checkpoints(model_dir)
    return found[-1][1] if found else None



def _one_line(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _load_weights_file(model, weights):
    """Loads a `.weights.h5` file into a built `model`; returns the path."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights}")
    try:
        model.load_weights(weights)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"cannot load weights file {weights} into model {model.name!r}: {_one_line(error)}"
        ) from error
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
    if (model_dir is None) == (weights is None):
        raise ValueError("pass exactly one of model_dir or weights to load_model_weights")
    if model_dir is not None:
        latest = latest_checkpoint(model_dir)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in {model_dir}")
        weights = os.path.join(latest, WEIGHTS_NAME)
    return _load_weights_file(model, weights)


class CheckpointStore:
    """Saves and restores the full training state of one model directory.

    Args:
      model_dir: directory holding the `ckpt-NNNNN` folders; created on the first save.
      model: the keras.Model being trained.
      optimizer: its keras optimizer.
      keep_last: number of newest checkpoints kept after each save, >= 1.
    """

    def __init__(self, model_dir, model, optimizer, keep_last=3):
        if int(keep_last) != keep_last or keep_last < 1:
            raise ValueError(f"keep_last must be an integer >= 1, got {keep_last}")
        self.model_dir = os.fspath(model_dir)
        self.model = model
        self.optimizer = optimizer
        self.keep_last = int(keep_last)
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self._checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self._epoch
        )

    def latest(self):
        """Path of the newest complete checkpoint folder, or None."""
        return latest_checkpoint(self.model_dir)

    def save(self, epoch):
        """Atomically writes the checkpoint after `epoch` epochs, then prunes old ones.

        Leftover temporary folders of killed saves are removed first.

        Args:
          epoch: python int, epochs completed; must be newer than every saved checkpoint.

        Returns:
          str, the path of the new checkpoint folder.
        """
        epoch = int(epoch)
        existing = _checkpoints(self.model_dir)
        if epoch < 0 or (existing and epoch <= existing[-1][0]):
            raise ValueError(
                f"cannot save epoch {epoch} in {self.model_dir}: it must be >= 0 and newer "
                f"than the latest checkpoint {existing[-1][1] if existing else None}"
            )
        if not self.optimizer.built:
            # Every checkpoint then holds the slot variables that restore_latest() expects.
            self.optimizer.build(self.model.trainable_variables)
        os.makedirs(self.model_dir, exist_ok=True)
        self._remove_temporaries()
        temp = os.path.join(self.model_dir, f"{_TEMP_PREFIX}{epoch}-{os.getpid()}")
        os.mkdir(temp)
        try:
            self._epoch.assign(epoch)
            self._checkpoint.write(os.path.join(temp, STATE_NAME))
            self.model.save_weights(os.path.join(temp, WEIGHTS_NAME))
            fsync_tree(temp)
            final = checkpoint_path(self.model_dir, epoch)
            os.replace(temp, final)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        fsync_path(self.model_dir)
        for _, path in _checkpoints(self.model_dir)[: -self.keep_last]:
            shutil.rmtree(path)
        return final

    def restore_latest(self):
        """Restores model, optimizer (iterations, slots) and epoch from the newest checkpoint.

        Builds the optimizer on the model's trainable variables first if needed, so that its
        slot variables exist to receive the saved values.

        Returns:
          int, the epoch of the restored checkpoint (the next `initial_epoch`), 0 if the
          directory holds no checkpoint (nothing is changed then).

        Raises:
          ValueError: the checkpoint does not match the model or optimizer.
        """
        path = self.latest()
        if path is None:
            return 0
        if not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        try:
            status = self._checkpoint.read(os.path.join(path, STATE_NAME))
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ValueError(
                f"checkpoint {path} does not match the model/optimizer: {_one_line(error)}"
            ) from error
        return int(self._epoch.numpy())

    def restore_weights_only(self, path):
        """Loads only the model weights of the checkpoint folder `path` (for evaluation).

        Reads `path/model.weights.h5`; the optimizer state in the folder is ignored.

        Returns:
          str, the weights file that was loaded.
        """
        return _load_weights_file(self.model, os.path.join(path, WEIGHTS_NAME))

    def _remove_temporaries(self):
        for entry in os.listdir(self.model_dir):
            path = os.path.join(self.model_dir, entry)
            if entry.startswith(_TEMP_PREFIX) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
