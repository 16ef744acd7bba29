"""The phase plan: which parameter group trains when, and each loss term's weight.

A model's parameters are one tree ``{'forward': F params, 'reverse': G params}``, and
``config.schedule`` lays out phases back to back (the paper trains F first, then G with
F frozen; the founding description's progressive plan trains both in a middle phase).
``build_phase_plan`` turns it into a list of ``Phase``\\ s, each saying which groups
train and with which loss weights. A ``Phase`` is hashable so the train step can take
it as a static ``jit`` argument and compile once per phase. The loss
(``objective/biflow.py``) reads a phase's weights; the optimiser
(``training/optim.py``) reads which groups train and for how many steps.

Reads config fields by attribute access only (any object with the same attributes works).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

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
