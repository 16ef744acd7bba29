"""Optimizers and EMA for the two parameter groups of BiFlow.

A model's parameters are one tree ``{'forward': F params, 'reverse': G params}``.
The two groups train on different schedules (the paper trains F first, then G
with F frozen), so everything here is per group:

* The phase plan (``objective/phases.py``) says which groups train when and
  for how many steps (each group's schedule length).
* ``make_optimizer`` builds ONE ``optax.multi_transform`` with one AdamW (or
  Muon) chain per group (own clipping, own warmup-cosine schedule, own step count). The
  optimizer state has the same structure in every phase, so a checkpoint
  written in one phase restores in any other.
* ``apply_gradients`` updates only the trainable groups; frozen groups keep
  their parameters *and* their optimizer state (moments, counts) bit-identical,
  so freezing F while G trains causes no drift and G's schedule starts at its
  own step 0 when it first trains.
* ``init_ema`` / ``update_ema`` keep a per-group exponential moving average.

The module reads an ml_collections ``ConfigDict`` by attribute access only and
does not import ml_collections, so any object with the same attributes works.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import FrozenDict

from biflow_jax.objective.phases import GROUPS, Phase, group_train_steps

PyTree = Any

# --------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------

def _rebuild(like: Mapping[str, Any], items: Mapping[str, Any]) -> Mapping[str, Any]:
  """A mapping of the same container type as ``like`` (dict or FrozenDict).

  Keeping the container type keeps the pytree structure, which optax masks
  and jit caches compare exactly.
  """
  if isinstance(like, FrozenDict):
    return FrozenDict(items)
  return dict(items)


def _check_top_level(params: PyTree) -> None:
  if not isinstance(params, Mapping):
    raise TypeError(
        f'params must be a mapping with top-level keys {GROUPS}, got '
        f'{type(params).__name__}.')
  unknown = [k for k in params if k not in GROUPS]
  if unknown:
    raise ValueError(
        f'params has top-level key(s) {unknown!r} that are neither of the '
        f'parameter groups {GROUPS}; put F under "forward" and G under '
        f'"reverse".')


def param_labels(params: PyTree) -> PyTree:
  """Label every leaf with its group ('forward' or 'reverse') from its top-level key.

  Used as ``multi_transform``'s label function, so it must work on params,
  gradients and updates alike (any tree with the same top level).
  """
  _check_top_level(params)
  return _rebuild(params, {
      group: jax.tree.map(lambda _, g=group: g, sub) for group, sub in params.items()})


def _leaf_key(path) -> Any:
  """The last key of a leaf's path ('kernel', 'bias', ...): dict key or attribute name."""
  last = path[-1] if path else None
  return getattr(last, 'key', getattr(last, 'name', None))


