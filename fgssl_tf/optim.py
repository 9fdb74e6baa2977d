"""Gradient transforms that stay exact across replicas.

Inside a custom `train_step` each replica holds the gradient of its share of the
loss; the optimizer sums them over replicas afterwards. Keras applies
`global_clipnorm` before that sum (to each replica's part), which clips by the
wrong norm on several replicas, so clipping and coupled L2 are done here.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras.src.utils import tracking  # what Keras' own optimizers use to keep build() variables out of auto-tracking

from fgssl_tf.errors import FgsslError
from fgssl_tf.objectives import replica_info


def add_coupled_weight_decay(gradients, variables, weight_decay: float):
    """PyTorch-style `weight_decay` (L2 added to the gradient), split over replicas so the summed gradient
    gets it once."""
    if not weight_decay:
        return gradients
    _, replicas, _ = replica_info()
    return [g + (weight_decay / replicas) * v for g, v in zip(gradients, variables)]


def clip_by_global_norm_across_replicas(gradients, clip_norm: float):
    """Scale every replica's gradients by clip / max(clip, ||sum over replicas||), as
    `torch.nn.utils.clip_grad_norm_` does on one device. Returns (gradients, norm)."""
    context, replicas, _ = replica_info()
    total = gradients
    if replicas > 1:
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    norm = tf.linalg.global_norm(total)
    scale = clip_norm / tf.maximum(norm, clip_norm)
    return [g * scale for g in gradients], norm


def _fusable(variable, *options) -> bool:
    """Whether TensorFlow's fused kernel can update `variable`: a float32 TF variable and none of the options the
    kernels lack (AMSGrad, Nesterov, momentum 0)."""
    return keras.backend.backend() == "tensorflow" and variable.dtype == "float32" and not any(options)


@keras.saving.register_keras_serializable(package="fgssl_tf")
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, each variable updated by TensorFlow's one-kernel `ResourceApplyAdam` (as tf.keras 2
    did) instead of about 40 graph ops: the step traces and optimizes about 1.3 s faster (ResNet-18) and
    runs fewer ops. Same formula and variables (a checkpoint of `keras.optimizers.Adam` restores into it);
    the kernel rounds 1 - beta in float32, so weights differ from Keras' Adam at float rounding."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        step = tf.cast(self.iterations + 1, tf.float32)
        scalars = {  # once per step, not once per variable
            "beta1_power": tf.pow(tf.constant(self.beta_1, tf.float32), step),
            "beta2_power": tf.pow(tf.constant(self.beta_2, tf.float32), step),
            "lr": tf.cast(learning_rate, tf.float32),
            "beta1": tf.constant(self.beta_1, tf.float32),
            "beta2": tf.constant(self.beta_2, tf.float32),
            "epsilon": tf.constant(self.epsilon, tf.float32),
        }
        object.__setattr__(self, "_fused_scalars", scalars)  # graph tensors of this trace: not state to track
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        if not _fusable(variable, self.amsgrad):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            grad=tf.cast(gradient, tf.float32),
            **self._fused_scalars,
        )


@keras.saving.register_keras_serializable(package="fgssl_tf")
class FusedSGD(keras.optimizers.SGD):
    """Keras' SGD with momentum, each variable updated by TensorFlow's `ResourceApplyKerasMomentum`
    kernel: the same arithmetic in one op (weights equal Keras' SGD to the bit), a faster trace."""

    def update_step(self, gradient, variable, learning_rate):
        if not _fusable(variable, self.nesterov, not self.momentum):
            return super().update_step(gradient, variable, learning_rate)
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=self.momentums[self._get_variable_index(variable)].value.handle,
            lr=tf.cast(learning_rate, tf.float32),
            grad=tf.cast(gradient, tf.float32),
            momentum=tf.constant(self.momentum, tf.float32),
        )


@keras.saving.register_keras_serializable(package="fgssl_tf")
class NonFiniteGuard(keras.optimizers.LossScaleOptimizer):
    """An optimizer that applies a step only when every gradient is finite, and counts
    the steps it refused (`nonfinite_steps`), so a NaN or Inf never reaches the weights.

    Keras' LossScaleOptimizer already skips non-finite steps, also across replicas;
    this keeps its skip and drops its loss scaling (the scale stays 1, nothing is
    scaled or unscaled). The trainer reads the count to stop or go on (--nan_policy).
    """

    def __init__(self, inner_optimizer, name=None, **kwargs):
        kwargs.pop("initial_scale", None)  # always 1; a saved config (get_config) carries it
        super().__init__(inner_optimizer, initial_scale=1.0, name=name or f"guarded_{inner_optimizer.name}", **kwargs)

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        self.nonfinite_steps = self.add_variable(
            shape=(), dtype="int", initializer=keras.initializers.Zeros(), aggregation="none", name="nonfinite_steps"
        )
        super().build(var_list)

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:  # one replica's NaN stops every replica's step
            finite = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)) < 0.5
        return finite

    def _stateful_handle_finite_grads(self, grads, trainable_variables):
        self.inner_optimizer.apply(grads, trainable_variables=trainable_variables)

    def _stateful_handle_non_finite_grads(self):
        self.nonfinite_steps.assign_add(1)


