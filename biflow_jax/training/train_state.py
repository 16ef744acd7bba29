"""The train state: what a checkpoint holds, and how a fresh one is laid out on the mesh."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from biflow_jax.objective.biflow import Models
from biflow_jax.runtime import parallel
from biflow_jax.training import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any      # {'forward': F's params, later 'reverse': G's}
  opt_state: Any
  ema: Any         # same tree as params
  rng: jax.Array   # base key; step keys are fold_in(rng, step), so resume is exact
  skips: jax.Array  # consecutive steps skipped for a non-finite loss or gradient


def init_state(config, models: Models, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state from config.seed: F's (and G's) initial params, optimiser state, EMA."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, reverse_rng, train_rng = jax.random.split(rng, 3)
  flow = models.flow
  x = jnp.zeros((1,) + flow.image_shape, jnp.float32)
  y = jnp.zeros((1,), jnp.int32) if flow.num_classes else None
  params = {'forward': flow.init(init_rng, x, y)['params']}
  if models.generator is not None:
    z = jnp.zeros((1, flow.num_tokens, flow.token_dim), jnp.float32)
    params['reverse'] = models.generator.init(reverse_rng, z, y, jnp.zeros((1,)))['params']
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    ema=optim.init_ema(params), rng=train_rng, skips=jnp.int32(0))


def abstract_state(config, models: Models, tx: optax.GradientTransformation, mesh) -> TrainState:
  """The train state's shapes, dtypes and shardings on the mesh: what a fresh state is
  created as and what a checkpoint is restored onto (any mesh)."""
  abstract = jax.eval_shape(lambda: init_state(config, models, tx))
  return parallel.with_shardings(abstract, parallel.state_shardings(abstract, mesh, config.mesh))


def shardings_of(abstract: TrainState) -> Any:
  """The sharding tree of an abstract state (for jit's in/out shardings)."""
  return jax.tree.map(lambda a: a.sharding, abstract)
