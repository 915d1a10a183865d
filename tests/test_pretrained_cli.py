"""Starting from a pretrained detector: `init_from`, `predict --checkpoint=PRESET`, export.

Offline: the keras-hub preset is built with random weights and saved to a directory
(tests/keras_hub_presets.py); the `.keras` sources are small models saved here.
"""

import json
import pathlib

import keras
import numpy as np
import pytest
from conftest import make_squares
from test_cli import cli, program_lines

import retinanet
from retinanet import config as rconfig
from retinanet.model import pretrained
from retinanet.model.presets import COCO_CATEGORIES
from retinanet.training import builders

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory):
    """A keras-hub preset directory (v1, random weights, every anchor's best class is 1)."""
    pytest.importorskip("keras_hub")
    from keras_hub_presets import save_preset

    directory = tmp_path_factory.mktemp("preset")
    save_preset(directory, "v1", image_size=128)
    return directory


@pytest.fixture
def tiny_keras_file(tiny_retinanet, tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_retinanet()
    path = tmp_path / "tiny.keras"
    model.save(path)
    return model, path


def _tiny_config(**model_fields):
    config = rconfig.default_config()
    config.model.update(model_fields)
    config.model.matching.positive_iou = 0.6
    config.model.postprocess.max_detections = 7
    return config


# ----------------------------------------------------------------------------- library


def test_is_preset_needs_keras_hub_metadata(tmp_path):
    assert pretrained.is_preset("retinanet_resnet50_fpn_coco")
    assert not pretrained.is_preset("retinanet_resnet50_fpn")
    (tmp_path / "config.json").write_text("{}")  # a training run folder has one too
    assert not pretrained.is_preset(tmp_path)
    (tmp_path / "metadata.json").write_text("{}")
    assert pretrained.is_preset(tmp_path)


def test_load_pretrained_rejects_other_sources(tmp_path):
    for source in ("best", tmp_path, tmp_path / "missing.keras"):
        with pytest.raises(ValueError, match="not a keras-hub preset name"):
            pretrained.load_pretrained(source)


def test_new_classes_keep_every_weight_that_fits(tiny_keras_file):
    model, path = tiny_keras_file
    same = pretrained.load_pretrained(path, num_classes=3)
    assert same.num_classes == 3
    new = pretrained.load_pretrained(path, num_classes=5)
    assert new.num_classes == 5 and new.class_names is None
    output = new.classification_head.output_conv
    assert output.kernel.shape[-1] == 9 * 5
    np.testing.assert_allclose(output.bias.numpy(), -np.log(99.0), rtol=1e-6)  # prior 0.01
    changed = [v.path for v, w in zip(new.weights, model.weights)
               if v.shape != w.shape or not np.array_equal(v.numpy(), w.numpy())]
    assert len(changed) == 2 and all("classification_head" in p for p in changed), changed
    logits = new(np.zeros((1, 64, 64, 3), "float32"))["cls_logits"]
    assert logits.shape[-1] == 5


def test_build_model_from_a_keras_file_uses_the_config_matching_and_decoding(
        tiny_keras_file):
    model, path = tiny_keras_file
    config = _tiny_config(init_from=str(path))
    built = builders.build_model(config, num_classes=2)
    assert built.num_classes == 2
    assert built.label_encoder.matcher.positive_iou == 0.6
    assert built.postprocessor.max_detections == 7
    np.testing.assert_array_equal(built.box_head.output_conv.kernel.numpy(),
                                  model.box_head.output_conv.kernel.numpy())
    config.model.init_from = str(path.with_suffix(".h5"))
    with pytest.raises(rconfig.ConfigError, match="config.model.init_from"):
        builders.build_model(config, num_classes=2)


def test_fine_tuning_keeps_the_sources_preprocessing_in_training_and_evaluation(
        tiny_retinanet, tmp_path):
    from retinanet.data import DetectionDataset
    from retinanet.data.validation import Record
    from retinanet.preprocess import IMAGENET_MEAN_255
    from retinanet.training import datasets

    tiny_retinanet(preprocessing="torchvision").save(tmp_path / "source.keras")
    config = _tiny_config(init_from=str(tmp_path / "source.keras"))
    config.data.image_size, config.data.min_side, config.data.max_side = 0, 100, 150
    config.data.scale_range, config.data.batch_size = (1.0, 1.0), 1
    model = builders.build_model(config, num_classes=2)
    assert model.preprocessing == "torchvision"
    # 96 x 96 -> floor(96 * 100 / 96) = 100 rows, the rest the mean colour.
    record = Record("0", None, 96, 96, np.array([[10, 10, 50, 50]], np.float32),
                    np.zeros(1, np.int32), np.zeros(1, bool), np.zeros(1, bool))
    dataset = DetectionDataset(["a", "b"], [record], images=np.full((1, 96, 96, 3), 9, np.uint8))
    for batches in (datasets.train_pipeline(config, dataset, model=model),
                    datasets.eval_pipeline(config, dataset, model=model)):
        images = next(iter(batches))[0].numpy()
        assert images.shape[1:3] == (128, 128)
        np.testing.assert_allclose(images[0, 100:], np.broadcast_to(IMAGENET_MEAN_255,
                                                                    (28, 128, 3)), atol=1e-4)
    config.model.preprocessing = "retinanet"  # an explicit choice wins
    assert builders.build_model(config, num_classes=2).preprocessing == "retinanet"


def test_model_classes_are_unique_and_coco_ids_only_for_coco_logits(tiny_retinanet):
    assert pretrained.model_classes(tiny_retinanet()) == (["0", "1", "2"], None)
    coco = tiny_retinanet()
    coco.class_names = list(retinanet.model.presets.COCO_CLASS_NAMES)
    names, ids = pretrained.model_classes(coco)
    assert len(set(names)) == 91 and names[:2] == ["__background__", "person"]
    assert names[12] == "N/A" and names[26] == "N/A 26"
    assert ids == list(range(91))


# ----------------------------------------------------------------------------- preset


# Slow: building, saving and converting a ResNet50 RetinaNet and tracing the SavedModel.
@pytest.mark.slow
def test_exported_saved_model_of_the_converted_preset_matches_predict(preset_dir, tmp_path):
    import tensorflow as tf
    from test_export import assert_same_detections

    from retinanet import export

    model = retinanet.RetinaNet.from_preset(str(preset_dir))
    images = make_squares(num_images=2, size=128, seed=4)[0][:, :96].astype("uint8")
    expected = model.predict(images.astype("float32"), verbose=0)
    assert expected["num_detections"].min() >= 10
    directory = export.export_saved_model(model, tmp_path / "saved_model")
    serve = tf.saved_model.load(directory).signatures[export.SERVING_SIGNATURE]
    actual = {key: np.asarray(value) for key, value in serve(images=tf.constant(images)).items()}
    assert_same_detections(actual, expected)


# Slow: ResNet50 at torchvision's 800 x 1333 input size on a CPU.
@pytest.mark.slow
def test_predict_with_a_preset_directory_and_no_workdir(preset_dir, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(make_squares(num_images=1, size=64, seed=2)[0][0, :48].astype("uint8")) \
        .save(images / "a.png")
    output = tmp_path / "out"
    result = cli("predict", f"--checkpoint={preset_dir}", f"--images={images}",
                 f"--output={output}")
    assert "COCO results format; category_id is the dataset category id" in result.stdout
    detections = json.loads((output / "detections.json").read_text())
    assert detections
    for detection in detections:
        assert detection["category_id"] in COCO_CATEGORIES
        assert detection["category_name"] == COCO_CATEGORIES[detection["category_id"]]
        x, y, w, h = detection["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 48.01  # the input's pixels
    assert {d["category_id"] for d in detections} == {1}  # every anchor's best class: person
    assert (output / "a.png").is_file()


def test_predict_without_workdir_needs_a_model(tmp_path):
    result = cli("predict", f"--images={tmp_path}", f"--output={tmp_path}", check=False)
    assert result.returncode == 2
    assert "--workdir is required" in program_lines(result.stderr)[-1]


# Slow: a ResNet50 RetinaNet trains (one step) and evaluates on a CPU.
@pytest.mark.slow
def test_train_init_from_a_preset_directory(preset_dir, tmp_path):
    workdir = tmp_path / "run"
    cli("train", f"--config={TINY}", f"--workdir={workdir}", "--verbose=0",
        f"--config.model.init_from={preset_dir}", "--config.train.epochs=1",
        "--config.train.steps_per_epoch=1", "--config.data.batch_size=2",
        "--config.data.shapes.num_val=2", "--config.train.eval_every_n_epochs=0")
    trained = keras.saving.load_model(workdir / "checkpoints" / "last.keras")
    source = retinanet.RetinaNet.from_preset(str(preset_dir))
    class_names = json.loads((workdir / "classes.json").read_text())["class_names"]
    assert trained.num_classes == len(class_names) != 91  # a new class layer
    assert trained.backbone.name == "torchvision_resnet50"
    assert trained.anchor_generator.convention == "torchvision"
    assert trained.preprocessing == "torchvision"
    features = trained.backbone.get_layer("torchvision_resnet50_features")
    source_features = source.backbone.get_layer("torchvision_resnet50_features")
    # Frozen (stem, res2, batch norm): still the preset's. The class subnet trained (the
    # box head may see no positive anchor in one step of two images).
    for name in ("conv1_conv", "stack0_block2_3_conv", "stack3_block2_3_bn"):
        for ours, theirs in zip(features.get_layer(name).weights,
                                source_features.get_layer(name).weights):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert not np.array_equal(trained.classification_head.convs[0].kernel.numpy(),
                              source.classification_head.convs[0].kernel.numpy())
