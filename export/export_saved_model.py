"""Export a trained model as a TF Serving SavedModel: `mask-rcnn export` as a script.

    python export/export_saved_model.py --config configs/shapes.yaml --model-dir runs/shapes1 \
        --export-base exported/shapes [--version N] [--overwrite] [--full-masks] [--set k=v ...]

writes exported/shapes/<N>/ (saved_model.pb, variables/, assets/labels.txt,
assets.extra/tf_serving_warmup_requests); see mask_rcnn_tf/export/saved_model.py.
"""

import sys

from mask_rcnn_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
