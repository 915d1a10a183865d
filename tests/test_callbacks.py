import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_squares

from retinanet.training.callbacks import (NonFiniteLossError, NonFiniteLossGuard,
                                          SwapMovingAverage)


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


class _WeightsAtEpochEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(self.model.get_weights())


class _WeightsAfterEachStep(_WeightsAtEpochEnd):
    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(self.model.get_weights())

    def on_epoch_end(self, epoch, logs=None):
        pass


def test_swap_moving_average_shows_the_average_between_the_swaps_and_ends_with_it():
    keras.utils.set_random_seed(0)
    momentum = 0.5
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=momentum), loss="mse")
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    y = np.random.default_rng(1).normal(size=(12, 2)).astype("float32")
    steps, between, after = _WeightsAfterEachStep(), _WeightsAtEpochEnd(), _WeightsAtEpochEnd()
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
              callbacks=[steps, SwapMovingAverage(), between, SwapMovingAverage(), after])

    # Keras' average: a_1 = w_1, then a_t = m a_(t-1) + (1 - m) w_t, after each step t.
    averages, average = [], None
    for weights in steps.seen:
        average = weights if average is None else [
            momentum * a + (1 - momentum) * w for a, w in zip(average, weights)]
        averages.append(average)
    for epoch in range(2):
        last_step = 3 * epoch + 2  # 3 steps per epoch
        for seen, expected in zip(between.seen[epoch], averages[last_step]):
            np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-6)
        for seen, trained in zip(after.seen[epoch], steps.seen[last_step]):
            np.testing.assert_allclose(seen, trained, rtol=1e-6)
    assert not np.allclose(averages[-1][0], steps.seen[-1][0])  # the two differ
    for final, expected in zip(model.get_weights(), averages[-1]):
        np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-6)


def _fit_with_backup(backup_dir, epochs, seed=0):
    import numpy as np

    from retinanet.training.callbacks import ResumableBackup

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    history = model.fit(x, y, epochs=epochs, verbose=0,
                        callbacks=[ResumableBackup(str(backup_dir))])
    return model, history


def test_a_truncated_newest_backup_is_named_and_resume_starts_after_the_one_loaded(tmp_path):
    from retinanet.atomic import read_json
    from retinanet.training.callbacks import ResumableBackup

    _fit_with_backup(tmp_path, epochs=3)
    metadata = read_json(str(tmp_path / ResumableBackup.METADATA))
    assert (metadata["epoch"], metadata["previous_epoch"]) == (3, 2)
    assert ResumableBackup.restorable(str(tmp_path)) == (3, metadata["weights"], [])
    newest = tmp_path / metadata["weights"]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    epoch, name, skipped = ResumableBackup.restorable(str(tmp_path))
    assert (epoch, name) == (2, metadata["previous_weights"])
    (problem,) = skipped
    assert problem.startswith(f"{newest} (epoch 3): ")
    # fit resumes after the epoch it loaded: epochs 3 and 4 of 4 run.
    _, history = _fit_with_backup(tmp_path, epochs=4)
    assert history.epoch == [2, 3]


def test_no_readable_backup_is_an_error_naming_the_files(tmp_path):
    from retinanet.training.callbacks import ResumableBackup

    _fit_with_backup(tmp_path, epochs=2)
    for path in tmp_path.glob("*.weights.h5"):
        path.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"no backup loads .*epoch 2.*epoch 1.*delete the folder"):
        ResumableBackup.restorable(str(tmp_path))
