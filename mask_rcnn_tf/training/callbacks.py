"""Keras callbacks for training: checkpoints, divergence stop, COCO evaluation, TensorBoard.

`StopOnNonFiniteLoss` is the shared divergence flag: the checkpoint and evaluation callbacks
read it so that nothing is saved or evaluated after a NaN/Inf loss, and the caller turns it
into an exception once `fit` has returned:

    callbacks = make_callbacks(store, evaluate_fn=...)
    model.fit(dataset, epochs=..., initial_epoch=store.restore_latest(), callbacks=callbacks)
    raise_if_diverged(callbacks)
"""

import importlib.util
import os

import keras
import numpy as np

from mask_rcnn_tf.errors import TrainingDiverged


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose logged loss is NaN or Inf.

    Keras logs running means over the epoch, so one non-finite step keeps the logged value
    non-finite: a check after every step cannot miss it.

    Args:
      names: names in the training logs to check (the model's loss trackers).
      store: optional CheckpointStore, named as the last good checkpoint in the message.

    Attributes:
      diverged: bool, True once a non-finite value was seen in the current `fit`.
      message: str or None, what diverged, where, and the last good checkpoint.
    """

    def __init__(self, names=("loss",), store=None):
        super().__init__()
        if isinstance(names, str) or not names:
            raise ValueError(f"names must be a non-empty sequence of log names, got {names!r}")
        self.names = tuple(names)
        self.store = store
        self.diverged = False
        self.message = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.diverged = False
        self.message = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        for name in self.names:
            if name not in logs:
                raise ValueError(
                    f"StopOnNonFiniteLoss: {name!r} is not in the training logs "
                    f"(logged: {sorted(logs)})"
                )
            value = np.asarray(logs[name], dtype=np.float64)
            if np.all(np.isfinite(value)):
                continue
            last = self.store.latest() if self.store is not None else None
            shown = value.item() if value.ndim == 0 else value.tolist()
            # Epoch and step are 1-based, as the progress bar shows them.
            self.message = (
                f"training diverged: {name} is {shown} at epoch {self._epoch + 1} "
                f"step {batch + 1}; last good checkpoint: {last or 'none'}"
            )
            self.diverged = True
            self.model.stop_training = True
            return

    def raise_if_diverged(self):
        """Raises TrainingDiverged with `message` if the last `fit` diverged."""
        if self.diverged:
            raise TrainingDiverged(self.message)


def raise_if_diverged(callbacks):
    """Raises TrainingDiverged if a StopOnNonFiniteLoss in `callbacks` saw a NaN/Inf loss."""
    for callback in callbacks:
        if isinstance(callback, StopOnNonFiniteLoss):
            callback.raise_if_diverged()


def _diverged(nan_guard):
    return nan_guard is not None and nan_guard.diverged


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint at the end of every epoch, as `ckpt-<epoch + 1>`.

    Args:
      store: CheckpointStore of the run.
      nan_guard: optional StopOnNonFiniteLoss; once it has diverged nothing more is saved,
        so the newest checkpoint is the last good one.
    """

    def __init__(self, store, nan_guard=None):
        super().__init__()
        self.store = store
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        if not _diverged(self.nan_guard):
            self.store.save(epoch + 1)


class CocoEvalCallback(keras.callbacks.Callback):
    """Runs COCO evaluation every `every_n_epochs` epochs and after the last epoch.

    Every number of the returned metrics goes into the epoch logs under its key path joined
    by "_" after "val_" ({"bbox": {"AP": 0.37}} -> "val_bbox_AP"), so that History, the
    progress bar and TensorBoard, which come after this callback in the list, show it.

    Args:
      evaluate_fn: callable without arguments that evaluates the current weights and
        returns a dict of numbers, possibly nested, e.g. {"bbox": {"AP": 0.37, ...},
        "segm": {"AP": 0.34, ...}} or {"bbox_AP": 0.37}.
      every_n_epochs: evaluation period in epochs, >= 1.
      nan_guard: optional StopOnNonFiniteLoss; a diverged model is not evaluated.
    """

    def __init__(self, evaluate_fn, every_n_epochs=1, nan_guard=None):
        super().__init__()
        if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs}")
        self.evaluate_fn = evaluate_fn
        self.every_n_epochs = int(every_n_epochs)
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        last_epoch = epoch + 1 == self.params.get("epochs")
        if _diverged(self.nan_guard) or not (
            (epoch + 1) % self.every_n_epochs == 0 or last_epoch
        ):
            return
        metrics = _flatten_metrics(self.evaluate_fn(), "val_")
        if logs is not None:
            logs.update(metrics)


def _flatten_metrics(metrics, prefix):
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update(_flatten_metrics(value, f"{prefix}{name}_"))
        elif isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"evaluate_fn returned {prefix}{name} = {value!r}: not a number")
        else:
            flat[f"{prefix}{name}"] = float(value)
    return flat


def make_callbacks(
    store,
    *,
    log_dir=None,
    evaluate_fn=None,
    eval_every_epochs=1,
    loss_names=("loss",),
    tensorboard=True,
    tensorboard_update_freq="epoch",
):
    """Assembles the training callbacks; `fit(verbose=1)` adds the progress bar itself.

    Order matters: the NaN stop first, then the checkpoint (saved before a possibly slow or
    failing evaluation), the evaluation, and TensorBoard last so it sees the val_ metrics.

    Args:
      store: CheckpointStore of the run.
      log_dir: TensorBoard folder, `store.model_dir/logs` if None.
      evaluate_fn: optional, see CocoEvalCallback.
      eval_every_epochs: evaluation period in epochs.
      loss_names: training log names checked for NaN/Inf.
      tensorboard: whether to add keras.callbacks.TensorBoard (needs the `tensorboard`
        package, which tensorflow 2.21 no longer installs).
      tensorboard_update_freq: "epoch", "batch" or an integer number of batches.

    Returns:
      list of keras callbacks for `fit`; pass it to `raise_if_diverged` after `fit`.

    Raises:
      ImportError: `tensorboard` is True but the package is missing (checked here rather
        than when the first epoch ends).
    """
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ImportError(
            "keras.callbacks.TensorBoard needs the 'tensorboard' package: install it "
            "(pip install tensorboard) or pass tensorboard=False"
        )
    nan_guard = StopOnNonFiniteLoss(loss_names, store=store)
    callbacks = [nan_guard, CheckpointCallback(store, nan_guard)]
    if evaluate_fn is not None:
        callbacks.append(CocoEvalCallback(evaluate_fn, eval_every_epochs, nan_guard))
    if tensorboard:
        if log_dir is None:
            log_dir = os.path.join(store.model_dir, "logs")
        callbacks.append(
            keras.callbacks.TensorBoard(
                log_dir=os.fspath(log_dir), update_freq=tensorboard_update_freq
            )
        )
    return callbacks
