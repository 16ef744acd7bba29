"""The train step: BiFlow's loss, gradients, the phase's group update, EMA, non-finite skip.

`train_step` is pure; `jit_train_step` compiles it over the device mesh (the batch split
over every device, the state replicated or FSDP-sharded as runtime/parallel.py lays it out). The
phase is static, so each phase of the plan compiles once.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from biflow_jax.objective import biflow, phases
from biflow_jax.objective.biflow import Models
from biflow_jax.runtime import parallel
from biflow_jax.training import optim
from biflow_jax.training.train_state import TrainState


def train_step(state: TrainState, batch: dict, frozen_params=None, *, models: Models,
               tx: optax.GradientTransformation, config, plan, phase: phases.Phase
               ) -> tuple[TrainState, dict]:
  """One update of the phase's trainable groups by `biflow.loss_fn` -> (state, metrics).

  The step's key is fold_in(state.rng, state.step), so a resumed run draws the same
  noise. `frozen_params`: weights of models.frozen (VAE decoder, perceptual nets), never
  updated. A non-finite loss or gradient leaves params, optimiser state and EMA exactly
  as they were (the step counter and data still advance) and counts in state.skips.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  rows = reverse_rows(config, phase)
  if rows:
    # G alone trains on the first `rows` examples of the batch (schedule.reverse_batch_size).
    batch = jax.tree.map(lambda a: a[:rows], batch)
  teacher = None
  if phase.trains('reverse') and config.objective.get('reverse_teacher', 'params') == 'ema':
    teacher = state.ema['forward']
  loss_of = lambda params: biflow.loss_fn(params, batch, rng, phase=phase, models=models,
                                          config=config, frozen_params=frozen_params,
                                          teacher_forward=teacher)
  (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  lrs = optim.learning_rates(state.opt_state, config, plan)
  params, opt_state = optim.apply_gradients(tx, grads, state.opt_state, state.params,
                                            phase.trainable)
  ema = optim.update_ema(state.ema, params, config, phase.trainable,
                         steps=optim.group_steps(opt_state))
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  metrics = dict(loss=loss, skipped=1.0 - finite.astype(jnp.float32), **aux)
  for group, norm in optim.group_grad_norms(grads).items():
    if group in state.params:
      metrics[f'grad_norm/{group}'] = norm
      metrics[f'lr/{group}'] = lrs[group]
  new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                            opt_state=keep(opt_state, state.opt_state),
                            ema=keep(ema, state.ema),
                            skips=jnp.where(finite, 0, state.skips + 1).astype(jnp.int32))
  return new_state, metrics


def reverse_rows(config, phase: phases.Phase) -> int:
  """Rows of each batch a G-only phase trains on: schedule.reverse_batch_size when it is
  set and smaller than the batch, else 0 (the whole batch)."""
  rows = int(config.schedule.get('reverse_batch_size', 0) or 0)
  if phase.trainable != ('reverse',) or not 0 < rows < int(config.batch_size):
    return 0
  return rows


def jit_train_step(config, models: Models, tx: optax.GradientTransformation, plan, mesh,
                   state_shardings) -> Callable[..., tuple[TrainState, dict]]:
  """`train_step` jitted over the mesh: step(state, global batch, frozen_params, phase)
  -> (state, metrics). The state is donated; frozen params ({} when there are none) are
  replicated on every device; `phase` is static (positional: jit takes no keyword
  arguments with in_shardings). `.lower(...)` works on it as on any jitted function."""
  def step(state, batch, frozen_params, phase):
    return train_step(state, batch, frozen_params, models=models, tx=tx, config=config,
                      plan=plan, phase=phase)
  return jax.jit(step, in_shardings=(state_shardings, parallel.batch_sharding(mesh),
                                     parallel.replicated(mesh)),
                 out_shardings=(state_shardings, parallel.replicated(mesh)),
                 static_argnums=(3,), donate_argnums=(0,))
