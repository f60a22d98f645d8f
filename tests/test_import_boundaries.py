"""Imports run down the layers: the model does not load the serving client (grpc, TF Serving)."""

import os
import subprocess
import sys


def test_importing_the_model_loads_no_grpc_nor_tf_serving():
    # A fresh interpreter: this test process has long imported the client through other tests.
    code = ("import sys\n"
            "import mask_rcnn_tf.modeling, mask_rcnn_tf.modeling.factory\n"
            "import mask_rcnn_tf.ops.mask_ops, mask_rcnn_tf.evaluation.coco_eval\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'tensorflow_serving') or m.startswith('mask_rcnn_tf.serving')))\n")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "[]"
