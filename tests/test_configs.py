"""configs/*.py and the builders of retinanet.config (in-process, no training)."""

import importlib.util
import json
import pathlib

import pytest

from retinanet import _keras_compat
from retinanet import config as rconfig
from retinanet.training import builders, datasets

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
RECIPES = ("custom", "finetune_coco", "retinanet_r50_coco", "retinanet_r50_voc", "scratch_cpu",
           "shapes", "tiny")


def load(name):
    spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                  rconfig.resolve_config_file(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_every_file_in_configs_is_a_listed_recipe():
    files = {path.stem for path in CONFIG_DIR.glob("*.py")} - {"__init__"}
    assert set(rconfig.recipes()) == files == set(RECIPES)
    assert all(summary.endswith(".") for summary in rconfig.recipes().values())


def test_a_recipe_name_resolves_to_the_packaged_file_and_a_path_stays_a_path(tmp_path,
                                                                             monkeypatch):
    assert pathlib.Path(rconfig.resolve_config_file("shapes")).samefile(CONFIG_DIR / "shapes.py")
    assert rconfig.resolve_config_file("shapes:arg").endswith("shapes.py:arg")
    # A stray shapes.py in the working directory does not take the recipe's name...
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shapes.py").write_text("raise SystemExit('hijacked')\n")
    assert pathlib.Path(rconfig.resolve_config_file("shapes")).samefile(CONFIG_DIR / "shapes.py")
    # ... it is taken only when given as a path.
    for path in ("./shapes.py", "shapes.py", str(tmp_path / "shapes.py")):
        assert rconfig.resolve_config_file(path) == path
    with pytest.raises(rconfig.ConfigError, match=r"no recipe named 'shapez'.*scratch_cpu"):
        rconfig.resolve_config_file("shapez")


@pytest.mark.parametrize("name", RECIPES)
def test_every_config_follows_the_schema(name):
    config = load(name)
    rconfig.validate(config)
    # A JSON round trip (what config.json holds) gives the same config back.
    again = rconfig.from_dict(json.loads(config.to_json()))
    assert rconfig.to_dict(again) == rconfig.to_dict(config)


def test_coco_config_is_the_papers_recipe():
    config = load("retinanet_r50_coco")
    assert config.model.backbone == "resnet50"
    assert (config.model.fpn_filters, config.model.head_convs, config.model.head_filters) == \
        (256, 4, 256)
    assert config.data.batch_size == 16
    assert config.train.epochs * config.train.steps_per_epoch == 90_000
    assert rconfig.image_size(config) == (800, 1333)
    optimizer = builders.build_optimizer(config, 90_000)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else None
    assert optimizer.__class__.__name__ == "SGD"
    assert optimizer._learning_rate.base_learning_rate == pytest.approx(0.01)
    assert optimizer._learning_rate.boundaries == [60_000, 80_000]
    del schedule


def test_unknown_field_names_it(tmp_path):
    with pytest.raises(rconfig.ConfigError, match=r"config\.train\.epochz"):
        rconfig.from_dict({"train": {"epochz": 3}})
    with pytest.raises(rconfig.ConfigError, match=r"config\.data\.batch_size"):
        rconfig.from_dict({"data": {"batch_size": "big"}})
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(rconfig.ConfigError, match="invalid JSON"):
        rconfig.load_json(str(path))


@pytest.mark.parametrize("field, value, message", [
    ("data.format", "pascal", "config.data.format: unknown format 'pascal'"),
    ("train.optimizer", "lion", "config.train.optimizer"),
    ("train.schedule", "poly", "config.train.schedule"),
    ("data.val_fraction", 1.5, "config.data.val_fraction"),
])
def test_validate_names_the_field(field, value, message):
    config = load("tiny")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(rconfig.ConfigError, match=message.replace(".", r"\.")):
        rconfig.validate(config)


def test_an_unknown_backbone_is_named_when_the_model_is_built():
    config = load("tiny")
    config.model.backbone = "resnet5"
    rconfig.validate(config)  # the schema knows no backbones: the model layer does
    with pytest.raises(rconfig.ConfigError,
                       match=r"config\.model\.backbone: unknown backbone 'resnet5'"):
        builders.build_model(config, num_classes=2)


def test_save_writes_a_loadable_config_py(tmp_path):
    config = load("tiny")
    config.train.epochs = 7
    rconfig.save(config, str(tmp_path))
    assert rconfig.load_json(str(tmp_path / "config.json")).train.epochs == 7
    spec = importlib.util.spec_from_file_location("saved", tmp_path / "config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert rconfig.to_dict(module.get_config()) == rconfig.to_dict(config)


def test_build_model_uses_the_configured_collaborators():
    import keras

    config = load("tiny")
    config.model.anchors.anchor_size = 3.0
    config.model.matching.positive_iou = 0.6
    config.model.postprocess.score_threshold = 0.2
    model = builders.build_model(config, num_classes=4)
    assert model.num_classes == 4
    assert model.anchor_generator.anchor_size == 3.0
    assert model.label_encoder.matcher.positive_iou == 0.6
    assert model.label_encoder.anchor_generator is model.anchor_generator
    assert model.postprocessor.score_threshold == 0.2
    norms = [layer for layer in _keras_compat.all_layers(model.backbone)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.9 for layer in norms)
    assert all(layer.trainable for layer in norms)  # frozen_batchnorm=False


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_learning_rate_schedules(schedule):
    config = load("tiny")
    config.train.schedule = schedule
    config.train.learning_rate = 0.01
    config.train.warmup_steps = 10
    config.train.warmup_factor = 0.1
    rate = builders.build_learning_rate(config, total_steps=100)
    assert float(rate(0)) == pytest.approx(0.001, rel=1e-4)
    assert float(rate(10)) == pytest.approx(0.01, rel=1e-3)
    final = float(rate(99))
    expected = {"constant": 0.01, "cosine": 0.0001, "step": 0.0001}[schedule]
    assert final == pytest.approx(expected, rel=0.05)


def test_shapes_datasets_and_pipelines():
    config = load("tiny")
    splits = datasets.load_datasets(config)
    assert len(splits["train"]) == 8 and len(splits["val"]) == 4
    images, targets = next(iter(datasets.train_pipeline(config, splits["train"])))
    assert images.shape == (4, 128, 128, 3)
    assert targets["boxes"].shape == (4, 4, 4)
    assert datasets.steps_per_epoch(config, 8) == 2
    config.train.steps_per_epoch = 0
    assert datasets.steps_per_epoch(config, 8) == 2  # 8 images // batch 4


def test_missing_paths_name_the_field(tmp_path):
    config = load("custom")
    config.data.train = str(tmp_path / "nowhere")
    with pytest.raises(rconfig.ConfigError, match=r"config\.data\.train: folder not found"):
        datasets.load_datasets(config)
    config.data.format = "coco"
    with pytest.raises(rconfig.ConfigError, match=r"config\.data\.train: file not found"):
        datasets.load_datasets(config)
    config.data.train = ""
    with pytest.raises(rconfig.ConfigError, match=r"config\.data\.train: no path given"):
        datasets.load_datasets(config)


def test_voc_folder_with_held_out_validation(raccoon_dir):
    config = load("custom")
    config.data.format = "voc"
    config.data.train = str(raccoon_dir)
    config.data.val_fraction = 0.1
    splits = datasets.load_datasets(config)
    train, val = splits["train"], splits["val"]
    assert len(val) == 20 and len(train) + len(val) == 200
    assert not {r.image_id for r in train.records} & {r.image_id for r in val.records}
    assert train.class_names == val.class_names == ["raccoon"]


def test_csv_train_and_val_share_class_ids(raccoon_dir):
    config = load("custom")
    config.data.format = "csv"
    config.data.train = str(raccoon_dir / "train_labels.csv")
    config.data.val = str(raccoon_dir / "test_labels.csv")
    config.data.train_images = config.data.val_images = str(raccoon_dir / "images")
    splits = datasets.load_datasets(config)
    assert splits["train"].class_names == splits["val"].class_names


def test_the_demo_finds_its_config_from_the_package():
    import subprocess
    import sys

    script = ("import os\nfrom retinanet.apps import demo\n"
              "print(os.path.isfile(demo.FLAGS['config'].config_filename))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd="/", timeout=600)
    assert result.stdout.strip() == "True", result.stderr[-2000:]


@pytest.mark.parametrize("size, max_level, expected", [
    (320, 7, "image_size 320 is padded to a 384 x 384 canvas (a multiple of 128"),
    (384, 7, ""),
    (320, 6, ""),  # a multiple of 64
    (0, 7, ""),  # min_side / max_side
])
def test_the_header_says_when_image_size_pays_for_padding(size, max_level, expected):
    from retinanet.training.reporting import padding_note

    config = load("scratch_cpu")
    config.data.image_size = size
    config.model.anchors.max_level = max_level
    note = padding_note(config)
    assert (expected in note) if expected else note == ""


def test_box_loss_choice_builds_the_loss_with_the_coders_weights():
    from retinanet.losses import IoULoss, SmoothL1Loss

    config = load("tiny")
    model = builders.build_model(config, num_classes=2)
    builders.compile_model(model, config, total_steps=10)
    assert isinstance(model.box_loss, SmoothL1Loss)
    config.train.box_loss = "ciou"
    builders.compile_model(model, config, total_steps=10)
    assert isinstance(model.box_loss, IoULoss) and model.box_loss.kind == "ciou"
    config.train.classification_loss = "quality_focal"
    config.model.matching.method = "atss"
    model = builders.build_model(config, num_classes=2)
    builders.compile_model(model, config, total_steps=10)
    assert type(model.classification_loss).__name__ == "QualityFocalLoss"
    assert type(model.label_encoder.matcher).__name__ == "ATSSMatcher"
    assert model.label_encoder.matcher.top_k == config.model.matching.atss_top_k
    config.model.matching.method = "topk"
    with pytest.raises(rconfig.ConfigError, match=r"config\.model\.matching\.method"):
        rconfig.validate(config)
    config.model.matching.method = "iou"
    config.train.box_loss = "iou2"
    with pytest.raises(rconfig.ConfigError, match=r"config\.train\.box_loss: unknown box_loss"):
        rconfig.validate(config)
