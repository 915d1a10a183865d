"""SavedModel export, for TF Serving and `tf.saved_model.load`."""

import os

import tensorflow as tf

from retinanet.export import serving
from retinanet.preprocess import check_image_size


def _serving_functions(model, resize, bytes_signature):
    """{signature name: traced tf.function} for the SavedModel."""
    # shape=None: see `_checked_images` for why the rank is left open.
    serve_images = serving.traced(
        lambda images: serving.detections(model, serving.checked_images(images), resize),
        tf.TensorSpec(None, tf.uint8, name="images"),
    )
    functions = {serving.SERVING_SIGNATURE: serve_images}
    if not bytes_signature:
        return functions

    def one_image(encoded):
        # The images of a request may differ in size, so each runs on its own, through the
        # trace above.
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return {key: value[0] for key, value in serve_images(image[None]).items()}

    functions[serving.BYTES_SIGNATURE] = serving.traced(
        lambda image_bytes: tf.map_fn(
            one_image, serving.checked_bytes(image_bytes), fn_output_signature=serving.output_specs(model)
        ),
        tf.TensorSpec(None, tf.string, name="image_bytes"),
    )
    return functions


def export_saved_model(model, directory, resize=None, bytes_signature=True):
    """Writes a SavedModel for TF Serving and `tf.saved_model.load`.

    Signatures (see the module docstring for the outputs):

    - ``serving_default``: ``images`` uint8 ``[B, H, W, 3]``, any H and W, B >= 1.
    - ``serving_bytes`` (when ``bytes_signature``): ``image_bytes`` string ``[B]``, encoded
      JPEG/PNG/GIF/BMP, decoded to RGB inside; each image is run on its own.

    Bad input fails inside the graph with an InvalidArgumentError whose message names
    ``images`` (or ``image_bytes``) and the shape it got: wrong rank, not 3 channels, an empty
    batch or a zero-size image. A wrong dtype is rejected before the graph runs (TF Serving:
    "Expects arg[0] to be uint8 but float is provided").

    Args:
        model: a `retinanet.RetinaNet`.
        directory: where to write the SavedModel (created; existing files are overwritten).
        resize: None (images go in as they are), an int S (longer side to S) or
            ``(min_side, max_side)``, as `retinanet.data.pipeline`'s ``image_size``. Boxes
            are always in the input image's pixels.
        bytes_signature: also write the ``serving_bytes`` signature.

    Returns:
        ``directory`` as a string.

    Raises:
        ValueError: a bad ``model`` or ``resize``.
    """
    serving.check_model(model)
    resize = check_image_size(resize, "resize")
    serving.write_saved_model(model, directory, _serving_functions(model, resize, bytes_signature))
    return os.fspath(directory)
