"""Start F from a trained flow: `config.model.init_from` (a TARFlow checkpoint or a run's F).

Sources (`read_source`):
- a TARFlow state dict file: `.pth`/`.pt`/`.bin` (needs torch), or `.npz`/`.safetensors`
  under TARFlow's PyTorch names (`convert/tarflow.py`, with its `<name>.json` if any);
- a biflow_jax run: its workdir (the latest checkpoint), its `checkpoints/` directory, or
  one step directory `DIR/checkpoints/<step>`. F's **EMA** params are taken, as samples
  and evaluations use them.

The training loop uses it in two calls (`train.train_and_evaluate`):

    start = init_from.prepare(exp, workdir)  # before the workdir is created or anything compiles
    state = exp.create_state()
    if <no checkpoint was restored> and start: state = init_from.apply(state, start)

`prepare` returns None when init_from is empty, or when the workdir already has a
checkpoint: a run resumes from its own checkpoint and ignores init_from (the log says
so). Otherwise it reads the source and checks its architecture against `config.model`:
patch size, width, blocks, layers per block, heads, MLP ratio, classes, token dim,
image size, clip and the prior layer, each from what the source states (a TARFlow JSON
file, a run's config.json) or its tensor shapes imply. Mismatches are one ValueError
naming every differing field with the source's value and the config's. A missing source
is FileNotFoundError; a damaged file or checkpoint, and a checkpoint of another model,
are ValueErrors naming the path. `apply` puts the params into F's params and F's EMA,
onto the shardings the fresh state already has; G, the optimiser state, step and rng
stay as `create_state` made them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from biflow_jax.convert import tarflow
from biflow_jax.models import layout
from biflow_jax.training import checkpoints
from biflow_jax.training.experiment import Experiment
from biflow_jax.training.train_state import TrainState

# config.model fields a source can state or imply, in the order an error lists them.
FIELDS = ('image_size', 'in_channels', 'patch_size', 'channels', 'num_blocks',
          'layers_per_block', 'num_heads', 'mlp_ratio', 'num_classes', 'clip', 'clip_form',
          'prior_var')

_BLOCK = re.compile(r'^blocks_(\d+)$')
_LAYER = re.compile(r'^layers_(\d+)$')


@dataclasses.dataclass(frozen=True)
class Source:
  """A trained F read from disk, not yet checked against a config."""
  path: str                # the file or checkpoint step directory read
  kind: str                # 'TARFlow state dict' | 'biflow_jax checkpoint'
  step: int | None         # the checkpoint step of a biflow_jax source
  facts: dict[str, Any]    # FIELDS it states or implies, plus 'token_dim' and 'num_tokens'
  params: dict | None      # biflow_jax: F's EMA params tree (numpy)
  state: dict | None       # TARFlow: the state dict (PyTorch names, numpy)

  def describe(self) -> str:
    return f'{self.kind} {self.path}' + ('' if self.step is None else f' (step {self.step})')


@dataclasses.dataclass(frozen=True)
class Start:
  """F's params to start from (numpy float32, exactly F's tree), and where they came from."""
  source: str
  params: dict


# ---------------------------------------------------------------------------- checkpoints

def checkpoint_steps(checkpoint_dir: epath.PathLike) -> list[int]:
  """Committed steps in a `checkpoints/` directory (orbax names them by number), ascending;
  [] when the directory is absent. Creates nothing."""
  checkpoint_dir = epath.Path(checkpoint_dir)
  if not checkpoint_dir.is_dir():
    return []
  return sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit() and p.is_dir())


def resolve_run(path: epath.PathLike, step: int | None = None) -> tuple[epath.Path, int]:
  """(step directory, step) of a run given as a workdir, its checkpoints/ or a step dir.

  `step` picks one step of a workdir (default: the latest). Raises FileNotFoundError when
  there is no such checkpoint, ValueError for a directory that is not a run.
  """
  path = epath.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f'{path} is not a directory: a biflow_jax run is its workdir, its '
                            'checkpoints/ or a step directory <workdir>/checkpoints/<step>')
  if path.name.isdigit() and (path / 'state').is_dir():
    if step is not None and step != int(path.name):
      raise ValueError(f'{path} is the checkpoint of step {path.name}, not of step {step}')
    return path, int(path.name)
  checkpoint_dir = path / 'checkpoints' if (path / 'checkpoints').is_dir() else path
  steps = checkpoint_steps(checkpoint_dir)
  if not steps:
    if checkpoint_dir == path and path.name != 'checkpoints':
      raise ValueError(f'{path} is a directory but not a biflow_jax run: it has no checkpoints/ '
                       'and is no checkpoint step directory (<workdir>/checkpoints/<step>/state)')
    raise FileNotFoundError(f'{checkpoint_dir} holds no checkpoint: train that run first')
  if step is None:
    return checkpoint_dir / str(steps[-1]), steps[-1]
  if step not in steps:
    raise FileNotFoundError(f'{checkpoint_dir} has no step {step}; it has steps {steps}')
  return checkpoint_dir / str(step), step


def run_config(step_dir: epath.PathLike) -> dict | None:
  """The `model` group of the run's config.json (`<workdir>/config.json`), or None."""
  path = epath.Path(step_dir).parent.parent / 'config.json'
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())['model']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f'{path} is not a biflow_jax config ({type(e).__name__}: {e}); '
                     'restore it or remove it (shapes then describe F)') from e


