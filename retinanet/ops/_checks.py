"""Argument checks shared by the box ops: each raises a ValueError naming the argument."""

import numpy as np
import tensorflow as tf


def to_tensor(value, name, dtype=None):
    try:
        tensor = tf.convert_to_tensor(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be convertible to a tensor, got {value!r}.") from error
    if dtype is not None:
        tensor = tf.cast(tensor, dtype)
    return tensor


def check_boxes(boxes, name, ranks=None):
    """Checks a `[..., 4]` box tensor's static rank and last dimension."""
    rank = boxes.shape.rank
    if rank is None:
        return
    if ranks is not None and rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"`{name}` must have rank {expected} ([N, 4] or [B, N, 4]), got shape {boxes.shape}."
        )
    if rank == 0:
        raise ValueError(f"`{name}` must have shape [..., 4], got a scalar.")
    last = boxes.shape[-1]
    if last is not None and last != 4:
        raise ValueError(f"`{name}` must have a last dimension of 4, got shape {boxes.shape}.")


def check_rank(tensor, name, rank, shape_text):
    if tensor.shape.rank is not None and tensor.shape.rank != rank:
        raise ValueError(f"`{name}` must have shape {shape_text}, got shape {tensor.shape}.")


def check_same_length(tensor, name, boxes):
    """Static check that `tensor` has one entry per box."""
    length, num_boxes = tensor.shape[0], boxes.shape[0]
    if length is not None and num_boxes is not None and length != num_boxes:
        raise ValueError(
            f"`{name}` must have one entry per box: got {length} for {num_boxes} boxes."
        )


def static_number(value, name):
    """The Python float of a scalar argument, or None when only known at run time."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        value = tf.get_static_value(value)
        if value is None:
            return None
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a scalar number, got {value!r}.") from error


def check_range(value, name, low, high=None, low_inclusive=True):
    number = static_number(value, name)
    if number is None:
        return
    above_low = number >= low if low_inclusive else number > low
    # Written as a negation so that NaN fails too.
    if not (above_low and (high is None or number <= high)):
        if high is not None:
            expected = f"in [{low}, {high}]"
        else:
            expected = f"{'>=' if low_inclusive else '>'} {low}"
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")


def is_scalar(value):
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value.shape.rank == 0
    return np.ndim(value) == 0


def check_max_output_size(max_output_size):
    """The size as a Python int when static (TF wants an integer), else an int32 tensor."""
    number = static_number(max_output_size, "max_output_size")
    if number is None:
        return tf.cast(max_output_size, tf.int32)
    if not (number >= 0 and number.is_integer()):
        raise ValueError(
            f"`max_output_size` must be a non-negative integer, got {max_output_size!r}."
        )
    return int(number)




def check_weights(weights):
    try:
        values = np.asarray(weights, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`weights` must be 4 positive numbers, got {weights!r}.") from error
    if values.shape != (4,) or not np.all(values > 0):
        raise ValueError(f"`weights` must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}.")
    return tf.constant(values)


def check_broadcastable(a, a_name, b, b_name):
    try:
        tf.broadcast_static_shape(a.shape, b.shape)
    except ValueError as error:
        raise ValueError(
            f"`{a_name}` {a.shape} and `{b_name}` {b.shape} must broadcast against each other."
        ) from error
