"""Atomic training checkpoints (model, optimizer, epoch); weights-only loading is in weights/io.py.

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
import shutil

import tensorflow as tf

from mask_rcnn_tf.io_utils import fsync_path, fsync_tree
from mask_rcnn_tf.weights.io import (
    WEIGHTS_NAME,
    latest_checkpoint,
    list_checkpoints,
    load_weights_file,
    one_line,
)

STATE_NAME = "state"
_TEMP_PREFIX = ".tmp-ckpt-"


def checkpoint_path(model_dir, epoch):
    """Folder of the checkpoint saved after `epoch` epochs: `model_dir/ckpt-<epoch:05d>`."""
    return os.path.join(model_dir, f"ckpt-{epoch:05d}")


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
        existing = list_checkpoints(self.model_dir)
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
        for _, path in list_checkpoints(self.model_dir)[: -self.keep_last]:
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
                f"checkpoint {path} does not match the model/optimizer: {one_line(error)}"
            ) from error
        return int(self._epoch.numpy())

    def restore_weights_only(self, path):
        """Loads only the model weights of the checkpoint folder `path` (for evaluation).

        Reads `path/model.weights.h5`; the optimizer state in the folder is ignored.

        Returns:
          str, the weights file that was loaded.
        """
        return load_weights_file(self.model, os.path.join(path, WEIGHTS_NAME))

    def _remove_temporaries(self):
        for entry in os.listdir(self.model_dir):
            path = os.path.join(self.model_dir, entry)
            if entry.startswith(_TEMP_PREFIX) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
