"""One experiment set up from its config: `build_experiment(config, mesh=None, abstract=False)`.

Everything that runs a config's train step starts here: the training loop, the sample /
eval / bench modes, `tools/step_cost`, `tools/mesh_overhead` and the tests. So the
benchmark times, and step_cost lowers, exactly the program that training runs.

    exp = build_experiment(config)            # validate, plan, models, frozen nets, optimiser,
    state = exp.create_state()                # mesh, state layout, jitted sharded step
    state, metrics = exp.step(state, exp.global_batch(host_batch), exp.frozen_params,
                              phases.phase_at(exp.plan, step))
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from biflow_jax import config_lib
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.models.generator import ReverseModel
from biflow_jax.objective import frozen, phases
from biflow_jax.objective.biflow import Models
from biflow_jax.runtime import parallel
from biflow_jax.training import optim, step as step_lib, train_state
from biflow_jax.training.train_state import TrainState


def build_models(config: ml_collections.ConfigDict) -> Models:
  """F from config.model, and G from config.reverse when it is enabled (no frozen nets)."""
  flow = ForwardFlow.from_config(config.model)
  generator = ReverseModel.from_config(config.reverse, config.model) if config.reverse.enabled else None
  return Models(flow, generator)


def example_batch(config, batch_size: int | None = None) -> dict:
  """Zeros shaped like a host batch of this config's data source (benchmarks, lowering)."""
  n = config.batch_size if batch_size is None else batch_size
  m = config.model
  shape = (n, m.image_size, m.image_size, m.in_channels)
  batch = {'label': np.zeros((n,), np.int32)}
  if frozen.uses_latents(config):
    batch.update(latent_mean=np.zeros(shape, np.float32), latent_std=np.ones(shape, np.float32))
  else:
    batch['image'] = np.zeros(shape, np.uint8)
  return batch


class Experiment(NamedTuple):
  """A config's run, ready to step. With abstract=True the frozen params are
  ShapeDtypeStructs and nothing has been read from disk or put on a device."""
  config: ml_collections.ConfigDict
  plan: list[phases.Phase]
  models: Models                   # F, G (or None), frozen nets (or None)
  frozen_params: dict              # weights of models.frozen ({} when none), replicated
  tx: optax.GradientTransformation
  mesh: Mesh
  abstract_state: TrainState       # shapes, dtypes and shardings of the state on the mesh
  step: Callable[..., tuple[TrainState, dict]]  # step(state, batch, frozen_params, phase)

  @property
  def state_shardings(self) -> Any:
    return train_state.shardings_of(self.abstract_state)

  def init_state(self) -> TrainState:
    """A fresh state, unsharded (tests, small tools)."""
    return train_state.init_state(self.config, self.models, self.tx)

  def create_state(self) -> TrainState:
    """A fresh state laid out on the mesh (initialised in place, never gathered)."""
    return jax.jit(self.init_state, out_shardings=self.state_shardings)()

  def global_batch(self, local: dict) -> dict:
    """This process's rows of a batch (process_rows) -> the global batch on the mesh."""
    return parallel.global_batch(local, self.mesh, self.config.batch_size)

  def process_rows(self) -> slice:
    """The rows of each global batch that this process loads."""
    return parallel.process_rows(self.mesh, self.config.batch_size)


def build_experiment(config: ml_collections.ConfigDict, mesh: Mesh | None = None,
                     abstract: bool = False, with_perceptual: bool = True) -> Experiment:
  """Validates the config and builds the plan, models, frozen nets, optimiser, mesh, state
  layout and the jitted, sharded train step.

  mesh: default `parallel.make_mesh(config.mesh)` over every device.
  abstract: frozen nets with ShapeDtypeStruct params (no weight files read): for
    lowering and FLOP counts of configs whose weights this machine does not have.
  with_perceptual: False loads only the VAE (sampling and evaluation need no loss nets).
  Raises ValueError for impossible config values and FileNotFoundError for missing
  weight files, all before anything compiles or is written.
  """
  config_lib.validate(config)
  plan = phases.build_phase_plan(config)
  models = build_models(config)
  if abstract:
    nets, frozen_params = frozen.abstract(config)
  else:
    nets, frozen_params = frozen.load(config, with_perceptual)  # missing weight files fail here
  models = models._replace(frozen=nets)
  tx = optim.make_optimizer(config, plan)
  mesh = parallel.make_mesh(config.mesh) if mesh is None else mesh
  parallel.check_batch_divisible(config.batch_size, mesh)
  if not abstract:
    frozen_params = jax.device_put(frozen_params, parallel.replicated(mesh))
  abstract_state = train_state.abstract_state(config, models, tx, mesh)
  step = step_lib.jit_train_step(config, models, tx, plan, mesh,
                                 train_state.shardings_of(abstract_state))
  return Experiment(config, plan, models, frozen_params, tx, mesh, abstract_state, step)
