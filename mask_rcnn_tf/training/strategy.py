"""Picks the tf.distribute strategy of a training run (`--strategy`, `train.strategy`).

    one_device    TF's default strategy: no scope, one device (the first GPU, else the CPU).
                  Exactly the single-device program, random streams included.
    mirrored      MirroredStrategy over every local GPU (every logical CPU device when there is
                  no GPU): one replica per device, gradients summed with all-reduce.
    multi_worker  MultiWorkerMirroredStrategy over the hosts of TF_CONFIG, each host mirrored
                  over its local GPUs (or its CPU); collective all-reduce between hosts.
    auto          multi_worker when TF_CONFIG names a cluster, mirrored when there are several
                  local GPUs, one_device otherwise.

MultiWorkerMirroredStrategy must exist before TensorFlow's runtime starts, so `make_strategy`
is the first TensorFlow call of a run. TPUStrategy is not offered here; the distributed input
and step keep shapes static for it with data.pad_mode square (padded, drop_remainder batches;
replica-context all-reduces only).
"""

import json
import logging
import os

import tensorflow as tf

from mask_rcnn_tf.config import STRATEGY_NAMES

logger = logging.getLogger("mask_rcnn_tf.training")


def read_tf_config(environ=None):
    """The parsed TF_CONFIG environment variable, or None when it is unset or empty.

    Args:
      environ: mapping to read instead of os.environ (tests).

    Returns:
      dict with "cluster" (job name -> list of "host:port") and "task" ({"type", "index"}),
      or None.

    Raises:
      ValueError: TF_CONFIG is not a JSON object, or its cluster or task is malformed.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {text[:200]!r}") from None
    if not isinstance(tf_config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {text[:200]!r}")
    cluster = tf_config.get("cluster") or {}
    if not isinstance(cluster, dict) or not all(
            isinstance(hosts, list) and hosts for hosts in cluster.values()):
        raise ValueError(f"TF_CONFIG cluster must map job names to non-empty lists of "
                         f"host:port, got {cluster!r}")
    if cluster:
        task = tf_config.get("task")
        if (not isinstance(task, dict) or task.get("type") not in cluster
                or not isinstance(task.get("index"), int)
                or not 0 <= task["index"] < len(cluster[task["type"]])):
            raise ValueError(f"TF_CONFIG task must be {{\"type\": one of {sorted(cluster)}, "
                             f"\"index\": a position in that job's list}}, got {task!r}")
    return tf_config


def resolve_strategy_name(name, tf_config, num_gpus):
    """The concrete strategy `name` stands for ("auto" resolved; other names pass through).

    Args:
      name: one of STRATEGY_NAMES.
      tf_config: parsed TF_CONFIG (see read_tf_config) or None.
      num_gpus: python int, local GPUs.

    Returns:
      "one_device", "mirrored" or "multi_worker".

    Raises:
      ValueError: unknown name, or "multi_worker" without a cluster in TF_CONFIG.
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}")
    has_cluster = bool(tf_config and tf_config.get("cluster"))
    if name == "multi_worker" and not has_cluster:
        raise ValueError("strategy multi_worker needs TF_CONFIG naming the cluster and this "
                         "task, e.g. {\"cluster\": {\"worker\": [\"host1:12345\", "
                         "\"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}")
    if name != "auto":
        return name
    if has_cluster:
        return "multi_worker"
    return "mirrored" if num_gpus > 1 else "one_device"


def make_strategy(name):
    """Creates the strategy `name` stands for; call it before any other TensorFlow op.

    Args:
      name: one of STRATEGY_NAMES.

    Returns:
      tf.distribute.Strategy; for "one_device" the default strategy, whose scope changes
      nothing.
    """
    resolved = resolve_strategy_name(
        name, read_tf_config(), len(tf.config.list_physical_devices("GPU")))
    if resolved == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif resolved == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
    else:
        strategy = tf.distribute.get_strategy()
    logger.info("strategy %s (%s): %d replica(s) in sync", name if name == resolved else
                f"{name} -> {resolved}", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def worker_index(strategy):
    """(task type, task index) of this process in a multi-worker cluster; (None, None) else."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run's files: the single process, or the cluster's chief
    (the "chief" task if the cluster has one, else worker 0)."""
    task_type, task_id = worker_index(strategy)
    if task_type is None:
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0