def _key(entry) -> str:
  return str(getattr(entry, 'key', getattr(entry, 'name', entry)))


def read_params(step_dir: epath.PathLike, tree: str = 'ema', group: str = 'forward') -> dict:
  """One group's params (numpy) from one biflow_jax checkpoint step, read alone (no optimiser
  state): by default F's EMA, what samples use. ValueError when the step is unreadable or
  holds no such group."""
  # Orbax reads absolute paths only: a relative one (workdir/tiny) read as no tree at all.
  state_dir = epath.Path(step_dir).absolute() / 'state'
  try:
    saved = checkpoints.state_tree_metadata(state_dir)
  except checkpoints.CheckpointUnreadableError as e:
    raise ValueError(f'{step_dir} could not be read as a biflow_jax checkpoint '
                     f'({e}); it is damaged or not a checkpoint') from e
  if not isinstance(saved, Mapping) or not isinstance(saved.get(tree), Mapping) \
      or group not in saved[tree]:
    keys = sorted(saved) if isinstance(saved, Mapping) else type(saved).__name__
    raise ValueError(f'{step_dir} is a checkpoint of another model: it holds {keys}, not a '
                     f'biflow_jax train state with {tree}/{group}')
  item = {tree: {group: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved[tree][group])}}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
          item=item, restore_args=restore_args, partial_restore=True))
  except Exception as e:  # pylint: disable=broad-except  (damaged array files)
    raise ValueError(f'{step_dir}: {tree}/{group} could not be read ({type(e).__name__}: {e}); '
                     'the checkpoint is damaged: use another step directory') from e
  return jax.tree.map(np.asarray, restored[tree][group])


