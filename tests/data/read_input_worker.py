"""One worker of a MultiWorkerMirroredStrategy cluster (TF_CONFIG) that only reads the training
input from shards and writes the image ids of its first STEPS batches to OUTPUT as JSON.

    python tests/data/read_input_worker.py "PREFIX-*" STEPS OUTPUT
"""

import json
import sys

import tensorflow as tf


def main(pattern, steps, output):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from mask_rcnn_tf.config import DataConfig, SplitConfig
    from mask_rcnn_tf.data.inputs import load_split, make_training_input

    config = DataConfig(train=SplitConfig(tfrecords=pattern), min_size=64, max_size=64,
                        mask_crop_size=8, max_instances=4)
    data = make_training_input(config, load_split(config, "train"), strategy, batch_size=1,
                               seed=int(strategy.cluster_resolver.task_id))
    ids = []
    for _, batch in zip(range(int(steps)), data):
        for value in strategy.experimental_local_results(batch["image_ids"]):
            ids.extend(int(i) for i in value.numpy())
    with open(output, "w") as f:
        json.dump(ids, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
