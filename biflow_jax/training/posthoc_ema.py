"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2, section 3 and appendix C): choose how far back the sampled
weights average *after* training, per sampling cell, at no training cost.

During training a group with ``config.optim.<group>.posthoc_sigma_rels`` set (e.g.
``(0.05, 0.10)``) keeps one power-function EMA per value beside its params,

    ema_n = beta_n * ema_{n-1} + (1 - beta_n) * params_n,  beta_n = (1 - 1/n) ** (gamma + 1),

with n the group's own update count (1 at its first step) and gamma from sigma_rel
(`sigma_rel_to_gamma`). Update k's params then weigh about k**gamma: the average's
"profile" over the updates 0..n is p(tau) = (gamma + 1) tau**gamma / n**(gamma + 1), whose
standard deviation relative to n is sigma_rel. The tracked EMAs are written to
``WORKDIR/posthoc_ema/<group>/<step>.npz`` every ``posthoc_every`` global steps and at
every checkpoint, whenever the group has trained since its last snapshot (so a resumed run
continues them exactly; the train state itself is unchanged).

Afterwards `reconstruct` finds, by least squares over profiles (EDM2 appendix C.2), the
combination of stored EMAs whose profile is closest to a power profile of any other
sigma_rel at a stored step, and returns those weights. The projection is exact for the
profiles (up to the fit error it reports); the weights themselves are a linear
combination of the stored ones, so an average of what training produced, nothing more.

Our own EMA (``ema_warmup`` c, ``optim.update_ema``) is this family with gamma = c - 2
until ``ema_decay`` binds (c = 10 is sigma_rel 0.09).

Errors: ValueError for a sigma_rel outside (0, 0.28], and for a stored snapshot that does
not match the run; FileNotFoundError when a run has no snapshots (naming the config field
that makes them).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from biflow_jax import config_lib
from biflow_jax.runtime import parallel
from biflow_jax.training import checkpoints, optim

DIRECTORY = 'posthoc_ema'


# --------------------------------------------------------------------------
# The maths (pure; numpy float64)
# --------------------------------------------------------------------------

def gamma_to_sigma_rel(gamma: float) -> float:
  """The relative standard deviation of the power profile p(tau) ~ tau**gamma on [0, 1]:
  sqrt((gamma + 1) / ((gamma + 2)**2 (gamma + 3))) (EDM2 eq. 3)."""
  gamma = float(gamma)
  return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """The exponent gamma of the power EMA whose profile has relative width `sigma_rel`.

  Solves sigma_rel**2 (gamma + 2)**2 (gamma + 3) = gamma + 1, a cubic, for its largest real
  root. Raises ValueError outside (0, 0.28] (`config_lib.check_posthoc_sigma_rel`: between
  0.2887, gamma 0, and about 0.2976 gamma would be negative; not needed, not allowed).
  """
  config_lib.check_posthoc_sigma_rel(sigma_rel, 'sigma_rel=')
  s2 = float(sigma_rel) ** 2
  # Expanded: s2 g^3 + 7 s2 g^2 + (16 s2 - 1) g + (12 s2 - 1) = 0.
  roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
  real = roots[np.abs(roots.imag) < 1e-9].real
  return float(real.max())


def power_ema_decay(n, gamma: float):
  """beta_n = (1 - 1/n)**(gamma + 1) for the group's update count n >= 1 (0 at n = 1,
  so the first update copies the params). Works on numpy and jax arrays."""
  return (1.0 - 1.0 / n) ** (gamma + 1.0)