def guard(optimizer) -> NonFiniteGuard:
    return NonFiniteGuard(optimizer)


def nonfinite_steps(model) -> int:
    """Steps refused so far by every guarded optimizer of `model` (the pretext's may have several)."""
    guards = {id(o): o for o in [model.optimizer, *vars(model).values()] if isinstance(o, NonFiniteGuard) and o.built}
    return sum(int(o.nonfinite_steps.numpy()) for o in guards.values())


@keras.saving.register_keras_serializable(package="fgssl_tf")
class FiniteMean(keras.metrics.Mean):
    """A running mean that leaves out non-finite values: a step the guard refused
    (its loss NaN or Inf) does not turn the epoch's logged loss into NaN."""

    def update_state(self, values, sample_weight=None):
        values = tf.convert_to_tensor(values, tf.float32)
        finite = tf.math.is_finite(values)
        weight = tf.cast(finite, tf.float32)
        if sample_weight is not None:
            weight *= tf.cast(sample_weight, tf.float32)
        return super().update_state(tf.where(finite, values, 0.0), sample_weight=weight)


LR_SCHEDULES = ("constant", "cosine")


@keras.saving.register_keras_serializable(package="fgssl_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak`, then cosine decay to `peak * final_fraction` at the last step
    (Goyal et al. 2017; Loshchilov & Hutter 2017), as SimCLR, BYOL and VICReg train.

    A function of the optimizer step alone, so a resumed run continues on the same curve. The
    run's length is known only once the data is loaded: the trainer calls `set_length` before
    the first step (it refuses to run before).
    """

    def __init__(
        self,
        peak: float,
        warmup_epochs: float = 0.0,
        final_fraction: float = 0.0,
        steps_per_epoch: int | None = None,
        epochs: int | None = None,
    ):
        self.peak, self.warmup_epochs, self.final_fraction = float(peak), float(warmup_epochs), float(final_fraction)
        self.steps_per_epoch, self.epochs = steps_per_epoch, epochs

    def set_length(self, steps_per_epoch: int, epochs: int) -> None:
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)

    def __call__(self, step):
        if not self.steps_per_epoch or not self.epochs:
            raise ValueError("WarmupCosine: call set_length(steps_per_epoch, epochs) before training")
        total = float(self.steps_per_epoch * self.epochs)
        warmup = min(self.warmup_epochs * self.steps_per_epoch, total)
        step = tf.cast(step, tf.float32) + 1.0  # the learning rate of the step about to be taken
        warm = self.peak * step / max(warmup, 1.0)
        progress = tf.clip_by_value((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
        floor = self.peak * self.final_fraction
        cosine = floor + (self.peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step <= warmup, warm, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_epochs": self.warmup_epochs,
            "final_fraction": self.final_fraction,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
        }


def learning_rate(train) -> float | WarmupCosine:
    """The learning rate a pretext's optimizer takes, from `train.lr_schedule`: the constant
    `train.learning_rate`, or a warm-up + cosine schedule peaking at it."""
    if train.lr_schedule == "constant":
        return train.learning_rate
    if train.lr_schedule == "cosine":
        return WarmupCosine(train.learning_rate, train.warmup_epochs)
    raise FgsslError(f"unknown --lr_schedule={train.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")


def schedules(model) -> list[WarmupCosine]:
    """The warm-up + cosine schedules of `model`'s optimizers."""
    found = []
    for optimizer in [model.optimizer, *vars(model).values()]:
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        schedule = getattr(inner, "_learning_rate", None)  # where a Keras optimizer keeps its schedule object
        if isinstance(schedule, WarmupCosine) and schedule not in found:
            found.append(schedule)
    return found


def check_schedule(model, train) -> None:
    """Refuse --lr_schedule=cosine for a pretext that keeps its own schedule (Jigsaw, SRGAN, PMG)."""
    if train.lr_schedule != "constant" and not schedules(model):
        raise FgsslError(
            f"--lr_schedule={train.lr_schedule} is not available for --pretext={train.pretext}, which follows "
            "the paper's own schedule; leave --lr_schedule=constant"
        )


def set_schedule_length(model, steps_per_epoch: int, epochs: int) -> None:
    """Give every schedule of `model`'s optimizers the run's length (a no-op for constant rates)."""
    for schedule in schedules(model):
        schedule.set_length(steps_per_epoch, epochs)
