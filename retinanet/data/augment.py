"""Photometric augmentation of training images (geometry stays in `pipeline`)."""

import tensorflow as tf


def jitter_colors(image, strength, seed):
    """Random brightness, contrast, saturation and hue (in that order) of a photo.

    Args:
        image: float32 [H, W, 3], RGB 0-255.
        strength: s in [0, 1]: brightness shifts by up to 0.125 s of the range, contrast and
            saturation are scaled by factors in [1 - 0.4 s, 1 + 0.4 s], hue turns by up to
            0.05 s of the circle.
        seed: int64 [2], a stateless seed.

    Returns:
        float32 [H, W, 3], 0-255, same size.
    """
    if not strength:
        return image
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    image = image / 255.0
    image = tf.image.stateless_random_brightness(image, 0.125 * strength, seeds[0])
    low, high = 1.0 - 0.4 * strength, 1.0 + 0.4 * strength
    image = tf.image.stateless_random_contrast(image, low, high, seeds[1])
    image = tf.image.stateless_random_saturation(image, low, high, seeds[2])
    image = tf.image.stateless_random_hue(image, 0.05 * strength, seeds[3])
    return tf.clip_by_value(image, 0.0, 1.0) * 255.0
