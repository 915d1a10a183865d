import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

RACCOON_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"


@pytest.fixture
def raccoon_dir():
    """The shared raccoon dataset. Tests that use it skip where it is absent, except where
    RETINANET_REQUIRE_RACCOON=1 (CI sets it), where they fail."""
    if not RACCOON_DIR.is_dir():
        message = f"raccoon dataset not found at {RACCOON_DIR}"
        if os.environ.get("RETINANET_REQUIRE_RACCOON") == "1":
            pytest.fail(message + " (RETINANET_REQUIRE_RACCOON=1)")
        pytest.skip(message)
    return RACCOON_DIR


def make_tiny_backbone():
    """A five-stage conv net from 0-255 images to strides 8, 16 and 32: fast on a CPU."""
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    features = []
    for stage, filters in enumerate([16, 32, 32, 64, 64]):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        if stage >= 2:
            features.append(x)
    return keras.Model(inputs, features, name="tiny_backbone")


def make_squares(num_images=8, size=128, max_objects=3, seed=0):
    """Coloured rectangles on dark noise: class = colour. Returns images, padded boxes, classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = rng.uniform(0, 60, (num_images, size, size, 3)).astype("float32")
    boxes = -np.ones((num_images, max_objects, 4), "float32")
    classes = -np.ones((num_images, max_objects), "int32")
    for i in range(num_images):
        for j in range(rng.integers(1, max_objects + 1)):
            w, h = rng.integers(20, 60, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            c = rng.integers(0, 3)
            images[i, y : y + h, x : x + w] = colours[c]
            boxes[i, j] = [x, y, x + w, y + h]
            classes[i, j] = c
    return images, boxes, classes


@pytest.fixture
def tiny_retinanet():
    """A small RetinaNet on the tiny backbone, three classes."""
    import retinanet

    def build(**kwargs):
        options = dict(fpn_filters=32, head_filters=32, head_convs=2)
        options.update(kwargs)
        return retinanet.RetinaNet(3, backbone=make_tiny_backbone(), **options)

    return build


def run_on_two_cpus(script):
    """Runs `script` in a fresh Python whose one CPU is split into two logical devices (they
    must be set before TensorFlow initialises, hence the subprocess), with this checkout on
    the path; returns the JSON the script printed last."""
    import json
    import subprocess
    import sys
    import textwrap

    prelude = textwrap.dedent("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    """)
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])

