"""make-tfrecords and the TFRecord input: same examples as the JSON path, per-worker files,
bad inputs listed or named in one line."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mask_rcnn_tf import cli
from mask_rcnn_tf.data.coco import load_coco
from mask_rcnn_tf.data.figures import FLIP_MAP, make_figures
from mask_rcnn_tf.data.input_errors import naming_input_errors
from mask_rcnn_tf.data.make_tfrecords import make_tfrecords
from mask_rcnn_tf.data.pipeline import build_dataset
from mask_rcnn_tf.data.tfrecords import open_tfrecords

PIPELINE = dict(batch_size=2, min_size=96, max_size=128, pad_size=128, max_instances=3,
                mask_crop_size=14)


def _with_crowd(annotations_path):
    """Adds one crowd region (RLE) to the first image: both paths must leave it out."""
    data = json.loads(open(annotations_path).read())
    image = data["images"][0]
    mask = np.zeros((image["height"], image["width"]), np.uint8, order="F")
    mask[2:10, 3:12] = 1
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(mask)
    data["annotations"].append({
        "id": 99999, "image_id": image["id"], "category_id": data["categories"][0]["id"],
        "iscrowd": 1, "bbox": [3, 2, 9, 8], "area": 72,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    with open(annotations_path, "w") as f:
        json.dump(data, f)


@pytest.fixture(scope="module")
def figures_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("figures") / "data"
    make_figures(output_dir, num_images=6, seed=3)
    return output_dir


@pytest.mark.parametrize("which", ["shapes", "figures"])
def test_shards_give_the_same_examples_as_the_json_path(which, shapes_dir, figures_dir,
                                                        tmp_path):
    source_dir = shapes_dir if which == "shapes" else figures_dir
    annotations = tmp_path / "annotations.json"
    annotations.write_text((source_dir / "annotations.json").read_text())
    _with_crowd(annotations)
    images = os.fspath(source_dir / "images")
    summary = make_tfrecords(annotations, images, tmp_path / "out", num_shards=3,
                             progress=False)
    assert summary["num_shards"] == 3 and summary["num_crowd"] == 1
    dataset = load_coco(annotations, images)
    shards = open_tfrecords(os.fspath(tmp_path / "out-*"))
    assert shards.num_images == len(dataset.records) == summary["num_images"]
    assert shards.categories == [tuple(c) for c in dataset.categories]
    assert shards.keypoint_names == dataset.keypoint_names

    flip_map = FLIP_MAP if which == "figures" else None
    by_id = {}
    for source in (dataset, shards):
        batches = build_dataset(source, training=False, keypoint_flip_map=flip_map, **PIPELINE)
        by_id[source is shards] = {
            int(image_id): {key: value[i] for key, value in batch.items()}
            for batch in batches.as_numpy_iterator()
            for i, image_id in enumerate(batch["image_ids"])}
    json_examples, shard_examples = by_id[False], by_id[True]
    assert sorted(json_examples) == sorted(shard_examples) == sorted(
        r.image_id for r in dataset.records)
    keys = {"images", "gt_boxes", "gt_classes", "gt_masks", "num_gt", "original_sizes"}
    if which == "figures":
        keys.add("gt_keypoints")
    for image_id, expected in json_examples.items():
        assert keys <= set(expected)
        for key in keys:
            np.testing.assert_array_equal(shard_examples[image_id][key], expected[key], key)
    # The crowd region is in the shard but not among the training instances.
    first = dataset.records[0]
    assert json_examples[first.image_id]["num_gt"] == min(len(first.classes), 3)


def test_each_input_pipeline_reads_its_own_files(shapes_dir, tmp_path):
    """Two workers (input pipelines) see disjoint files and, per epoch, each image once."""
    from mask_rcnn_tf.config import DataConfig
    from mask_rcnn_tf.data.inputs import make_training_input

    images = os.fspath(shapes_dir / "images")
    make_tfrecords(shapes_dir / "annotations.json", images, tmp_path / "s", num_shards=4,
                   progress=False)
    shards = open_tfrecords(os.fspath(tmp_path / "s-*"))
    config = DataConfig(min_size=64, max_size=64, mask_crop_size=8, max_instances=4)

    class TwoWorkers:  # the part of a MultiWorkerMirroredStrategy the input function uses
        def distribute_datasets_from_function(self, fn):
            return [fn(tf.distribute.InputContext(2, i, 1)) for i in range(2)]

    seen = []
    for i, pipeline in enumerate(make_training_input(config, shards, TwoWorkers(), batch_size=1,
                                                     seed=5)):
        files = shards.shard(i, 2).files
        assert files == shards.files[i::2]
        epoch = shards.shard(i, 2).num_images
        ids = [int(b["image_ids"][0]) for b in pipeline.take(2 * epoch).as_numpy_iterator()]
        # Each epoch of a pipeline is a permutation of its files' images.
        assert sorted(ids[:epoch]) == sorted(ids[epoch:])
        seen.append(set(ids[:epoch]))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {r.image_id for r in load_coco(
        shapes_dir / "annotations.json", images).records}


def _bad_dataset(tmp_path):
    """Four images, each bad in its own way, plus one good; an unknown category."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("good.jpg", "wrong_size.jpg", "corrupt.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(images / name)
    corrupt = (images / "corrupt.jpg").read_bytes()
    (images / "corrupt.jpg").write_bytes(corrupt[:len(corrupt) // 2])
    listed = [{"id": i + 1, "file_name": name, "height": 40, "width": 50 if i != 1 else 60}
              for i, name in enumerate(("good.jpg", "wrong_size.jpg", "corrupt.jpg",
                                        "missing.jpg"))]
    annotation = {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5],
                  "segmentation": [[1, 1, 6, 1, 6, 6]], "iscrowd": 0}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": listed, "annotations": [annotation],
                                "categories": [{"id": 1, "name": "a"}]}))
    return path, images


