import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_squares

from retinanet.training.callbacks import NonFiniteLossError, NonFiniteLossGuard


def _dataset(boxes_transform=None, num_images=4):
    images, boxes, classes = make_squares(num_images=num_images)
    if boxes_transform is not None:
        boxes = boxes_transform(boxes)
    return tf.data.Dataset.from_tensor_slices(
        (images, {"boxes": boxes, "classes": classes})
    ).batch(2)


def test_exploding_learning_rate_stops_with_step_and_cause(tiny_retinanet, tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_retinanet()
    model.compile(optimizer=keras.optimizers.SGD(1e3))
    checkpoint = str(tmp_path / "last.keras")
    # One good epoch first, so there is a checkpoint to keep intact.
    model.fit(_dataset(), epochs=1, verbose=0)
    model.save(checkpoint)
    saved = [w.numpy() for w in model.weights]
    # An infinite step makes weights inf or NaN on any CPU, so a NaN loss is certain.
    model.optimizer.learning_rate.assign(float("inf"))
    with pytest.raises(NonFiniteLossError, match=r"at step \d+.*learning rate"):
        model.fit(
            _dataset().repeat(20),
            epochs=1,
            verbose=0,
            callbacks=[NonFiniteLossGuard(), keras.callbacks.ModelCheckpoint(checkpoint)],
        )
    restored = keras.models.load_model(checkpoint)
    for before, after in zip(saved, restored.weights):
        np.testing.assert_array_equal(before, after.numpy())


def test_only_a_non_finite_box_loss_is_blamed_on_the_boxes(tiny_retinanet):
    model = tiny_retinanet()
    model.compile()
    guard = NonFiniteLossGuard()
    guard.set_model(model)
    with pytest.raises(NonFiniteLossError, match="at step 0 .*bad boxes"):
        guard.on_train_batch_end(0, {"loss": float("inf"), "box_loss": float("inf"), "cls_loss": 1.0})
    with pytest.raises(NonFiniteLossError, match="learning rate too high .*now 0.0001"):
        guard.on_train_batch_end(0, {"loss": float("nan"), "box_loss": 1.0, "cls_loss": float("nan")})
    guard.on_train_batch_end(0, {"loss": 1.0})  # finite: nothing happens
