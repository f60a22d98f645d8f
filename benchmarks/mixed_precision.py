"""One training step under float32 and under mixed_bfloat16: losses and time, one process.

Builds the config's model and optimizer twice with the same seed (once per dtype policy, as
`mask-rcnn train` does with `train.mixed_precision`), takes one batch of `train.batch_size`
images of a freshly generated shapes dataset, and runs the model's `train_step` in a
tf.function: one step each (tracing; its losses are printed), two untimed rounds, then ROUNDS
timed rounds, each round one step of each model, so that load from other jobs hits both
alike. Prints the first step's losses under both policies, the median step times and their
ratio (float32 / bfloat16, above 1 when bfloat16 is faster), with the CPU it ran on. The
losses differ by more than rounding: an untrained RPN's near-equal scores rank other
proposals first, and RoI sampling draws other random numbers in the other graph
(tests/training/test_distribute.py compares the two policies with fixed samples).

    python benchmarks/mixed_precision.py                        # configs/shapes.yaml, 10 rounds
    python benchmarks/mixed_precision.py --rounds 20 --set train.batch_size=4

bfloat16 is fast on CPUs with AVX512_BF16 or AMX (oneDNN uses them); elsewhere it is emulated
and slower than float32.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("float32", "mixed_bfloat16")
# The first steps after the other model ran are slow (oneDNN sets up its kernels again).
WARM_UP_ROUNDS = 2


def cpu_description():
    """'model name' and the bfloat16-related flags of the first CPU in /proc/cpuinfo."""
    model, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = [flag for flag in line.split(":", 1)[1].split()
                             if "bf16" in flag or flag.startswith("amx")]
                    break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical cores; {' '.join(flags) or 'no bf16 flags'})"


def one_batch(config, folder):
    """One training batch of `train.batch_size` generated shapes images at the config's size."""
    import dataclasses

    from mask_rcnn_tf.data.coco import load_coco
    from mask_rcnn_tf.data.inputs import make_dataset
    from mask_rcnn_tf.data.shapes import make_shapes

    make_shapes(folder, num_images=2 * config.train.batch_size, seed=0,
                image_size=config.data.max_size)
    data = load_coco(os.path.join(folder, "annotations.json"), os.path.join(folder, "images"))
    data_config = dataclasses.replace(config.data, flip_probability=0.0)
    dataset = make_dataset(data_config, data, training=True, batch_size=config.train.batch_size,
                           seed=0)
    return next(iter(dataset))


def build_step(config, policy, batch):
    """(tf.function running one train_step, first-step losses) for the config under `policy`."""
    import keras
    import tensorflow as tf

    from mask_rcnn_tf.training.train import compile_model

    keras.mixed_precision.set_dtype_policy(policy)
    keras.utils.set_random_seed(config.train.seed)
    model = compile_model(config)
    step = tf.function(model.train_step)
    losses = {name: float(value) for name, value in step(batch).items()}
    return step, losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "shapes.yaml"))
    parser.add_argument("--set", nargs="+", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per policy")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO)
    import keras
    import tensorflow as tf

    from mask_rcnn_tf.config import load_config

    config = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as folder:
        batch = one_batch(config, folder)
    steps, losses = {}, {}
    for policy in POLICIES:
        steps[policy], losses[policy] = build_step(config, policy, batch)
    keras.mixed_precision.set_dtype_policy("float32")
    times = {policy: [] for policy in POLICIES}
    for _ in range(WARM_UP_ROUNDS + args.rounds):
        for policy in POLICIES:
            start = time.perf_counter()
            steps[policy](batch)["loss"].numpy()
            times[policy].append(time.perf_counter() - start)
    times = {policy: values[WARM_UP_ROUNDS:] for policy, values in times.items()}
    medians = {policy: statistics.median(values) for policy, values in times.items()}
    print(json.dumps({
        "config": os.path.relpath(args.config, REPO), "overrides": args.overrides,
        "batch_size": config.train.batch_size, "image_size": config.data.pad_size,
        "rounds": args.rounds, "cpu": cpu_description(), "tensorflow": tf.__version__,
        "first_step_losses": losses,
        "median_step_seconds": {p: round(v, 4) for p, v in medians.items()},
        "step_seconds": {p: [round(v, 4) for v in values] for p, values in times.items()},
        "ratio_float32_over_bfloat16": round(medians["float32"] / medians["mixed_bfloat16"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