def profile_dot(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
  """The L2 inner product of two power profiles p(tau) = (g + 1) tau**g / t**(g + 1) on
  [0, t] (EDM2 appendix C.2): their overlap is [0, min(t_a, t_b)]."""
  t_ratio = min(t_a, t_b)
  num = (gamma_a + 1) * (gamma_b + 1) * t_ratio ** (gamma_a + gamma_b + 1)
  return float(num / ((gamma_a + gamma_b + 1) * t_a ** (gamma_a + 1) * t_b ** (gamma_b + 1)))


def solve_weights(ts: Sequence[float], gammas: Sequence[float], target_t: float,
                  target_gamma: float) -> tuple[np.ndarray, float]:
  """(x, relative_error): the least-squares combination sum_i x_i p_i of the stored
  profiles (t_i, gamma_i) closest to the target profile, and ||sum x_i p_i - p|| / ||p||.

  Solved in float64 with a pseudo-inverse (stored profiles can be nearly collinear).
  """
  if not len(ts) or len(ts) != len(gammas):
    raise ValueError(f'need as many snapshot times as exponents, at least one (got {len(ts)} '
                     f'and {len(gammas)})')
  k = len(ts)
  gram = np.array([[profile_dot(ts[i], gammas[i], ts[j], gammas[j]) for j in range(k)]
                   for i in range(k)], np.float64)
  rhs = np.array([profile_dot(ts[i], gammas[i], target_t, target_gamma) for i in range(k)],
                 np.float64)
  # Scale to unit diagonal: the profiles' norms differ by orders of magnitude.
  scale = 1.0 / np.sqrt(np.diag(gram))
  y = np.linalg.lstsq(gram * np.outer(scale, scale), rhs * scale, rcond=1e-12)[0]
  x = y * scale
  target_sq = profile_dot(target_t, target_gamma, target_t, target_gamma)
  err_sq = max(float(x @ gram @ x - 2 * x @ rhs + target_sq), 0.0)
  return x, float(np.sqrt(err_sq / target_sq))


# --------------------------------------------------------------------------
# Tracking during training
# --------------------------------------------------------------------------

def tracked_groups(config) -> dict[str, tuple[float, ...]]:
  """{group: its sigma_rels} for the optimiser groups with post-hoc EMA tracking on."""
  out = {}
  for group, g in config.optim.items():
    rels = tuple(float(s) for s in (g.get('posthoc_sigma_rels', ()) or ()))
    if rels:
      out[group] = rels
  return out


def _like(flat: Mapping[str, np.ndarray], template: Any) -> Any:
  """`flat`'s arrays in `template`'s structure, placed as its leaves are (float32)."""
  def one(key_path, leaf):
    value = np.asarray(flat[checkpoints.leaf_name(key_path)], np.float32)
    sharding = getattr(leaf, 'sharding', None)
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)
  return jax.tree_util.tree_map_with_path(one, template)


def _update(tracked: dict, params: dict, counts: dict, gammas: dict) -> dict:
  out = {}
  for group, entry in tracked.items():
    n = counts[group].astype(jnp.float32)
    advanced = counts[group] > entry['n']  # a skipped step does not advance the count
    emas = []
    for ema, gamma in zip(entry['emas'], gammas[group]):
      beta = power_ema_decay(jnp.maximum(n, 1.0), gamma)
      emas.append(jax.tree.map(
          lambda e, p, b=beta: jnp.where(advanced, b * e + (1 - b) * p.astype(jnp.float32), e),
          ema, params[group]))
    out[group] = {'n': jnp.maximum(counts[group], entry['n']), 'emas': emas}
  return out


