"""`mask-rcnn train` from shards, end to end (slow: ~30 s to trace the training step)."""

import os
from pathlib import Path

import pytest

from mask_rcnn_tf import cli
from mask_rcnn_tf.data.make_tfrecords import make_tfrecords
from mask_rcnn_tf.data.shapes import make_shapes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes.yaml"
TINY = ["data.min_size=64", "data.max_size=64", "model.backbone.base_width=8",
        "model.fpn.num_channels=16", "model.roi_heads.box_fc_dim=16",
        "model.roi_heads.mask_conv_dim=8"]


@pytest.mark.slow
def test_train_from_shards(tmp_path, capsys):
    make_shapes(tmp_path / "shapes", num_images=8, seed=4, image_size=64)
    make_tfrecords(tmp_path / "shapes" / "annotations.json", tmp_path / "shapes" / "images",
                   tmp_path / "train", num_shards=2, progress=False)
    model_dir = tmp_path / "model"
    status = cli.main(["train", "--config", os.fspath(CONFIG), "--model-dir",
                       os.fspath(model_dir), "--set", *TINY,
                       f"data.train.tfrecords={tmp_path / 'train-*'}", "train.steps=2",
                       "train.steps_per_epoch=2", "train.warmup_steps=0", "train.batch_size=2"])
    assert status == 0, capsys.readouterr().err[-3000:]
    assert (model_dir / "model.weights.h5").exists()
    assert (model_dir / "ckpt-00001").is_dir()  # one epoch of 2 steps
