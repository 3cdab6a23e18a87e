"""The path from a batch to an update: train state, sharded init, train and eval steps.

Everything here is pure JAX; the loop, logging and checkpoints live in train.py.
"""

import dataclasses
from typing import Any

import flax
import gin
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax

from t5x_lite import models, optimizers, partitioning
from t5x_lite.models import EncoderDecoderModel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32, number of updates applied
  params: Any
  opt_state: Any
  rng: jax.Array  # [2] uint32; the dropout key of step s is fold_in(rng, s)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the summed token losses of a batch become the training loss.

  loss_normalizing_factor: T5X's names, computed over the whole batch (across microbatches):
  'NUM_REAL_TARGET_TOKENS' (default; a mean over non-padding target tokens),
  'NUM_TOTAL_TARGET_TOKENS' (batch * target length, so padding dilutes the loss as in Mesh TF
  T5), or a number to divide the summed loss by (see models.loss_normalizer). The lower-case
  spellings of earlier versions are accepted.
  """

  z_loss: float = 1e-4
  loss_normalizing_factor: str | float = models.NUM_REAL_TARGET_TOKENS


class Trainer:
  """Builds the sharded state and the jitted train/eval steps for one model on one mesh."""

  def __init__(
    self,
    model: EncoderDecoderModel,
    mesh: Mesh,
    rules: tuple,
    feature_lengths: dict[str, int],
    num_microbatches: int = 1,
    loss_config: LossConfig | None = None,
  ):
    self.model = model
    self.mesh = mesh
    self.rules = rules
    self.input_length = feature_lengths["inputs"]
    self.target_length = feature_lengths["targets"]
    self.num_microbatches = num_microbatches
    self.loss_config = loss_config or LossConfig()

    self.abstract_params = model.abstract_params(self.input_length, self.target_length)
    self.param_logical_specs = model.param_logical_axes(self.input_length, self.target_length)
    self.optimizer = optimizers.make_optimizer(self.param_logical_specs)
    abstract_opt = jax.eval_shape(self.optimizer.init, self.abstract_params)
    opt_logical_specs = partitioning.optimizer_state_specs(
      abstract_opt, self.abstract_params, self.param_logical_specs
    )
    to_sharding = lambda specs: partitioning.logical_to_sharding(specs, mesh, rules)
    replicated = partitioning.replicated(mesh)
    self.state_shardings = TrainState(
      step=replicated,
      params=to_sharding(self.param_logical_specs),
      opt_state=to_sharding(opt_logical_specs),
      rng=replicated,
    )
    self.batch_sharding = partitioning.data_sharding(mesh)
    self.grad_shardings = to_sharding(partitioning.gradient_specs(self.param_logical_specs))

    self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._train_step = jax.jit(
      self._train_step_fn,
      in_shardings=(self.state_shardings, self.batch_sharding),
      out_shardings=(self.state_shardings, replicated),
      donate_argnums=(0,),
    )
    self._compiled_step = None  # compile_train_step's executable, once there is one
    self._eval_step = jax.jit(
      self._eval_step_fn,
      in_shardings=(self.state_shardings.params, self.batch_sharding),
      out_shardings=replicated,
    )

  # -- state -----------------------------------------------------------------------------------
  def abstract_state(self) -> TrainState:
    """Shapes and shardings of the state, without allocating it (used to restore checkpoints)."""
    shapes = jax.eval_shape(self._init_state, jax.ShapeDtypeStruct((2,), jnp.uint32))
    return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes,
      self.state_shardings,
    )

  def _init_state(self, rng: jax.Array) -> TrainState:
    init_rng, dropout_rng = jax.random.split(rng)
    params = self.model.init_params(init_rng, self.input_length, self.target_length)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=self.optimizer.init(params),
      rng=dropout_rng,
    )

  def init_state(self, seed: int) -> TrainState:
    """Initialises the state directly into its shardings: no host ever holds all of it."""
    with partitioning.activate(self.mesh, self.rules):
      return self._init(jax.random.PRNGKey(seed))

  # -- steps -------------------------------------------------------------------------------------
  def _loss_and_grads(self, params, batch, rng, normalizer):
    def loss_fn(p, mb, mb_rng):
      loss_sum, aux = self.model.loss_fn(
        p, mb, mb_rng, z_loss=self.loss_config.z_loss, loss_normalizing_factor=None
      )
      return loss_sum / normalizer, aux

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def grad_fn(p, mb, mb_rng):
      loss_aux, grads = value_and_grad(p, mb, mb_rng)
      return loss_aux, jax.lax.with_sharding_constraint(grads, self.grad_shardings)

    if self.num_microbatches == 1:
      (loss, aux), grads = grad_fn(params, batch, rng)
      return loss, aux, grads

    # Microbatches: the loss is normalised by the whole batch's factor, so summing the
    # microbatch gradients gives exactly the full-batch gradient.
    n = self.num_microbatches
    micro = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)

    def body(carry, inputs):
      mb, i = inputs
      (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

    zeros = jax.tree.map(
      jnp.zeros_like,
      jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), rng)),
    )
    zeros = (
      zeros[0][0],
      zeros[0][1],
      jax.lax.with_sharding_constraint(zeros[1], self.grad_shardings),
    )
    (loss, aux, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(n)))
    return loss, aux, grads

  def _train_step_fn(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(state.rng, state.step)
    normalizer = models.loss_normalizer(
      self.loss_config.loss_normalizing_factor, batch["decoder_loss_weights"]
    )
    loss, aux, grads = self._loss_and_grads(state.params, batch, rng, normalizer)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "loss": loss,
      "z_loss": aux["z_loss"] / normalizer,
      "accuracy": aux["correct"] / jnp.maximum(aux["weight_sum"], 1.0),
      "num_tokens": aux["weight_sum"],
      "grad_norm": optax.tree.norm(grads),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step_fn(self, params, batch: dict) -> dict:
    # Evaluation reports plain cross-entropy (no z-loss), comparable across runs and to ln(vocab).
    _, aux = self.model.loss_fn(params, batch, None, z_loss=0.0, loss_normalizing_factor=None)
    return {
      "loss_sum": aux["cross_ent_loss"],
      "num_correct": aux["correct"],
      "num_tokens": aux["weight_sum"],
    }

  # -- host-facing API ---------------------------------------------------------------------------
  def learning_rate(self, step: int) -> float:
    """The learning rate the optimizer applies at update `step` (0-based), from its own schedule."""
    return float(self.optimizer.learning_rate(step))

  def make_global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into one array sharded over `data`."""
    return {
      k: jax.make_array_from_process_local_data(self.batch_sharding, v)
      for k, v in local_batch.items()
    }

  def compile_train_step(self, state, batch: dict):
    """Compiles the train step for arguments like these (arrays or ShapeDtypeStructs with their
    shardings) ahead of its first call, which then only runs it; returns the executable.

    The train command compiles while a signal still ends start-up at once (shutdown.py), and
    memory_fit's own compile is the one the run uses."""
    with partitioning.activate(self.mesh, self.rules):
      self._compiled_step = self._train_step.lower(state, batch).compile()
    return self._compiled_step

  @property
  def has_compiled_step(self) -> bool:
    """Whether compile_train_step has made the executable the next step runs."""
    return self._compiled_step is not None

  def train_step(self, state: TrainState, batch: dict):
    """One update from this process's rows (numpy) or from a batch make_global_batch placed."""
    if not all(isinstance(v, jax.Array) for v in batch.values()):
      batch = self.make_global_batch(batch)
    if self._compiled_step is not None:
      return self._compiled_step(state, batch)
    with partitioning.activate(self.mesh, self.rules):
      return self._train_step(state, batch)

  def eval_step(self, state: TrainState, local_batch: dict[str, np.ndarray]) -> dict:
    with partitioning.activate(self.mesh, self.rules):
      return self._eval_step(state.params, self.make_global_batch(local_batch))