def forward_facts(params: Mapping[str, Any], stated: Mapping[str, Any] | None) -> dict[str, Any]:
  """What a biflow_jax F's param shapes imply (FIELDS, token_dim, num_tokens), completed by
  the run's config (`stated`) for what shapes do not say. ValueError for a tree that is
  not F's."""
  blocks = sorted(int(m.group(1)) for m in map(_BLOCK.match, params) if m)
  if not blocks or 'proj_in' not in params.get('blocks_0', {}):
    raise ValueError(f"not a biflow_jax F: its params hold {sorted(params)[:5]}, not "
                     'blocks_0/proj_in/...')
  first = params['blocks_0']
  token_dim, channels = first['proj_in']['kernel'].shape
  facts = {'num_blocks': len(blocks), 'channels': int(channels), 'token_dim': int(token_dim),
           'num_tokens': int(first['pos_embed'].shape[0]),
           'layers_per_block': sum(1 for k in first if _LAYER.match(k)),
           'num_classes': int(first['class_embed'].shape[0]) if 'class_embed' in first else 0,
           'mlp_ratio': int(first['layers_0']['mlp']['fc1']['kernel'].shape[1] // channels),
           'prior_var': 'var' in params}
  for field in ('image_size', 'in_channels', 'patch_size', 'num_heads', 'clip'):
    if stated is not None and field in stated:
      facts[field] = stated[field]
  if stated is not None and stated.get('clip') is not None:
    facts['clip_form'] = stated.get('clip_form', 'hard')  # runs before the field: hard
  return facts


def tarflow_facts(shapes: tarflow.Shapes, stated: Mapping[str, Any],
                  model: Mapping[str, Any]) -> dict[str, Any]:
  """What a TARFlow state dict implies (shapes) or states (its JSON file). The patch and
  image size follow from the token dim with the stated in_channels, else the config's."""
  facts: dict[str, Any] = {
      'channels': shapes.channels, 'num_blocks': shapes.num_blocks,
      'layers_per_block': shapes.layers_per_block, 'mlp_ratio': shapes.mlp_ratio,
      'num_classes': shapes.num_classes, 'token_dim': shapes.token_dim,
      'num_tokens': shapes.num_tokens, 'clip': stated.get('clip')}
  if stated.get('clip') is not None:  # an export of a clipped F states its form too
    facts['clip_form'] = stated.get('clip_form', 'hard')
  if shapes.prior_var:
    facts['prior_var'] = True  # an all-ones var needs no layer: either config setting is exact
  if 'in_channels' in stated:
    facts['in_channels'] = int(stated['in_channels'])
  channels_in = facts.get('in_channels', model['in_channels'])
  patch = stated.get('patch_size') or math.isqrt(max(shapes.token_dim // channels_in, 0))
  if patch and patch * patch * channels_in == shapes.token_dim:
    facts['patch_size'] = int(patch)
    side = math.isqrt(shapes.num_tokens)
    if 'img_size' in stated:
      facts['image_size'] = int(stated['img_size'])
    elif side * side == shapes.num_tokens:
      facts['image_size'] = side * int(patch)
  head_dim = stated.get('head_dim', tarflow.TARFLOW_HEAD_DIM)
  if shapes.channels % head_dim == 0:
    facts['num_heads'] = shapes.channels // head_dim
  return facts


# ------------------------------------------------------------------------------ sources

def read_source(path: str) -> Source:
  """The source at `path`: a TARFlow state dict file or a biflow_jax run (see module doc)."""
  where = epath.Path(path)
  if where.is_dir():
    step_dir, step = resolve_run(where)
    stated = run_config(step_dir)
    params = read_params(step_dir)
    if 'blocks' in params:  # a scanned run's stacked layout: facts read the per-layer one
      params = layout.to_flow_layout(params, scan=False)
    return Source(str(step_dir), 'biflow_jax checkpoint', step,
                  forward_facts(params, stated), params, None)
  if not where.exists():
    raise FileNotFoundError(f'config.model.init_from={path!r} does not exist: give a TARFlow '
                            'state dict (.pth, .npz, .safetensors) or a biflow_jax workdir')
  state = tarflow.read_state(path)
  return Source(path, 'TARFlow state dict', None, {}, None, state)


def _model_dict(model) -> dict[str, Any]:
  return {field: model[field] for field in FIELDS if field in model}


def mismatches(facts: Mapping[str, Any], model) -> list[str]:
  """'model.<field> is <source> in the source and <config> in the config' for every
  differing field (the token dim and token count when the fields do not explain them)."""
  m = _model_dict(model)
  out = [f'model.{f} is {facts[f]!r} in the source and {m.get(f)!r} in the config'
         for f in FIELDS if f in facts and facts[f] != m.get(f)]
  flagged = {line.split()[0] for line in out}
  token_dim = model['patch_size'] ** 2 * model['in_channels']
  if facts.get('token_dim', token_dim) != token_dim and not flagged & {'model.patch_size',
                                                                       'model.in_channels'}:
    out.append(f'the token dim (model.patch_size**2 * model.in_channels) is {facts["token_dim"]} '
               f'in the source and {token_dim} in the config')
  tokens = (model['image_size'] // model['patch_size']) ** 2
  if facts.get('num_tokens', tokens) != tokens and not flagged & {'model.patch_size',
                                                                  'model.image_size'}:
    out.append(f'the number of tokens ((model.image_size / model.patch_size)**2) is '
               f'{facts["num_tokens"]} in the source and {tokens} in the config')
  return out


def _fix_hint(facts: Mapping[str, Any], lines: list[str]) -> str:
  flagged = {line.split()[0] for line in lines}
  flags = [f'--config.model.{f}={facts[f]}' for f in FIELDS
           if f'model.{f}' in flagged and facts[f] is not None]
  hint = ' '.join(flags)
  if 'model.clip' in flagged and facts.get('clip') is None:
    hint += (' and `c.model.clip = None` in the config file (a flag cannot set None); TARFlow '
             'has no clip')
  return hint.strip()


def check(source: Source, model) -> None:
  """One ValueError naming every field where the source and `config.model` differ."""
  lines = mismatches(source.facts, model)
  if lines:
    hint = _fix_hint(source.facts, lines)
    raise ValueError(
        f'config.model does not match config.model.init_from, the {source.describe()}: '
        + '; '.join(lines) + '. Set the config to the source'
        + (f' ({hint})' if hint else '') + ', or choose a source of this architecture.')


def check_tree(params: Mapping[str, Any], abstract: Mapping[str, Any], where: str) -> None:
  """ValueError naming the first F parameter whose shape (or presence) differs."""
  got = {jax.tree_util.keystr(k): tuple(np.shape(v))
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  want = {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
  for name in sorted(set(got) | set(want)):
    if got.get(name) != want.get(name):
      raise ValueError(f'{where}: F parameter {name} is {got.get(name, "absent")} there and '
                       f'{want.get(name, "absent")} in this config; the source is not this F')


def load(exp: Experiment) -> Start:
  """F's params from `config.model.init_from`, read, checked and converted to F's tree.

  Raises FileNotFoundError, ImportError (.pth without torch) or ValueError, all before
  anything is written or compiled.
  """
  config = exp.config
  model = config.model
  source = read_source(model.init_from)
  if source.state is not None:  # TARFlow
    try:
      shapes = tarflow.infer_shapes(source.state)
    except ValueError as e:
      raise ValueError(f'config.model.init_from={source.path}: {e}') from e
    source = dataclasses.replace(source, facts=tarflow_facts(
        shapes, tarflow.read_sidecar(source.path), model))
    check(source, model)
    params = tarflow.convert_params(source.state, exp.models.flow)
  else:
    check(source, model)
    params = layout.to_flow_layout(source.params, exp.models.flow.scan)
  if model.prior_var and 'var' not in params:  # var = 1: the same F with its prior layer
    params['var'] = np.ones((exp.models.flow.num_tokens, exp.models.flow.token_dim), np.float32)
  check_tree(params, exp.abstract_state.params['forward'], source.describe())
  return Start(source.describe(), jax.tree.map(lambda a: np.asarray(a, np.float32), params))


def prepare(exp: Experiment, workdir: epath.PathLike) -> Start | None:
  """What a fresh run in `workdir` starts F from: None when config.model.init_from is empty
  or the workdir has its own checkpoint (it resumes from that; logged).

  ValueError for plan reverse_only with neither init_from nor a checkpoint: G would learn
  to invert an untrained F.
  """
  init_from = exp.config.model.init_from
  steps = checkpoint_steps(epath.Path(workdir) / 'checkpoints')
  if not init_from:
    if exp.config.schedule.plan == 'reverse_only' and not steps:
      raise ValueError("config.schedule.plan='reverse_only' trains G against a trained F, but "
                       f'config.model.init_from is empty and {workdir} has no checkpoint: set '
                       'it to a TARFlow state dict or a biflow_jax run (or use plan two_stage '
                       'to train F first)')
    return None
  if steps:
    logging.info('%s has its own checkpoint (step %d): resuming from it; '
                 'config.model.init_from=%s is ignored', workdir, steps[-1], init_from)
    return None
  return load(exp)


def apply(state: TrainState, start: Start) -> TrainState:
  """`state` with F's params and F's EMA set to `start.params`, each array placed on the
  sharding its fresh counterpart has (replicated or FSDP, any number of processes)."""
  def place(new, old):
    new = np.asarray(new, old.dtype)
    return jax.make_array_from_callback(old.shape, old.sharding, lambda index: new[index])

  forward = jax.tree.map(place, start.params, state.params['forward'])
  ema = jax.tree.map(place, start.params, state.ema['forward'])
  logging.info("F's params and EMA start from %s", start.source)
  return state.replace(params={**state.params, 'forward': forward},
                       ema={**state.ema, 'forward': ema})
