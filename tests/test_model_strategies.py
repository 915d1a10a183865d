"""The model under distribution strategies, mixed precision and XLA, all on the CPU."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_squares

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _dataset(num_images=4, batch_size=2):
    images, boxes, classes = make_squares(num_images=num_images)
    return tf.data.Dataset.from_tensor_slices(
        (images, {"boxes": boxes, "classes": classes})
    ).batch(batch_size)


@pytest.fixture
def mixed_precision():
    def use(policy):
        keras.mixed_precision.set_global_policy(policy)

    yield use
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_decodes_in_float32(tiny_retinanet, mixed_precision, policy):
    mixed_precision(policy)
    model = tiny_retinanet()
    assert model.fpn.compute_dtype == policy.split("_")[1]
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(_dataset(), epochs=2, verbose=0)
    assert all(np.isfinite(v) for values in history.history.values() for v in values)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
    outputs = model(make_squares(num_images=1)[0])
    assert outputs["cls_logits"].dtype == tf.float32
    model.postprocessor.score_threshold = 0.0
    detections = model.predict(make_squares(num_images=2)[0], verbose=0)
    assert detections["boxes"].dtype == np.float32 and detections["scores"].dtype == np.float32
    assert np.isfinite(detections["boxes"]).all() and np.all(detections["num_detections"] > 0)


@pytest.mark.slow
def test_jit_compile_on_cpu(tiny_retinanet):
    keras.utils.set_random_seed(0)
    model = tiny_retinanet()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    assert model.jit_compile
    history = model.fit(_dataset(), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # Prediction runs NMS, which has no XLA kernel; it still works with jit_compile on.
    detections = model.predict(make_squares(num_images=2)[0], verbose=0)
    assert detections["boxes"].shape == (2, 100, 4)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests_dir!r})
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from conftest import make_squares, make_tiny_backbone
    import retinanet

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    images, boxes, classes = make_squares(num_images=4)
    dataset = tf.data.Dataset.from_tensor_slices(
        (images, {{"boxes": boxes, "classes": classes}})).batch(4)

    def build():
        keras.utils.set_random_seed(0)
        model = retinanet.RetinaNet(3, backbone=make_tiny_backbone(), fpn_filters=32,
                                    head_filters=32, head_convs=2)
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        return model

    with strategy.scope():
        mirrored = build()
    single = build()
    np.testing.assert_array_equal(mirrored.weights[0].numpy(), single.weights[0].numpy())
    mirrored_loss = mirrored.fit(dataset, epochs=1, verbose=0).history["loss"][0]
    single_loss = single.fit(dataset, epochs=1, verbose=0).history["loss"][0]
    # Two replicas of 2 images and one of 4 images take the same SGD step, give or take
    # the per-replica normalisation of the losses by positive anchors.
    for a, b in zip(mirrored.trainable_weights, single.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-3)
    assert np.isfinite(mirrored_loss) and abs(mirrored_loss - single_loss) < 0.25 * single_loss
    detections = mirrored.predict(images, verbose=0)
    assert detections["boxes"].shape == (4, 100, 4)
    print("MIRRORED_OK", mirrored_loss, single_loss)
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus():
    script = MIRRORED_SCRIPT.format(tests_dir=TESTS_DIR)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert "MIRRORED_OK" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
