"""`FusedAdam`: Keras's Adam with TensorFlow's fused `ResourceApplyAdam` kernel."""

import keras
import tensorflow as tf

__all__ = ["FusedAdam"]


def _resource_handle(variable):
    """The resource handle of `variable` (a Keras variable or a `tf.Variable`), or None.

    A Keras 3 TensorFlow-backend variable wraps a `tf.Variable` in `.value`; under
    `tf.distribute` that is a distributed variable whose `.handle` is the current
    device's component inside `strategy.extended.update` (where `update_step` runs) and
    may raise or be unusable elsewhere.
    """
    if isinstance(variable, keras.Variable):
        variable = variable.value
    try:
        handle = variable.handle
    except (AttributeError, ValueError, RuntimeError, NotImplementedError):
        return None
    if not isinstance(handle, tf.Tensor) or handle.dtype != tf.resource:
        return None
    return handle


@keras.saving.register_keras_serializable(package="retinanet")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose per-variable update is one fused TensorFlow kernel.

    Keras 3's Adam updates each variable with about ten separate element-wise ops (two
    casts, m and v updates, square, sqrt, add, multiply, divide, subtract), each a full
    pass over the variable's memory; on a CPU ResNet-50 RetinaNet training step that was
    about 9% of the step's op time. `tf.raw_ops.ResourceApplyAdam` does the same update
    in one pass per variable. Its formula is Keras's:

        alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t),   t = iterations + 1
        m += (g - m) * (1 - beta_1)
        v += (g^2 - v) * (1 - beta_2)
        var -= alpha * m / (sqrt(v) + epsilon)

    The one difference is rounding: the kernel forms `1 - beta_1` and `1 - beta_2` in
    float32 from float32 betas, where Keras rounds the float64 `1 - beta` to float32
    (for beta_2=0.999: 0.00100004673 against 0.001, so v and the step size differ by
    about 5e-5 and 2e-5 relative; a few 1e-7 in the weights after a few steps at
    lr=0.01). With betas whose `1 - beta` is exact in float32 (e.g. 0.5, 0.75) the
    results are bitwise Keras's.

    Constructor, variables (`momentum`/`velocity` slots, so `.keras` files and
    checkpoints are interchangeable with Keras's Adam) and `get_config` are Keras's
    Adam's. Only `update_step` changes, so weight decay, `clipnorm`/`clipvalue`/
    `global_clipnorm`, EMA, loss scaling and gradient accumulation, which Keras applies
    outside `update_step`, work unchanged.

    `update_step` falls back to Keras's own Adam update for a variable when:
    - `amsgrad=True` (the kernel has no AMSGrad variant);
    - the gradient is a `tf.IndexedSlices` (sparse; Keras's scatter updates are kept);
    - the variable is not float32 (the only dtype this has been checked for);
    - the variable, its momentum or its velocity has no resource handle (e.g. a
      distributed variable outside an update context; under `MirroredStrategy` the
      per-device handles are available inside the update, so the kernel is used).
    """

    def _fused_handles(self, gradient, variable):
        """(var, m, v) resource handles when the fused kernel applies, else None."""
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return None
        if tf.as_dtype(variable.dtype) != tf.float32:
            return None
        index = self._get_variable_index(variable)
        handles = (_resource_handle(variable), _resource_handle(self._momentums[index]),
                   _resource_handle(self._velocities[index]))
        if any(handle is None for handle in handles):
            return None
        return handles

    def update_step(self, gradient, variable, learning_rate):
        """One Adam step for `variable`: the fused kernel, or Keras's update (see class)."""
        handles = self._fused_handles(gradient, variable)
        if handles is None:
            return super().update_step(gradient, variable, learning_rate)
        var_handle, m_handle, v_handle = handles
        dtype = variable.dtype
        # As Keras's Adam.update_step: every scalar in the variable's dtype.
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1_power = tf.pow(tf.cast(self.beta_1, dtype), local_step)
        beta_2_power = tf.pow(tf.cast(self.beta_2, dtype), local_step)
        return tf.raw_ops.ResourceApplyAdam(
            var=var_handle, m=m_handle, v=v_handle,
            beta1_power=beta_1_power, beta2_power=beta_2_power, lr=lr,
            beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=gradient,
            use_locking=False, use_nesterov=False)