def decay_mask(params: PyTree) -> PyTree:
  """True for leaves that get weight decay: those named 'kernel' with ndim >= 2.

  Rule: decay matrices only. Flax names the matrices of Dense / DenseGeneral /
  Conv 'kernel'; biases ('bias'), norm scales ('scale') and embeddings
  ('embedding', positional tables) are not decayed even when 2-D. A custom
  module that wants its matrix decayed must name it 'kernel'.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _leaf_key(path) == 'kernel' and jnp.ndim(leaf) >= 2, params)


# --------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------

def lr_schedule(group_config: Any, train_steps: int) -> Callable[[jax.Array], jax.Array]:
  """Warmup-cosine learning rate as a function of the group's own update count.

  ``count`` is the number of updates the group has already applied, so the
  k-th update (0-based) uses ``lr(k)``:
    * linear warmup: lr(0) = 0 rising to lr(w) = peak, w = warmup_steps;
    * cosine decay from peak at w to peak * min_lr_ratio at the group's last
      update, count = train_steps - 1; it stays there afterwards.
  Guard for short runs: w is capped at train_steps - 1 (a group that trains
  fewer steps than its warmup reaches peak at its last step and never decays);
  with train_steps == 1 the single update uses the peak rate. A group that
  never trains (train_steps == 0) reports lr 0, so logs do not show a rate
  that is never applied.
  """
  if int(train_steps) <= 0:
    return lambda count: jnp.zeros(jnp.shape(count), jnp.float32)
  peak = float(group_config.lr)
  end = peak * float(group_config.min_lr_ratio)
  last = max(int(train_steps) - 1, 0)
  warmup = min(max(int(group_config.warmup_steps), 0), last)
  decay_len = max(last - warmup, 1)

  def schedule(count: jax.Array) -> jax.Array:
    n = jnp.asarray(count, jnp.float32)
    rising = peak * n / max(warmup, 1)
    t = jnp.clip((n - warmup) / decay_len, 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    return jnp.where(n < warmup, rising, cosine).astype(jnp.float32)

  return schedule


def _group_config(config: Any, group: str) -> Any:
  return getattr(config.optim, group)


def muon_dimension_numbers(params: PyTree) -> PyTree:
  """Which leaves Muon orthogonalises: 2-D leaves named 'kernel' (x @ W, W (in, out)).

  Flax's Dense kernels are (in, out), so the reduction axis is 0 and the output axis 1.
  Every other leaf (biases, norm scales, embeddings, positional tables) is None, i.e.
  left to the AdamW half of the optimizer, as in Muon's and Moonlight's recipes.
  """
  def spec(path, leaf):
    if _leaf_key(path) == 'kernel' and jnp.ndim(leaf) == 2:
      return optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    return None

  return jax.tree_util.tree_map_with_path(spec, params)


# Muon's orthogonalised update has RMS about 1/sqrt(max(in, out)); scaled to RMS 0.2,
# the RMS of a typical AdamW update, the same lr and weight decay serve both halves
# (Liu et al. 2025, "Muon is Scalable for LLM Training", arXiv 2502.16982, section 2.2).
MUON_UPDATE_RMS = 0.2


def _muon(g: Any) -> optax.GradientTransformation:
  """optax.contrib.muon at unit learning rate (a descent direction, sign included).

  Newton-Schulz orthogonalised Nesterov momentum (beta ``muon_beta``) for 2-D kernels,
  scaled to MUON_UPDATE_RMS and decayed by ``weight_decay``; Adam (Nesterov's form, as
  optax.contrib.muon builds it) with b1, b2 and no decay for every other leaf.
  learning_rate=1.0 makes both halves end in a constant scale(-1), so the group's one
  ScaleByScheduleState (its step count) stays the schedule's that follows.
  """
  return optax.contrib.muon(
      learning_rate=1.0, beta=float(getattr(g, 'muon_beta', 0.95)), eps=float(g.eps),
      weight_decay=float(g.weight_decay), adam_b1=float(g.b1), adam_b2=float(g.b2),
      muon_weight_dimension_numbers=muon_dimension_numbers,
      consistent_rms=MUON_UPDATE_RMS)


def _group_transform(group_config: Any, train_steps: int) -> optax.GradientTransformation:
  """clip -> Adam -> decoupled weight decay (kernels only) -> -lr(count); or, with
  ``algorithm='muon'``, clip -> Muon (its decay included) -> lr(count).

  The AdamW links are exactly ``optax.adamw`` (decay is scaled by the current lr, as in
  optax/PyTorch AdamW); they are spelled out so that the group's step count lives in one
  known place, the ``ScaleByScheduleState``, which ``group_steps`` and
  ``learning_rates`` read. (Their layout is also what every AdamW checkpoint holds.)
  Raises ValueError for an unknown algorithm.
  """
  g = group_config
  clip = g.grad_clip
  clipping = (optax.clip_by_global_norm(float(clip)) if clip is not None and clip > 0
              else optax.identity())
  schedule = lr_schedule(g, train_steps)
  algorithm = getattr(g, 'algorithm', 'adamw')
  if algorithm == 'adamw':
    return optax.chain(
        clipping,
        optax.scale_by_adam(b1=float(g.b1), b2=float(g.b2), eps=float(g.eps)),
        optax.add_decayed_weights(float(g.weight_decay), mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
    )
  if algorithm == 'muon':
    return optax.chain(clipping, _muon(g), optax.scale_by_schedule(schedule))
  raise ValueError(f"config.optim.<group>.algorithm={algorithm!r} is not one of "
                   "('adamw', 'muon')")


def make_optimizer(config: Any, plan: Sequence[Phase]) -> optax.GradientTransformation:
  """One ``optax.multi_transform`` over the labels {'forward', 'reverse'}.

  Each group gets its own clipping (global norm over that group's gradients
  only), AdamW or Muon, and warmup-cosine schedule whose length is
  ``group_train_steps(plan, group)``. Reads ``config.optim.<group>.{algorithm,
  lr, warmup_steps, min_lr_ratio, weight_decay, b1, b2, eps, grad_clip,
  muon_beta}``; grad_clip None or <= 0 turns clipping off.

  State (AdamW): ``PartitionState(inner_states={'forward': MaskedState(inner_state=
  (clip, ScaleByAdamState, add_decayed_weights, ScaleByScheduleState)),
  'reverse': ...})`` -- the same in every phase. Use ``apply_gradients`` (not
  ``tx.update`` directly) so frozen groups do not advance.
  """
  transforms = {group: _group_transform(_group_config(config, group),
                                        group_train_steps(plan, group))
                for group in GROUPS}
  return optax.multi_transform(transforms, param_labels)


def _inner_states(opt_state: Any) -> Mapping[str, Any]:
  inner = getattr(opt_state, 'inner_states', None)
  if not isinstance(inner, Mapping) or set(inner) != set(GROUPS):
    raise TypeError(
        'opt_state is not the state of make_optimizer(...) (expected a '
        f'multi_transform state with inner states {GROUPS}), got '
        f'{type(opt_state).__name__}.')
  return inner


def group_steps(opt_state: Any) -> dict[str, jax.Array]:
  """Each group's own update count (int32): how many steps it has trained."""
  counts = {}
  for group, state in _inner_states(opt_state).items():
    found = [s for s in jax.tree.leaves(
        state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
             if isinstance(s, optax.ScaleByScheduleState)]
    if len(found) != 1:
      raise TypeError(f'could not find the step count of group {group!r} in opt_state.')
    counts[group] = found[0].count
  return {g: counts[g] for g in GROUPS}


def learning_rates(opt_state: Any, config: Any, plan: Sequence[Phase]) -> dict[str, jax.Array]:
  """The lr each group's NEXT update will use, from its own count in opt_state.

  Recomputes the schedule (a pure function of config and plan) at the stored
  count, so nothing extra has to be kept in the state. Works inside jit.
  """
  counts = group_steps(opt_state)
  return {g: lr_schedule(_group_config(config, g), group_train_steps(plan, g))(counts[g])
          for g in GROUPS}


def _check_trainable(trainable: Sequence[str], tree: Mapping[str, Any], what: str) -> tuple[str, ...]:
  trainable = tuple(trainable)
  unknown = [g for g in trainable if g not in GROUPS]
  if unknown:
    raise ValueError(f'trainable names unknown group(s) {unknown}; expected a subset of {GROUPS}.')
  missing = [g for g in trainable if g not in tree]
  if missing:
    raise ValueError(
        f'group(s) {missing} are trainable in this phase but absent from {what} '
        f'(keys: {list(tree)}); initialize that model, or use a plan/phase that '
        f'does not train it.')
  return trainable


def apply_gradients(tx: optax.GradientTransformation, grads: PyTree, opt_state: Any,
                    params: PyTree, trainable: Sequence[str]
                    ) -> tuple[PyTree, Any]:
  """One optimizer step that moves only the ``trainable`` groups.

  Groups not in ``trainable`` keep their params and their whole inner
  optimizer state (moments, step count) bit-identical: the new values are the
  old arrays passed through, not a zero update, so nothing drifts (no weight
  decay, no moment decay, no schedule advance). ``trainable`` must be static
  (a Python tuple, e.g. ``phase.trainable``) -- the selection is made at trace
  time, so a jitted step compiles once per phase, and XLA drops the unused
  update of frozen groups. ``grads`` must have the structure of ``params``
  (zeros are fine for frozen groups). A group absent from params (no 'reverse'
  yet) is fine as long as it is not trainable.
  """
  _check_top_level(params)
  trainable = _check_trainable(trainable, params, 'params')
  old_inner = _inner_states(opt_state)
  updates, stepped = tx.update(grads, opt_state, params)
  new_params = _rebuild(params, {
      g: optax.apply_updates(sub, updates[g]) if g in trainable else sub
      for g, sub in params.items()})
  new_inner = _inner_states(stepped)
  merged = {g: new_inner[g] if g in trainable else old_inner[g] for g in new_inner}
  return new_params, stepped._replace(inner_states=merged)


# --------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------

def init_ema(params: PyTree) -> PyTree:
  """The EMA starts as a copy of the params (its own buffers, safe to donate)."""
  return jax.tree.map(lambda x: jnp.array(x, copy=True), params)


def update_ema(ema: PyTree, params: PyTree, config: Any, trainable: Sequence[str],
               steps: Mapping[str, jax.Array] | None = None) -> PyTree:
  """Move the EMA of each trainable group toward its params; frozen groups are untouched.

  ema <- d * ema + (1 - d) * params with d = ``config.optim.<group>.ema_decay``.
  Warm-up (optional): pass ``steps=group_steps(new_opt_state)`` (each group's
  update count after this step) and the decay becomes
  ``min(ema_decay, (1 + n) / (c + n))`` with c = ``ema_warmup`` (10 by default), so the
  EMA forgets the random init quickly -- this matters for short runs and for G, whose
  EMA starts when G first trains, not at global step 0. Until ema_decay binds, this is
  EDM2's power-function EMA (Karras et al. 2024) with gamma = c - 2: update k's params
  weigh about k**gamma. Without ``steps`` the decay is constant.
  Call it with the same static ``trainable`` as ``apply_gradients``.
  """
  _check_top_level(ema)
  trainable = _check_trainable(trainable, ema, 'ema')
  _check_trainable(trainable, params, 'params')
  out = {}
  for group, sub in ema.items():
    if group not in trainable:
      out[group] = sub
      continue
    group_config = _group_config(config, group)
    decay = jnp.asarray(float(group_config.ema_decay), jnp.float32)
    if steps is not None:
      n = jnp.asarray(steps[group], jnp.float32)
      warmup = float(group_config.get('ema_warmup', 10.0))
      decay = jnp.minimum(decay, (1.0 + n) / (warmup + n))
    out[group] = jax.tree.map(
        lambda e, p, d=decay: (d * e.astype(jnp.float32)
                               + (1.0 - d) * p.astype(jnp.float32)).astype(e.dtype),
        sub, params[group])
  return _rebuild(ema, out)


# --------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------

def group_grad_norms(grads: PyTree) -> dict[str, jax.Array]:
  """Global L2 norm of each group's gradients (float32; 0 for an empty group)."""
  _check_top_level(grads)
  norms = {}
  for group, sub in grads.items():
    sq = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(sub)]
    norms[group] = jnp.sqrt(sum(sq, jnp.zeros((), jnp.float32)))
  return norms