def test_make_tfrecords_lists_every_bad_input_and_writes_nothing(tmp_path, capsys):
    path, images = _bad_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    status = cli.main(["make-tfrecords", "--annotations", os.fspath(path), "--images",
                       os.fspath(images), "--output", os.fspath(out / "coco"), "--workers", "2"])
    assert status == 2
    err = capsys.readouterr().err
    assert "3 bad image(s)" in err
    assert f"{images / 'wrong_size.jpg'}: image is 40x50 (h x w) but the annotations file " \
           f"says 40x60" in err
    assert f"{images / 'corrupt.jpg'}: image does not decode" in err
    assert f"{images / 'missing.jpg'}: image file not found" in err
    assert "annotation id 1: category_id 7 is not in categories" in err
    assert "good.jpg" not in err and "Traceback" not in err
    assert os.listdir(out) == []


def test_json_path_image_failing_at_training_time_is_named(tmp_path):
    """The image checks skipped (data.check_images=false): the pipeline names the file."""
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(images / "a.png")
    (images / "b.png").write_bytes(b"this is not an image")
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps({"images": [
        {"id": 1, "file_name": "a.png", "height": 30, "width": 30},
        {"id": 2, "file_name": "b.png", "height": 30, "width": 30}],
        "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="b.png: image does not decode"):
        load_coco(path, images)  # checked by default
    dataset = load_coco(path, images, verify_images=False)
    batches = build_dataset(dataset, training=False, **dict(PIPELINE, batch_size=1))
    with pytest.raises(ValueError) as info:
        with naming_input_errors(dataset):
            list(batches)
    assert str(info.value) == f"{images / 'b.png'} is not a JPEG, PNG, GIF, BMP or WebP image"


def test_truncated_or_corrupted_shard_is_named(shapes_dir, tmp_path):
    images = os.fspath(shapes_dir / "images")
    make_tfrecords(shapes_dir / "annotations.json", images, tmp_path / "s", num_shards=2,
                   progress=False)
    shard = tmp_path / "s-00001-of-00002.tfrecord"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"{shard}: shard is {len(data) // 2} bytes, "):
        open_tfrecords(os.fspath(tmp_path / "s-*"))
    # Same size, damaged content: found when read, and named.
    shard.write_bytes(data[:1000] + bytes(1000) + data[2000:])
    source = open_tfrecords(os.fspath(tmp_path / "s-*"))
    batches = build_dataset(source, training=False, **PIPELINE)
    with pytest.raises(ValueError, match=f"^{shard}: shard does not read"):
        with naming_input_errors(source):
            list(batches)
    # A decode failure that names no file, from shards: the shards are searched (a shard
    # source has no image list to decode).
    with pytest.raises(ValueError, match=f"^{shard}: shard does not read"):
        with naming_input_errors(source):
            raise tf.errors.InvalidArgumentError(None, None, "Unknown image file format.")


def test_bucket_paths_through_tf_io_gfile(shapes_dir, tmp_path):
    """ram:// stands in for gs://: shards written there and read back by glob, and an
    annotations file + images read from there by the JSON path."""
    bucket = "ram://bucket15"
    tf.io.gfile.makedirs(f"{bucket}/images")
    for name in os.listdir(shapes_dir / "images"):
        tf.io.gfile.copy(os.fspath(shapes_dir / "images" / name), f"{bucket}/images/{name}",
                         overwrite=True)
    tf.io.gfile.copy(os.fspath(shapes_dir / "annotations.json"), f"{bucket}/annotations.json",
                     overwrite=True)
    local = load_coco(shapes_dir / "annotations.json", shapes_dir / "images")
    remote = load_coco(f"{bucket}/annotations.json", f"{bucket}/images")
    assert [r.path for r in remote.records] == [f"{bucket}/images/{os.path.basename(r.path)}"
                                                for r in local.records]
    make_tfrecords(shapes_dir / "annotations.json", shapes_dir / "images", f"{bucket}/s",
                   num_shards=2, progress=False)
    shards = open_tfrecords(f"{bucket}/s-*")
    assert shards.files == [f"{bucket}/s-0000{i}-of-00002.tfrecord" for i in range(2)]
    ids = {}
    for source in (remote, shards):
        batches = build_dataset(source, training=False, **PIPELINE)
        ids[source is shards] = sorted(int(i) for b in batches.as_numpy_iterator()
                                       for i in b["image_ids"])
    assert ids[True] == ids[False] == sorted(r.image_id for r in local.records)


def test_evaluation_shards_need_their_own_ground_truth(shapes_dir, figures_dir, tmp_path):
    from mask_rcnn_tf.config import ConfigError, DataConfig, SplitConfig
    from mask_rcnn_tf.data.inputs import load_split

    make_tfrecords(shapes_dir / "annotations.json", shapes_dir / "images", tmp_path / "v",
                   num_shards=1, progress=False)
    pattern = os.fspath(tmp_path / "v-*")
    with pytest.raises(ConfigError, match="data.val.annotations is not set"):
        load_split(DataConfig(val=SplitConfig(tfrecords=pattern)), "val")
    other = os.fspath(figures_dir / "annotations.json")
    with pytest.raises(ValueError, match=f"{other}: categories differ from those of "):
        load_split(DataConfig(val=SplitConfig(tfrecords=pattern, annotations=other)), "val")


def test_make_tfrecords_refuses_bad_arguments_and_existing_shards(shapes_dir, tmp_path,
                                                                  capsys):
    common = ["make-tfrecords", "--annotations", os.fspath(shapes_dir / "annotations.json"),
              "--images", os.fspath(shapes_dir / "images"), "--output", os.fspath(tmp_path / "s")]
    assert cli.main(common + ["--num-shards", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mask-rcnn make-tfrecords: error: --num-shards must be a positive integer, got 0")
    assert cli.main(common + ["--num-shards", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_shards"] == 2 and summary["num_images"] == 20
    assert cli.main(common + ["--num-shards", "3"]) == 2
    assert "pass --overwrite to replace them" in capsys.readouterr().err
    # --overwrite replaces the 2 shards by 3 and removes the stale ones.
    assert cli.main(common + ["--num-shards", "3", "--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["s-00000-of-00003.tfrecord",
                                            "s-00001-of-00003.tfrecord",
                                            "s-00002-of-00003.tfrecord", "s.manifest.json"]
    assert open_tfrecords(os.fspath(tmp_path / "s-*")).num_images == 20
