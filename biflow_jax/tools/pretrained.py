"""Trained weights that ship with the package: pack a run into them, unpack them into a run.

    python -m biflow_jax.tools.pretrained pack --run=workdir/mnist --name=mnist [--dtype=float16]
    python -m biflow_jax.tools.pretrained unpack --name=mnist --workdir=workdir/pretrained \
        [--config.<field>=<value> ...]

`pack` reads the run's newest complete checkpoint (`init_from.resolve_run`, `--step=` for
another) and writes `biflow_jax/assets/pretrained/<name>.npz` (`--out_dir=` for another
folder): the EMA weights of F ('forward/...') and G ('reverse/...'), '/'-joined keys, in
`--dtype` (bfloat16 is stored as its uint16 bit pattern: numpy has no bfloat16). Beside it,
`<name>.json`: the run's config.json (the whole config), the step, the pack command, the
git commit of the packing code, the date, the dtype, the npz's sha256 and size, parameter
counts, `checks` (the numbers `tests/test_pretrained.py` compares against, measured on the
stored weights and on the checkpoint's float32 ones: `measure`) and `eval` (copied from
RUN/eval.json when it was written for the packed step).

`unpack` makes `--workdir` a run that every mode reads as if it had been trained there:
DIR/config.json (the shipped config with the command line's `--config.*` overrides, in the
format training writes) and an orbax checkpoint at the shipped step whose train state has
params = ema = the shipped weights in float32, the optimiser state fresh (`exp.tx.init`)
and the rng of the config's seed. The shipped files are read and checked (unknown name,
missing file, sha256, weights that do not fit the config) before anything is written.
"""
from __future__ import annotations

import copy
import datetime
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from biflow_jax import assets, config_lib
from biflow_jax.data import input_pipeline
from biflow_jax.evaluation import classifier, likelihood
from biflow_jax.inference import decoders, sampling
from biflow_jax.models import layout
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.objective import primitives
from biflow_jax.runtime import cli, console, files
from biflow_jax.training import checkpoints, experiment, init_from, workdir_lock
from biflow_jax.training.train_state import TrainState

PRETRAINED_DIR = assets.ASSETS_DIR / 'pretrained'
DTYPES = ('float16', 'bfloat16', 'float32')
#: The most compact dtype that keeps the checked numbers of the MNIST default
#: (docs/pretrained.md): bfloat16 (5.3 MB compressed; float16 6.1 MB, float32 12.2 MB).
DEFAULT_DTYPE = 'bfloat16'
GROUPS = ('forward', 'reverse')   # F, G: the top-level keys of the npz
FORMAT = 1
#: The checks: how many held-out digits and G samples, and the seeds of their noise.
CHECK_NUM = 200
CHECK_SEED = 2027
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


# ------------------------------------------------------------------------- file layout


def shipped_names(directory: str | Path = PRETRAINED_DIR) -> list[str]:
  """Names with a shipped `<name>.json` in `directory`."""
  directory = Path(directory)
  return sorted(p.stem for p in directory.glob('*.json')) if directory.is_dir() else []


def paths(name: str, directory: str | Path = PRETRAINED_DIR) -> tuple[Path, Path]:
  """(<directory>/<name>.npz, <directory>/<name>.json)."""
  if not _NAME.match(name or ''):
    raise ValueError(f'--name={name!r}: use letters, digits, _ . - (e.g. mnist)')
  return Path(directory) / f'{name}.npz', Path(directory) / f'{name}.json'


def _stored(array: np.ndarray, dtype: str) -> np.ndarray:
  """An array as the npz holds it in `dtype` (bfloat16 as uint16 bits)."""
  if dtype == 'bfloat16':
    return np.asarray(array, jnp.bfloat16).view(np.uint16)
  return np.asarray(array, dtype)


def _float32(array: np.ndarray, dtype: str) -> np.ndarray:
  """An npz array in `dtype` (bfloat16: uint16 bits) back to float32."""
  if dtype == 'bfloat16':
    return np.asarray(array).view(jnp.bfloat16).astype(np.float32)
  return np.asarray(array, np.float32)


