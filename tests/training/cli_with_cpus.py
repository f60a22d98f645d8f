"""Runs `mask-rcnn ARGS...` with the CPU split into N logical devices (a machine with N "GPUs").

    python tests/training/cli_with_cpus.py N train --config ... --strategy mirrored

The split has to happen before TensorFlow's runtime starts, hence a process of its own.
"""

import sys

import tensorflow as tf


def main(argv):
    count = int(argv[0])
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    from mask_rcnn_tf.cli import main as cli_main

    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