@dataclasses.dataclass
class Tracker:
  """The post-hoc EMAs of a run being trained, their snapshots, and their resumption.

  `start(state, step)` after the state is created or restored; `update(state,
  phase.trainable)` after every step (jitted, no host sync); `maybe_save(step,
  checkpointing)` writes a snapshot when `step` is a multiple of posthoc_every or a
  checkpoint is being written at it.
  """
  workdir: epath.Path
  groups: dict[str, tuple[float, ...]]
  every: dict[str, int]
  tracked: dict | None = None
  last_saved: dict | None = None  # per group, the update count of its newest snapshot

  @classmethod
  def from_config(cls, config, workdir: epath.PathLike) -> 'Tracker | None':
    groups = tracked_groups(config)
    if not groups:
      return None
    every = {g: int(config.optim[g].get('posthoc_every', 0) or 0) for g in groups}
    return cls(epath.Path(workdir), groups, every)

  @property
  def gammas(self) -> dict[str, tuple[float, ...]]:
    return {g: tuple(sigma_rel_to_gamma(s) for s in rels) for g, rels in self.groups.items()}

  def start(self, state, step: int) -> None:
    """Fresh EMAs (copies of the params) at a group's update 0, else the newest snapshot at
    or before the restored checkpoint `step`, which must hold the checkpoint's update count
    (a group that stopped training, like F in G's phase, is not written again).
    Raises FileNotFoundError when a trained group has none, ValueError for a snapshot of
    another run."""
    counts = jax.device_get(optim.group_steps(state.opt_state))
    tracked, self.last_saved = {}, {}
    for group, rels in self.groups.items():
      n = int(counts[group])
      self.last_saved[group] = n
      if n == 0:
        # Own buffers, one tree per width: the update donates them.
        emas = [jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), state.params[group])
                for _ in rels]
      else:
        found = [s for s in snapshot_steps(self.workdir, group) if s <= step]
        path = snapshot_path(self.workdir, group, found[-1] if found else step)
        snap = load_snapshot(path) if found else None
        if snap is None or snap['n'] != n:
          newest = f'{path.name}, at update {snap["n"]}' if snap else 'none'
          raise FileNotFoundError(
              f'no post-hoc EMA snapshot of {group!r} at update {n} in {path.parent} (the '
              f'newest at or before checkpoint {step}: {newest}): its EMAs '
              f'({rels}) are resumed from the snapshot written with the checkpoint. Turn '
              f'tracking off for this run (config.optim.{group}.posthoc_sigma_rels=()) or '
              'train in a fresh --workdir.')
        if tuple(snap['sigma_rels']) != rels:
          raise ValueError(f'{path} holds sigma_rels {snap["sigma_rels"]}, but this run tracks '
                           f'{rels}: the snapshot belongs to another run or config')
        emas = [_like(snap['emas'][i], state.params[group]) for i in range(len(rels))]
      tracked[group] = {'n': jnp.int32(n), 'emas': emas}
    self.tracked = tracked
    gammas = self.gammas
    self._step_fn = jax.jit(lambda tr, params, counts: _update(tr, params, counts, gammas),
                            donate_argnums=0)
    logging.info('post-hoc EMA: %s', ', '.join(
        f'{g} sigma_rel {rels} (gamma {tuple(round(x, 2) for x in gammas[g])}), snapshots '
        f'every {self.every[g] or "checkpoint"} steps -> {self.workdir / DIRECTORY / g}'
        for g, rels in self.groups.items()))

  def update(self, state, trainable: Sequence[str] | None = None) -> None:
    """One update of the tracked EMAs of the groups in `trainable` (a phase's, static; None:
    every tracked group). A group that is not training keeps its EMAs as they are, without a
    pass over its params (the values are the same either way: its count does not advance)."""
    groups = [g for g in self.groups if trainable is None or g in trainable]
    if not groups:
      return
    counts = optim.group_steps(state.opt_state)
    stepped = self._step_fn({g: self.tracked[g] for g in groups},
                            {g: state.params[g] for g in groups}, {g: counts[g] for g in groups})
    self.tracked = {**self.tracked, **stepped}

  def maybe_save(self, step: int, checkpointing: bool) -> None:
    for group in self.groups:
      every = self.every[group]
      if checkpointing or (every and step % every == 0):
        self.save(group, step)

  def save(self, group: str, step: int) -> None:
    entry = self.tracked[group]
    n = int(entry['n'])
    if n == self.last_saved.get(group, 0):
      return  # nothing trained yet, or nothing since the last snapshot (which resumes)
    self.last_saved[group] = n
    emas = [{name: np.asarray(leaf)
             for name, leaf in checkpoints.named_leaves(parallel.local_copy(e)).items()}
            for e in entry['emas']]
    if parallel.is_main_process():
      write_snapshot(snapshot_path(self.workdir, group, step), n, self.groups[group], emas)


def snapshot_path(workdir: epath.PathLike, group: str, step: int) -> epath.Path:
  return epath.Path(workdir) / DIRECTORY / group / f'{step}.npz'


