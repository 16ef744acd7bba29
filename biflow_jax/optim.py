"""Optimizers, phase plan and EMA for the two parameter groups of BiFlow.

A model's parameters are one tree ``{'forward': F params, 'reverse': G params}``.
The two groups train on different schedules (the paper trains F first, then G
with F frozen), so everything here is per group:

* ``build_phase_plan`` turns ``config.schedule`` into a list of ``Phase``\\ s,
  each saying which groups train and with which loss weights. A ``Phase`` is
  hashable so the train step can take it as a static ``jit`` argument and
  compile once per phase.
* ``make_optimizer`` builds ONE ``optax.multi_transform`` with one AdamW chain
  per group (own clipping, own warmup-cosine schedule, own step count). The
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

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.core import FrozenDict

PyTree = Any

#: The parameter groups, in a fixed order (the order of every per-group dict).
GROUPS: tuple[str, ...] = ('forward', 'reverse')

#: The loss terms a phase weighs.
LOSS_TERMS: tuple[str, ...] = ('nll', 'reverse')

# Which schedule fields each plan uses, in phase order: (phase name, steps field).
_PLAN_PHASES: dict[str, tuple[tuple[str, str], ...]] = {
    'forward_only': (('forward', 'forward_steps'),),
    'two_stage': (('forward', 'forward_steps'), ('reverse', 'reverse_steps')),
    'progressive': (('forward', 'forward_steps'), ('joint', 'joint_steps'),
                    ('reverse', 'reverse_steps')),
    # two_stage with forward_steps=0: G alone against an F that training starts from
    # (config.model.init_from), which stays frozen and bit-identical.
    'reverse_only': (('reverse', 'reverse_steps'),),
}
#: The plan names (config.schedule.plan), from the table above.
PLANS: tuple[str, ...] = tuple(_PLAN_PHASES)
_STEP_FIELDS: tuple[str, ...] = ('forward_steps', 'joint_steps', 'reverse_steps')


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


def decay_mask(params: PyTree) -> PyTree:
  """True for leaves that get weight decay: those named 'kernel' with ndim >= 2.

  Rule: decay matrices only. Flax names the matrices of Dense / DenseGeneral /
  Conv 'kernel'; biases ('bias'), norm scales ('scale') and embeddings
  ('embedding', positional tables) are not decayed even when 2-D. A custom
  module that wants its matrix decayed must name it 'kernel'.
  """
  def is_kernel(path, leaf) -> bool:
    last = path[-1] if path else None
    name = getattr(last, 'key', getattr(last, 'name', None))
    return name == 'kernel' and jnp.ndim(leaf) >= 2

  return jax.tree_util.tree_map_with_path(is_kernel, params)


# --------------------------------------------------------------------------
# Phase plan
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Phase:
  """One stretch of training: steps [start, end), which groups train, loss weights.

  Frozen (hence hashable) so it can be a static argument of a jitted step.
  """
  name: str
  start: int
  end: int
  trainable: tuple[str, ...]
  loss_weights: tuple[tuple[str, float], ...]  # (('nll', w), ('reverse', w))

  @property
  def steps(self) -> int:
    return self.end - self.start

  @property
  def weights(self) -> dict[str, float]:
    """Loss weights as a dict (a fresh copy; the Phase itself stays immutable)."""
    return dict(self.loss_weights)

  def weight(self, term: str) -> float:
    """The weight of one loss term ('nll' or 'reverse')."""
    return self.weights[term]

  def trains(self, group: str) -> bool:
    return group in self.trainable


def _schedule_int(schedule: Any, field: str) -> int:
  value = getattr(schedule, field)
  if isinstance(value, bool) or not float(value).is_integer():
    raise ValueError(
        f'config.schedule.{field}={value!r} must be a whole number of steps.')
  value = int(value)
  if value < 0:
    raise ValueError(
        f'config.schedule.{field}={value} is negative; set it to a number of '
        f'steps >= 0 (0 skips that phase).')
  return value


def _phase_spec(name: str, nll_weight: float, reverse_weight: float
                ) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...]]:
  """(trainable groups, loss weights) of a named phase."""
  if name == 'forward':      # F alone, by maximum likelihood
    return ('forward',), (('nll', nll_weight), ('reverse', 0.0))
  if name == 'joint':        # F and G together
    return ('forward', 'reverse'), (('nll', nll_weight), ('reverse', reverse_weight))
  if name == 'reverse':      # G alone, F frozen
    return ('reverse',), (('nll', 0.0), ('reverse', reverse_weight))
  raise AssertionError(name)


def build_phase_plan(config: Any) -> list[Phase]:
  """The phases of ``config.schedule.plan``, back to back, zero-step phases dropped.

  Plans:
    forward_only: 'forward' (forward_steps).
    two_stage:    'forward' (forward_steps), then 'reverse' (reverse_steps, F frozen).
    progressive:  'forward', 'joint' (both train, both losses), 'reverse'.
    reverse_only: 'reverse' (reverse_steps) alone: G learns to invert a trained F
                  (config.model.init_from) that never trains.

  Raises ValueError naming the config field for: an unknown plan, negative or
  non-integral steps, a steps field the plan does not use (it would be silently
  ignored), a plan with 0 steps in total, negative loss weights, a zero weight
  on the loss of a group that trains, and a phase that trains the reverse model
  while ``config.reverse.enabled`` is False.
  """
  schedule = config.schedule
  plan_name = schedule.plan
  if plan_name not in _PLAN_PHASES:
    raise ValueError(
        f'config.schedule.plan={plan_name!r} is not a known plan; use one of '
        f'{", ".join(PLANS)}.')
  steps = {field: _schedule_int(schedule, field) for field in _STEP_FIELDS}
  used = {field for _, field in _PLAN_PHASES[plan_name]}
  for field in _STEP_FIELDS:
    if field not in used and steps[field] != 0:
      users = [p for p, ph in _PLAN_PHASES.items() if field in {f for _, f in ph}]
      raise ValueError(
          f'config.schedule.{field}={steps[field]} is not used by '
          f'config.schedule.plan={plan_name!r}; set it to 0, or use plan '
          f'{" or ".join(repr(p) for p in users)}.')

  nll_weight = float(config.objective.nll_weight)
  reverse_weight = float(config.objective.reverse_weight)
  for field, value in (('nll_weight', nll_weight), ('reverse_weight', reverse_weight)):
    if value < 0 or math.isnan(value):
      raise ValueError(f'config.objective.{field}={value} must be >= 0.')

  phases: list[Phase] = []
  start = 0
  for name, field in _PLAN_PHASES[plan_name]:
    n = steps[field]
    if n == 0:
      continue
    trainable, weights = _phase_spec(name, nll_weight, reverse_weight)
    phases.append(Phase(name=name, start=start, end=start + n,
                        trainable=trainable, loss_weights=weights))
    start += n

  if not phases:
    fields = ', '.join(f'config.schedule.{f}=0' for _, f in _PLAN_PHASES[plan_name])
    raise ValueError(
        f'config.schedule.plan={plan_name!r} trains for 0 steps ({fields}); '
        f'set at least one of them > 0.')

  reverse_enabled = bool(getattr(getattr(config, 'reverse', None), 'enabled', False))
  for phase in phases:
    if phase.trains('reverse') and not reverse_enabled:
      field = dict(_PLAN_PHASES[plan_name])[phase.name]
      raise ValueError(
          f'config.schedule.plan={plan_name!r} trains the reverse model in phase '
          f'{phase.name!r} (config.schedule.{field}={phase.steps}) but '
          f'config.reverse.enabled is False: enable the reverse model '
          f'(config.reverse.enabled=True) or use config.schedule.plan='
          f"'forward_only'.")
    if phase.trains('forward') and nll_weight == 0:
      raise ValueError(
          f'phase {phase.name!r} trains the forward flow but '
          f'config.objective.nll_weight=0, so it would learn nothing; set '
          f'config.objective.nll_weight > 0.')
    if phase.trains('reverse') and reverse_weight == 0:
      raise ValueError(
          f'phase {phase.name!r} trains the reverse model but '
          f'config.objective.reverse_weight=0, so it would learn nothing; set '
          f'config.objective.reverse_weight > 0.')
  return phases


def total_steps(plan: Sequence[Phase]) -> int:
  """Steps of the whole plan (the end of its last phase)."""
  return plan[-1].end if plan else 0


def phase_index_at(plan: Sequence[Phase], step: int) -> int:
  """Index of the phase that global ``step`` (0-based) belongs to.

  A step at or past ``total_steps(plan)`` maps to the last phase (it keeps
  going), so resuming or over-running a finished run never trains a group the
  last phase froze.
  """
  if not plan:
    raise ValueError('the phase plan is empty.')
  step = int(step)
  if step < 0:
    raise ValueError(f'step must be >= 0, got {step}.')
  for i, phase in enumerate(plan):
    if step < phase.end:
      return i
  return len(plan) - 1


def phase_at(plan: Sequence[Phase], step: int) -> Phase:
  """The Phase that global ``step`` belongs to (see ``phase_index_at``)."""
  return plan[phase_index_at(plan, step)]


def group_train_steps(plan: Sequence[Phase], group: str) -> int:
  """How many steps ``group`` trains over the plan: the length of its lr schedule."""
  if group not in GROUPS:
    raise ValueError(f'unknown parameter group {group!r}; expected one of {GROUPS}.')
  return sum(p.steps for p in plan if p.trains(group))


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


def _group_transform(group_config: Any, train_steps: int) -> optax.GradientTransformation:
  """clip -> Adam -> decoupled weight decay (kernels only) -> -lr(count).

  The last three links are exactly ``optax.adamw`` (decay is scaled by the
  current lr, as in optax/PyTorch AdamW); they are spelled out so that the
  group's step count lives in one known place, the ``ScaleByScheduleState``,
  which ``group_steps`` and ``learning_rates`` read.
  """
  g = group_config
  clip = g.grad_clip
  clipping = (optax.clip_by_global_norm(float(clip)) if clip is not None and clip > 0
              else optax.identity())
  return optax.chain(
      clipping,
      optax.scale_by_adam(b1=float(g.b1), b2=float(g.b2), eps=float(g.eps)),
      optax.add_decayed_weights(float(g.weight_decay), mask=decay_mask),
      optax.scale_by_learning_rate(lr_schedule(g, train_steps)),
  )


def make_optimizer(config: Any, plan: Sequence[Phase]) -> optax.GradientTransformation:
  """One ``optax.multi_transform`` over the labels {'forward', 'reverse'}.

  Each group gets its own clipping (global norm over that group's gradients
  only), AdamW and warmup-cosine schedule whose length is
  ``group_train_steps(plan, group)``. Reads ``config.optim.<group>.{lr,
  warmup_steps, min_lr_ratio, weight_decay, b1, b2, eps, grad_clip}``;
  grad_clip None or <= 0 turns clipping off.

  State: ``PartitionState(inner_states={'forward': MaskedState(inner_state=
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
  ``min(ema_decay, (1 + n) / (10 + n))``, so the EMA forgets the random init
  quickly -- this matters for short runs and for G, whose EMA starts when G
  first trains, not at global step 0. Without ``steps`` the decay is constant.
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
    decay = jnp.asarray(float(_group_config(config, group).ema_decay), jnp.float32)
    if steps is not None:
      n = jnp.asarray(steps[group], jnp.float32)
      decay = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
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
