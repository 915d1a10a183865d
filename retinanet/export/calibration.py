"""Calibration images for int8 export: what `representative_data` may be, and its checks.

Full-integer quantisation measures the range of every activation on a few images like the
ones the model will see; about 100 are enough (`DEFAULT_CALIBRATION_IMAGES`).
"""

import numpy as np
import tensorflow as tf

DEFAULT_CALIBRATION_IMAGES = 100


def _as_uint8(images):
    """uint8 `[N, H, W, 3]` from one image `[H, W, 3]` or a batch, rounding 0-255 floats."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        raise ValueError(
            "`representative_data` must give RGB images [H, W, 3] or batches [B, H, W, 3], "
            f"got an array of shape {images.shape}."
        )
    if images.dtype != np.uint8:
        images = np.clip(np.round(images.astype(np.float32)), 0, 255).astype(np.uint8)
    return images


def calibration_images(representative_data, limit=DEFAULT_CALIBRATION_IMAGES, name="int8"):
    """The first `limit` images of `representative_data`, each uint8 `[H, W, 3]`.

    Args:
        representative_data: an array of images `[N, H, W, 3]`, an iterable of images
            `[H, W, 3]` or batches `[B, H, W, 3]` (uint8, or float 0-255, which is rounded),
            or a `tf.data.Dataset` of such batches or of `(images, targets)` batches (the
            evaluation pipeline's).
        limit: at most this many images are taken.
        name: the quantisation mode, for the error message.

    Returns:
        A list of uint8 `[H, W, 3]` arrays (sizes may differ).

    Raises:
        ValueError: no `representative_data`, none of its images, or an element that is
            not an image or a batch of them.
    """
    if representative_data is None:
        raise ValueError(
            f"quantization={name!r} needs `representative_data` (calibration images, about "
            f"{DEFAULT_CALIBRATION_IMAGES} like the ones the model will see); got None."
        )
    if isinstance(representative_data, tf.data.Dataset):
        representative_data = representative_data.as_numpy_iterator()
    elif isinstance(representative_data, (np.ndarray, tf.Tensor)):
        representative_data = [np.asarray(representative_data)]
    images = []
    for element in representative_data:
        if isinstance(element, (tuple, list)):  # (images, targets) batches
            element = element[0]
        for image in _as_uint8(element):
            images.append(image)
            if len(images) >= limit:
                return images
    if not images:
        raise ValueError(f"quantization={name!r}: `representative_data` gave no images.")
    return images


def fit_to_size(image, height, width):
    """uint8 `[height, width, 3]`: `image` padded bottom/right with 0, as the pipeline pads,
    after shrinking it (aspect kept) if it does not fit."""
    scale = min(height / image.shape[0], width / image.shape[1])
    if scale < 1:
        size = (max(1, int(image.shape[0] * scale)), max(1, int(image.shape[1] * scale)))
        image = _as_uint8(tf.image.resize(image[None], size).numpy())[0]
    return np.pad(image, [[0, height - image.shape[0]], [0, width - image.shape[1]], [0, 0]])