def write_snapshot(path: epath.Path, n: int, sigma_rels: Sequence[float],
                   emas: Sequence[Mapping[str, np.ndarray]]) -> None:
  """Atomically (a temporary file renamed into place): a crash never leaves half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f'ema{i}/{k}': v for i, ema in enumerate(emas) for k, v in ema.items()}
  meta = json.dumps({'n': int(n), 'sigma_rels': [float(s) for s in sigma_rels]})
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    np.savez(f, __meta__=np.frombuffer(meta.encode(), np.uint8), **arrays)
  os.replace(tmp, path)


def load_snapshot(path: epath.PathLike) -> dict:
  """{'n', 'sigma_rels', 'emas': [ {leaf path: array} per sigma_rel ]}; ValueError for a
  file that is not a snapshot (truncated, another format)."""
  try:
    with np.load(str(path)) as data:
      meta = json.loads(bytes(data['__meta__']).decode())
      rels = meta['sigma_rels']
      emas = [{} for _ in rels]
      for key in data.files:
        if key == '__meta__':
          continue
        i, leaf = key.split('/', 1)
        emas[int(i[3:])][leaf] = data[key]
  except Exception as e:  # pylint: disable=broad-except  (zip, JSON, key errors)
    raise ValueError(f'{path} is not a readable post-hoc EMA snapshot ({type(e).__name__}: '
                     f'{e}); delete it (the others still reconstruct) or retrain') from e
  return {'n': int(meta['n']), 'sigma_rels': tuple(rels), 'emas': emas}


# --------------------------------------------------------------------------
# Reconstruction after training
# --------------------------------------------------------------------------

def snapshot_steps(workdir: epath.PathLike, group: str) -> list[int]:
  directory = epath.Path(workdir) / DIRECTORY / group
  if not directory.is_dir():
    return []
  return sorted(int(p.name[:-4]) for p in directory.iterdir()
                if p.name.endswith('.npz') and p.name[:-4].isdigit())


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  params: dict            # the group's params tree (float32 numpy leaves)
  sigma_rel: float
  step: int               # global step the profile ends at
  updates: int            # the group's update count there (the profile's t)
  snapshots: int          # snapshot files used
  relative_error: float   # ||fitted profile - target|| / ||target||
  weights: tuple          # one per (snapshot, tracked EMA), in file order


def reconstruct(workdir: epath.PathLike, group: str, sigma_rel: float, step: int,
                template: Any) -> Reconstruction:
  """The group's EMA of width `sigma_rel` at global `step`, from the snapshots at or before
  it. The newest of them fixes the profile's end: it holds the group's state at `step`,
  since one is written with every checkpoint whenever the group trained since the last.

  `template`: a tree with the group's structure (e.g. state.params[group]); the result has
  its structure. Raises FileNotFoundError without snapshots, ValueError for a bad sigma_rel
  or unreadable or mismatched snapshots.
  """
  gamma = sigma_rel_to_gamma(sigma_rel)
  steps = [s for s in snapshot_steps(workdir, group) if s <= step]
  if not steps:
    raise FileNotFoundError(
        f'no post-hoc EMA snapshot of {group!r} at or before step {step} in '
        f'{epath.Path(workdir) / DIRECTORY / group}: train with '
        f'config.optim.{group}.posthoc_sigma_rels=(0.05, 0.10) (and posthoc_every) to make '
        'them')
  snaps = [load_snapshot(snapshot_path(workdir, group, s)) for s in steps]
  ts, gammas, sources = [], [], []
  for snap in snaps:
    for i, rel in enumerate(snap['sigma_rels']):
      ts.append(float(snap['n']))
      gammas.append(sigma_rel_to_gamma(rel))
      sources.append(snap['emas'][i])
  weights, error = solve_weights(ts, gammas, float(snaps[-1]['n']), gamma)
  names = list(checkpoints.named_leaves(template))
  for source in sources:
    if set(source) != set(names):
      missing = sorted(set(names) ^ set(source))[:3]
      raise ValueError(f'a snapshot in {epath.Path(workdir) / DIRECTORY / group} does not '
                       f'match this model (differs at {missing}): it was written by another '
                       'config')
  combined = {}
  for name in names:
    acc = np.zeros(np.shape(sources[0][name]), np.float64)
    for x, source in zip(weights, sources):
      acc += x * source[name].astype(np.float64)
    combined[name] = acc.astype(np.float32)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, _: combined[checkpoints.leaf_name(kp)], template)
  return Reconstruction(params, float(sigma_rel), int(step), int(snaps[-1]['n']), len(snaps),
                        error, tuple(float(x) for x in weights))
