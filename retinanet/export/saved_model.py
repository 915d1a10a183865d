"""SavedModel export, for TF Serving and `tf.saved_model.load`."""

import os

import tensorflow as tf

from retinanet.data.image_header import (DEFAULT_MAX_IMAGE_PIXELS, decode_image_within_limit,
                                         validate_max_image_pixels)
from retinanet.export import serving
from retinanet.preprocess import check_image_size


def _serving_functions(model, resize, bytes_signature, max_image_pixels, class_thresholds):
    """{signature name: traced tf.function} for the SavedModel."""
    # shape=None: see `serving.checked_images` for why the rank is left open.
    serve_images = serving.traced(
        lambda images: serving.detections(
            model, serving.checked_images(images, max_image_pixels), resize, class_thresholds),
        tf.TensorSpec(None, tf.uint8, name="images"),
    )
    functions = {serving.SERVING_SIGNATURE: serve_images}
    if not bytes_signature:
        return functions

    def one_image(encoded):
        # The images of a request may differ in size, so each runs on its own, through the
        # trace above.
        # The header's size is checked before decoding: a small file can claim a huge image.
        image = decode_image_within_limit(encoded, max_image_pixels)
        return {key: value[0] for key, value in serve_images(image[None]).items()}

    functions[serving.BYTES_SIGNATURE] = serving.traced(
        lambda image_bytes: tf.map_fn(
            one_image, serving.checked_bytes(image_bytes),
            fn_output_signature=serving.output_specs(model)),
        tf.TensorSpec(None, tf.string, name="image_bytes"),
    )
    return functions


def export_saved_model(model, directory, resize=None, bytes_signature=True,
                       max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, class_score_thresholds=None):
    """Writes a SavedModel for TF Serving and `tf.saved_model.load`.

    Signatures (see the module docstring for the outputs):

    - `serving_default`: `images` uint8 `[B, H, W, 3]`, any H and W, B >= 1.
    - `serving_bytes` (when `bytes_signature`): `image_bytes` string `[B]`, encoded
      JPEG/PNG/GIF/BMP, decoded to RGB inside; each image is run on its own.

    Bad input fails inside the graph with an InvalidArgumentError whose message names
    `images` (or `image_bytes`) and the shape it got: wrong rank, not 3 channels, an empty
    batch, a zero-size image, or an image of more than `max_image_pixels` pixels (for
    `serving_bytes` read from the header, before decoding). A wrong dtype is rejected before
    the graph runs (TF Serving: "Expects arg[0] to be uint8 but float is provided"). With
    `resize` the uint8 images are resized before any float copy is made; without it the
    model works on a float32 copy of the whole batch (12 bytes a pixel).

    Args:
        model: a `retinanet.RetinaNet`.
        directory: where to write the SavedModel (created; existing files are overwritten).
        resize: None (images go in as they are), an int S (longer side to S) or
            `(min_side, max_side)`, the resize rule of `retinanet.preprocess`. Boxes
            are always in the input image's pixels.
        bytes_signature: also write the `serving_bytes` signature.
        max_image_pixels: the largest height x width either signature accepts (default
            100 megapixels); None for no limit.
        class_score_thresholds: optional K floats, a score threshold per class baked into
            the model (e.g. each class's best-F1 threshold from the error analysis).

    Returns:
        `directory` as a string.

    Raises:
        ValueError: a bad `model`, `resize` or `max_image_pixels`.
    """
    serving.check_model(model)
    resize = check_image_size(resize, "resize")
    max_image_pixels = validate_max_image_pixels(max_image_pixels)
    class_score_thresholds = serving.check_class_thresholds(model, class_score_thresholds)
    serving.write_saved_model(model, directory, _serving_functions(
        model, resize, bytes_signature, max_image_pixels, class_score_thresholds))
    return os.fspath(directory)
