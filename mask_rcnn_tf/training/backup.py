"""Backup and restore that are safe with several workers.

The run's backup is its per-epoch checkpoint (`checkpoints.CheckpointStore`: model, optimizer
and epoch, written atomically into `model_dir/ckpt-NNNNN`). With MultiWorkerMirroredStrategy
every worker runs the same program, and saving is a collective step: reading variables that
are aggregated on read (metrics, synchronized BatchNorm statistics) takes every worker. So
every worker saves, but only the chief writes into `model_dir`; the others write the same
files into a private temporary folder, removed when training ends. Keras' own
BackupAndRestore has every worker write the same folder, which fails with two workers.

On restart every worker restores from `model_dir`, which must therefore be storage that every
worker reads (a shared filesystem, GCS, S3): a worker that found another epoch than the others
would train a different number of steps and wait forever in the last all-reduce, so
`restore_backup` checks that all workers restored the same epoch.
"""

import contextlib
import os
import shutil
import tempfile

import tensorflow as tf

from mask_rcnn_tf.training.strategy import is_chief, worker_index


@contextlib.contextmanager
def worker_output_dir(model_dir, strategy):
    """The folder this process writes checkpoints, logs and final weights into.

    Args:
      model_dir: str or os.PathLike, the run's folder.
      strategy: the run's tf.distribute.Strategy.

    Yields:
      str: `model_dir` on the chief (or the only process); on every other worker a fresh
      temporary folder (under TMPDIR), removed with its content when the block exits, which
      a worker killed with SIGKILL never reaches.
    """
    if is_chief(strategy):
        yield os.fspath(model_dir)
        return
    task_type, task_id = worker_index(strategy)
    folder = tempfile.mkdtemp(prefix=f"mask-rcnn-{task_type}{task_id}-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def restore_backup(store, strategy):
    """Restores the newest checkpoint of `store` on this worker; checks all workers agree.

    Args:
      store: CheckpointStore over the run's `model_dir`, built on the model and optimizer
        created in `strategy.scope()`.
      strategy: the run's tf.distribute.Strategy.

    Returns:
      int, the restored epoch (0 when there is no checkpoint): the next `initial_epoch`.

    Raises:
      ValueError: the workers of a multi-worker run restored different epochs.
    """
    epoch = store.restore_latest()
    if worker_index(strategy)[0] is None:
        return epoch
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([epoch], tf.int64))
    epochs = strategy.gather(per_replica, axis=0).numpy().tolist()
    if len(set(epochs)) > 1:
        raise ValueError(
            f"workers restored different epochs {epochs} from {store.model_dir} (this worker: "
            f"{epoch}): the model folder must be storage that every worker reads")
    return epoch
