"""data.service_address: the training input produced by a tf.data service (a dispatcher and a
worker started in this process on 127.0.0.1) gives the batches of the local pipeline."""

import numpy as np
import tensorflow as tf

from mask_rcnn_tf.config import DataConfig
from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.inputs import make_training_input


def test_training_input_through_a_tf_data_service(shapes_dir):
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1].replace("localhost", "127.0.0.1")
    worker = service.WorkerServer(service.WorkerConfig(dispatcher_address=address,
                                                       worker_address="127.0.0.1:%port%"))
    try:
        dataset = load_coco(shapes_dir / "annotations.json", shapes_dir / "images")
        local_config = DataConfig(min_size=64, max_size=64, mask_crop_size=8, max_instances=4)
        remote_config = DataConfig(min_size=64, max_size=64, mask_crop_size=8, max_instances=4,
                                   service_address=address)
        strategy = tf.distribute.get_strategy()
        batches = {}
        for name, config in (("local", local_config), ("service", remote_config)):
            data = make_training_input(config, dataset, strategy, batch_size=2, seed=3)
            batches[name] = [b for _, b in zip(range(12), data)]
            # The service's worker ran a task only for the service configuration.
            assert worker._num_tasks() == (name == "service")
        # 12 batches of 2 from 20 images: the second epoch has begun, reshuffled.
        for local, remote in zip(batches["local"], batches["service"]):
            assert sorted(local) == sorted(remote)
            for key in local:
                np.testing.assert_allclose(remote[key].numpy(), local[key].numpy(), err_msg=key)
    finally:
        worker.stop()
        dispatcher.stop()