def round_trip(params: Mapping[str, Any], dtype: str) -> dict:
  """`params` as float32 after a pass through the npz's `dtype`: what `unpack` will load."""
  return jax.tree.map(lambda a: _float32(_stored(np.asarray(a, np.float32), dtype), dtype),
                      dict(params))


def count(params: Mapping[str, Any]) -> int:
  return int(sum(np.size(a) for a in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------ config


def _leaves(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping) and value:
      out.update(_leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_of(run: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
              ) -> ml_collections.ConfigDict:
  """The schema's config (`config_lib.base_config`) with every field a run's config.json
  sets (all groups, the use groups too), then `overrides` ({'a.b': value}) on top.

  Fields the schema added since the run keep their defaults; fields this code no longer
  has are skipped with a warning (as `config_lib.for_mode` does for the modes).
  """
  config = config_lib.base_config()
  wanted = _leaves(config.to_dict())
  unknown = []
  for path, value in _leaves(run).items():
    if path not in wanted:  # a field this code does not have, or an empty group
      if not (isinstance(value, Mapping) and any(w.startswith(path + '.') for w in wanted)):
        unknown.append(path)
      continue
    try:
      config.update_from_flattened_dict({path: value})
    except (TypeError, ValueError, KeyError, AttributeError) as e:
      unknown.append(f'{path} ({value!r}: {e})')
  if unknown:
    logging.warning('the shipped config has fields this code does not have or cannot take '
                    '(their defaults are used): %s', ', '.join(unknown))
  if overrides:
    config.update_from_flattened_dict(dict(overrides))
  return config


# ----------------------------------------------------------------------------- checks


def heldout_bits_per_dim(config, flow: ForwardFlow, forward_params, num: int = CHECK_NUM
                         ) -> float:
  """Bits/dim under F of the first `num` held-out digits (`input_pipeline.load_heldout`'s
  class-balanced order) as one batch: `evaluation.likelihood`'s metric (x~ = x + sigma
  eps with its fixed noise, true labels)."""
  c = copy.deepcopy(config)
  c.batch_size, c.eval_batches = int(num), 1
  heldout = input_pipeline.load_heldout(c, num)
  return float(likelihood.heldout_bits_per_dim(flow, forward_params, heldout, c))


def reverse_samples(config, params, num: int = CHECK_NUM, seed: int = CHECK_SEED
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(images in [-1, 1], labels): `num` of G's 1-NFE samples at the config's sample cell
  (`decoders.reverse_guidance` / `reverse_temperature`, G's default denoising), labels
  0, 1, ..., cycling over the classes."""
  labels = np.arange(num, dtype=np.int32) % max(1, int(config.model.num_classes))
  sampler = sampling.make_sampler(config, 'reverse', decoders.default_denoise(config, 'reverse'))
  images = sampler(params, jax.random.PRNGKey(seed), jnp.asarray(labels),
                   guidance=decoders.reverse_guidance(config),
                   temperature=decoders.reverse_temperature(config))
  return np.asarray(images), labels


def reverse_class_accuracy(config, params, num: int = CHECK_NUM, seed: int = CHECK_SEED
                           ) -> float:
  """The fraction of `reverse_samples` the dataset's shipped classifier gives the asked class."""
  images, labels = reverse_samples(config, params, num, seed)
  module, variables, _ = classifier.load_classifier(assets.shipped(config, 'classifier'))
  return classifier.accuracy(module, variables, images, labels)


def inverse_error(config, flow: ForwardFlow, forward_params, num: int = CHECK_NUM,
                  seed: int = CHECK_SEED) -> float:
  """max |F^-1(F(x~)) - x~| over `num` held-out digits x (x~ = x + sigma eps, true labels):
  F's exact inverse (serial over tokens, KV cache) undoing F."""
  heldout = input_pipeline.load_heldout(config, num)
  x = primitives.from_uint8(heldout['image'])
  y = jnp.asarray(heldout['label'].astype(np.int32)) if flow.num_classes else None
  eps = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
  noisy = jnp.asarray(x + float(config.objective.noise_sigma) * eps)

  @jax.jit
  def round_trip_error(p, xt, labels):
    z = flow.apply({'params': p}, xt, labels)[0]
    back = flow.apply({'params': p}, z, labels, method=ForwardFlow.inverse)
    return jnp.max(jnp.abs(back - xt))

  return float(round_trip_error(forward_params, noisy, y))


def measure(config, params: Mapping[str, Any], num: int = CHECK_NUM) -> dict[str, float]:
  """The numbers `tests/test_pretrained.py` checks, for `params` ({'forward', 'reverse'},
  float32): held-out bits/dim, G's class accuracy (with a G), exact-inverse error."""
  flow = ForwardFlow.from_config(config.model)
  out = {'heldout_bits_per_dim': heldout_bits_per_dim(config, flow, params['forward'], num),
         'exact_inverse_max_abs_error': inverse_error(config, flow, params['forward'], num)}
  if 'reverse' in params and config.model.num_classes:
    out['reverse_class_accuracy'] = reverse_class_accuracy(config, params, num)
  return out


# -------------------------------------------------------------------------------- pack


def _git_commit() -> dict[str, Any]:
  """The packing code's git commit and whether its tree had changes ({} outside git)."""
  where = str(Path(__file__).resolve().parent)
  try:
    commit = subprocess.run(['git', '-C', where, 'rev-parse', 'HEAD'], capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    dirty = subprocess.run(['git', '-C', where, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, check=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return {}
  return {'git_commit': commit, 'git_dirty': bool(dirty)}


_EVAL_METRICS = ('frechet_distance', 'class_accuracy', 'precision', 'recall', 'inception_score',
                 'guidance', 'temperature')


def eval_record(workdir: epath.Path, step: int) -> tuple[dict | None, str]:
  """(the eval slot, a note): RUN/eval.json's numbers when it was written for `step`."""
  path = workdir / 'eval.json'
  if not path.is_file():
    return None, f'{path} does not exist: run --mode=eval on the run, then pack again'
  result = files.read_json(path)
  if not isinstance(result, dict):
    return None, f'{path} is not a JSON object; not copied'
  if result.get('step') != step:
    return None, (f'{path} is of step {result.get("step")}, not the packed step {step}: run '
                  '--mode=eval again, then pack again')
  used = result.get('protocol', {}).get('heldout_likelihood', {}).get('num_examples')
  record = {'source': str(path), 'step': step, 'num_samples': result.get('num_samples'),
            'feature_net': result.get('feature_net'),
            'heldout_bits_per_dim': result.get('heldout_bits_per_dim_ema'),
            'heldout_examples': used,
            'real_heldout_class_accuracy': result.get('real_heldout_class_accuracy'),
            'decoders': {name: {k: entry[k] for k in _EVAL_METRICS if k in entry}
                         for name, entry in result.get('decoders', {}).items()},
            'weights': "the run's float32 checkpoint (before the cast to the shipped dtype)"}
  return record, f'copied from {path}'


def pack(run: str, name: str, dtype: str = DEFAULT_DTYPE, step: int | None = None,
         out_dir: str | Path = PRETRAINED_DIR, config_file: str = '',
         command: str = '', checks: bool = True) -> dict[str, Any]:
  """Writes <out_dir>/<name>.npz and .json from the run (see the module doc); returns the
  JSON record. `checks=False` (tests of the file layout) leaves the checks out: a record
  without them is no asset for `tests/test_pretrained.py`."""
  if dtype not in DTYPES:
    raise ValueError(f'--dtype={dtype!r}: use one of {DTYPES}')
  npz, meta = paths(name, out_dir)
  step_dir, step = init_from.resolve_run(run, step)
  workdir = step_dir.parent.parent
  run_config = files.read_json(workdir / config_lib.RUN_CONFIG)
  if not isinstance(run_config, dict):
    raise ValueError(f'{workdir / config_lib.RUN_CONFIG} is missing or not JSON: pack needs '
                     'the config the run was trained with (training writes it)')
  config = config_of(run_config)
  config_lib.validate(config)
  groups = GROUPS if config.reverse.enabled else GROUPS[:1]
  params = {g: init_from.read_params(step_dir, 'ema', g) for g in groups}
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)

  record = None
  if checks:
    record = {'num': CHECK_NUM, 'seed': CHECK_SEED, 'backend': jax.default_backend(),
              'jax_version': jax.__version__,
              'stored': measure(config, round_trip(params, dtype)),
              'float32': measure(config, params) if dtype != 'float32' else None}
  flat = {k: _stored(v, dtype) for k, v in assets.flatten_params(params).items()}

  def write(tmp):
    with tmp.open('wb') as f:  # a file object: np.savez would append .npz to a name
      np.savez_compressed(f, **flat)

  git = _git_commit()  # before the new files exist: they would make a clean tree dirty
  npz.parent.mkdir(parents=True, exist_ok=True)
  files.write_atomic(npz, write)
  evaluation, eval_note = eval_record(workdir, step)
  info = {
      'format': FORMAT, 'name': name,
      'what': ("EMA weights of F ('forward/...') and G ('reverse/...'), '/'-joined flax "
               'param paths' if 'reverse' in groups else "EMA weights of F ('forward/...')"),
      'npz': npz.name, 'sha256': files.sha256(npz), 'bytes': npz.stat().st_size,
      'dtype': dtype, 'groups': list(groups),
      'parameters': {**{g: count(params[g]) for g in groups}, 'total': count(params)},
      'step': step, 'run': str(run), 'config_file': config_file,
      'command': command, **git,
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d'),
      'checks': record, 'eval': evaluation, 'eval_note': eval_note,
      'config': run_config}
  files.write_text_atomic(meta, files.json_text(info, meta.name) + '\n')
  return info


# ------------------------------------------------------------------------------ unpack


def load(name: str, directory: str | Path = PRETRAINED_DIR) -> tuple[dict, dict]:
  """(the JSON record, {'forward': ..., 'reverse': ...} float32 numpy) of a shipped name.

  ValueError for an unknown name (listing the shipped ones) or an npz whose sha256 is
  not the recorded one; FileNotFoundError for a missing npz.
  """
  npz, meta = paths(name, directory)
  if not meta.is_file():
    names = shipped_names(directory)
    raise ValueError(f'no shipped weights named {name!r} in {directory}: shipped are '
                     f'{names or "none"}' + (f' (--name={names[0]})' if names else ''))
  info = json.loads(meta.read_text())
  remake = (f"re-pack it with `{info.get('command') or 'python -m biflow_jax.tools.pretrained pack'}`"
            ' or restore it from the repository (git checkout / git lfs pull)')
  if not npz.is_file():
    raise FileNotFoundError(f'{npz} is missing (its record {meta} is there): {remake}')
  digest = files.sha256(npz)
  if digest != info.get('sha256'):
    raise ValueError(f'{npz} is damaged or not the shipped file: its sha256 is {digest}, '
                     f'{meta} records {info.get("sha256")} ({npz.stat().st_size} bytes, '
                     f'{info.get("bytes")} recorded); {remake}')
  dtype = info['dtype']
  with np.load(npz) as data:
    flat = {k: _float32(data[k], dtype) for k in data.files}
  return info, assets.unflatten_params(flat)


def _in_layout(params: dict, config) -> dict:
  """The shipped params in the config's layout (stacked with scan, per layer without)."""
  out = dict(params)
  try:
    if 'forward' in out:
      out['forward'] = layout.to_flow_layout(out['forward'], bool(config.model.scan))
    if 'reverse' in out:
      out['reverse'] = layout.to_generator_layout(out['reverse'], bool(config.reverse.scan))
  except ValueError:
    pass  # not F's/G's tree at all: the comparison below names what differs
  return out


def check_fit(params: Mapping[str, Any], abstract: Mapping[str, Any], name: str,
              shipped_config: Mapping[str, Any], config) -> None:
  """One ValueError naming every parameter that is missing, extra or of another shape in
  the weights file than in `config`, the config fields that differ, and the fix."""
  got = {k: tuple(np.shape(v)) for k, v in assets.flatten_params(dict(params)).items()}
  want = {'/'.join(str(getattr(p, 'key', p)) for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
  lines = []
  for key in sorted(set(got) | set(want)):
    if got.get(key) != want.get(key):
      a = got[key] if key in got else 'absent'
      b = want[key] if key in want else 'absent'
      lines.append(f'parameter {key} is {a} in the weights file and {b} in the config')
  if not lines:
    return
  shipped = _leaves({g: shipped_config.get(g, {}) for g in ('model', 'reverse')})
  as_json = json.loads(config.to_json_best_effort())  # lists, as the shipped JSON has them
  given = _leaves({g: as_json.get(g, {}) for g in ('model', 'reverse')})
  fields = [f'{k} ({shipped[k]!r} shipped, {given[k]!r} here)' for k in sorted(shipped)
            if k in given and given[k] != shipped[k]]
  shown = lines[:4] + ([f'... ({len(lines)} parameters differ in all)'] if len(lines) > 4 else [])
  raise ValueError(
      f"the shipped weights '{name}' do not fit this config: " + '; '.join(shown) + '. '
      + (f"The config's architecture differs from the shipped one in {', '.join(fields)}. "
         if fields else '')
      + 'Unpack without those --config.* overrides (the shipped config is used as it is), '
      'or train a model of this architecture.')


def build_state(exp: experiment.Experiment, params: Mapping[str, Any], step: int) -> TrainState:
  """The train state a run of `params` would hold at `step`, laid out on the experiment's
  mesh: params = ema = `params`, the optimiser state fresh (`exp.tx.init`), the rng and
  skip count as a fresh state of the config has them (`exp.init_state`, of which only
  those are computed: XLA drops the unused random init, so this compiles in well under a
  second where `exp.create_state` takes ~10 s for the MNIST default on 2 CPU cores)."""
  shardings = exp.state_shardings

  def place(new, like):
    new = np.asarray(new, like.dtype)
    return jax.make_array_from_callback(like.shape, like.sharding, lambda index: new[index])

  weights = jax.tree.map(place, dict(params), exp.abstract_state.params)
  ema = jax.tree.map(place, dict(params), exp.abstract_state.ema)
  opt_state = jax.jit(exp.tx.init, out_shardings=shardings.opt_state)(weights)
  def fresh():
    state = exp.init_state()
    return state.rng, state.skips

  rng, skips = jax.jit(fresh, out_shardings=(shardings.rng, shardings.skips))()
  return TrainState(step=jax.device_put(jnp.int32(step), shardings.step), params=weights,
                    opt_state=opt_state, ema=ema, rng=rng, skips=skips)


def unpack(name: str, workdir: str | epath.PathLike, overrides: Mapping[str, Any] | None = None,
           directory: str | Path = PRETRAINED_DIR) -> tuple[epath.Path, int]:
  """Makes `workdir` a run of the shipped weights (see the module doc); returns
  (workdir, step). Every error is raised before anything is written there."""
  info, params = load(name, directory)
  overrides = dict(overrides or {})
  config = config_of(info['config'], overrides)
  exp = experiment.build_experiment(config, with_perceptual=False)  # validates the config
  params = _in_layout(params, config)
  check_fit(params, exp.abstract_state.params, name, info['config'], config)
  workdir = epath.Path(workdir)
  steps = checkpoints.complete_steps(workdir / 'checkpoints')
  if steps or (workdir / config_lib.RUN_CONFIG).exists():
    raise ValueError(f'{workdir} already holds a run ({config_lib.RUN_CONFIG}'
                     + (f', checkpoints {steps}' if steps else '') + '): unpack into a new '
                     'or empty --workdir')
  workdir_lock.check_writable(workdir)  # creates it; WorkdirNotWritableError names it

  step = int(info['step'])
  state = build_state(exp, params, step)
  # As training writes it (train._write_config): the config's strict JSON.
  files.write_text_atomic(workdir / config_lib.RUN_CONFIG, files.json_text(
      json.loads(config.to_json_best_effort()), config_lib.RUN_CONFIG))
  manager = checkpoints.make_manager(workdir, config.keep_checkpoints)
  try:
    checkpoints.save(manager, step, state)
    checkpoints.wait(manager)
  finally:
    manager.close()
  return workdir, step


# -------------------------------------------------------------------------------- main


def next_commands(info: Mapping[str, Any], workdir: str) -> list[str]:
  config_file = info.get('config_file') or 'configs/<the config it was trained with>.py'
  base = f'python -m biflow_jax.main --config={config_file} --workdir={workdir}'
  return [f'{base} --mode=sample', f'{base} --mode=sample --config.sample.decoder=reverse',
          f'{base} --mode=eval']


def main(argv: Sequence[str] | None = None) -> None:
  flags.DEFINE_string('run', None, 'pack: the run (workdir, its checkpoints/ or a step dir).')
  flags.DEFINE_string('name', None, 'The shipped name, e.g. mnist.')
  flags.DEFINE_enum('dtype', DEFAULT_DTYPE, list(DTYPES), 'pack: the dtype stored.')
  flags.DEFINE_integer('step', 0, 'pack: the step to pack (0: the newest complete one).')
  flags.DEFINE_string('out_dir', str(PRETRAINED_DIR),
                      'pack: where <name>.npz/.json are written; unpack: where they are read.')
  flags.DEFINE_string('config_file', '', 'pack: the config file the modes use with this run '
                      '(recorded; default configs/<name>.py when that exists).')
  flags.DEFINE_string('workdir', None, 'unpack: the directory to make a run of.')
  config_flags.DEFINE_config_dict(
      'config', config_lib.base_config(), 'unpack: --config.<field>=<value> overrides over '
      'the shipped config (the architecture must stay the shipped one).')
  argv = list(sys.argv if argv is None else argv)

  def run(args):
    f = flags.FLAGS
    console.setup(None)
    if len(args) != 2 or args[1] not in ('pack', 'unpack'):
      raise app.UsageError('give one subcommand: pack or unpack')
    overrides = config_flags.get_override_values(f['config'])
    with cli.user_errors(None, also=(workdir_lock.WorkdirNotWritableError,)):
      if args[1] == 'pack':
        if not f.run or not f.name:
          raise app.UsageError('pack needs --run and --name')
        if overrides:
          raise app.UsageError(f'pack takes no --config.* overrides (given {overrides})')
        config_file = f.config_file or (f'configs/{f.name}.py'
                                        if Path(f'configs/{f.name}.py').is_file() else '')
        command = ' '.join(['python -m biflow_jax.tools.pretrained'] + argv[1:])
        info = pack(f.run, f.name, f.dtype, f.step or None, f.out_dir, config_file, command)
        npz, meta = paths(f.name, f.out_dir)
        print(f"packed step {info['step']} of {f.run}: {info['parameters']['total']:,} "
              f"parameters as {info['dtype']} -> {npz} ({info['bytes'] / 1e6:.2f} MB) and "
              f'{meta}')
        print('checks (stored weights): ' + ', '.join(
            f'{k} {v:.6g}' for k, v in info['checks']['stored'].items()))
        if info['checks']['float32']:
          print('checks (float32 checkpoint): ' + ', '.join(
              f'{k} {v:.6g}' for k, v in info['checks']['float32'].items()))
        print(f"eval: {info['eval_note']}")
      else:
        if not f.name or not f.workdir:
          raise app.UsageError('unpack needs --name and --workdir')
        workdir, step = unpack(f.name, f.workdir, overrides, f.out_dir)
        info = json.loads(paths(f.name, f.out_dir)[1].read_text())
        print(f"unpacked '{f.name}' (step {step}) into {workdir}: {config_lib.RUN_CONFIG} "
              f'and checkpoints/{step}. Next:')
        for line in next_commands(info, f.workdir):
          print(f'  {line}')

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
