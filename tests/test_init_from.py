"""Starting F from a trained flow (config.model.init_from), the G-only plan and the export.

- The TARFlow reference state dict through init_from gives exactly the importer's F.
- On bundled MNIST: F trained a few steps, exported by the CLI in TARFlow's layout, then a
  new run starts from the export with plan reverse_only: G trains, F (params and EMA) stays
  bit-identical to the export, G samples; a workdir with its own checkpoint ignores
  init_from and says so.
- Mismatched architecture, missing, corrupt and foreign sources: one clear error each,
  nothing written to the workdir.
- Export then import is exact.
"""
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.convert import tarflow
from biflow_jax.inference import decoders, sampling
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.training import init_from, optim, restore, train
from biflow_jax.training.experiment import build_experiment
from subprocess_util import ROOT, python
from test_train import parse_config

DATA = Path(__file__).parent / 'testdata'
REF = DATA / 'tarflow_reference.npz'
CLASSIFIER = Path(__file__).resolve().parents[1] / 'biflow_jax' / 'assets' / 'mnist_classifier.npz'


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def max_abs_diff(a, b) -> float:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b)))


def reference_config():
  """A config whose F is the reference TARFlow's architecture (tests/testdata)."""
  config = parse_config('--config.model.image_size=8', '--config.model.patch_size=2',
                        '--config.model.channels=64', '--config.model.num_blocks=4',
                        '--config.model.layers_per_block=2', '--config.model.num_heads=2',
                        f'--config.model.init_from={REF}')
  config.model.clip = None  # TARFlow has no clip
  return config


def test_init_from_tarflow_reference_equals_the_importer():
  config = reference_config()
  exp = build_experiment(config)
  start = init_from.prepare(exp, '/nonexistent/fresh_workdir')
  # A stand-in for exp.create_state() (same layout and shardings, nothing compiled).
  fresh = jax.tree.map(lambda a: jax.device_put(np.zeros(a.shape, a.dtype), a.sharding),
                       exp.abstract_state)
  state = init_from.apply(fresh, start)
  flow, params = tarflow.load(REF)
  assert flow == exp.models.flow  # the same architecture, inferred vs configured
  assert max_abs_diff(state.params['forward'], params) == 0
  assert max_abs_diff(state.ema['forward'], params) == 0
  # Placed where the fresh state was; the rest of the state untouched.
  for new, old in zip(jax.tree.leaves(state), jax.tree.leaves(fresh)):
    assert new.sharding == old.sharding
  assert max_abs_diff(state.opt_state, fresh.opt_state) == 0
  ref = np.load(REF)
  x, y = ref['x'].transpose(0, 2, 3, 1), ref['y'].astype(np.int32)
  forward = jax.jit(lambda p: flow.apply({'params': p}, x, y)[:2])
  inverse = jax.jit(lambda p: flow.apply({'params': p}, ref['noise'], y,
                                         method=ForwardFlow.inverse))
  (z_a, logdet_a), (z_b, logdet_b) = forward(params), forward(state.params['forward'])
  assert float(jnp.max(jnp.abs(z_a - z_b))) == 0
  assert float(jnp.max(jnp.abs(logdet_a - logdet_b))) == 0
  assert float(jnp.max(jnp.abs(inverse(params) - inverse(state.params['forward'])))) == 0
  # ... and that F is TARFlow's (the parity tests' tolerance).
  np.testing.assert_allclose(z_b, ref['z'], atol=1e-4)
  np.testing.assert_allclose(inverse(state.params['forward']), ref['samples'].transpose(0, 2, 3, 1),
                             atol=1e-4)


# ------------------------------------------------------------------- MNIST end to end

def mnist_config(**model):
  config = parse_config()
  config.model.clip = None  # F as TARFlow computes it
  config.eval_every = config.sample_every = 100000
  for key, value in model.items():
    setattr(config.model, key, value)
  return config


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """A tiny F trained 4 steps on bundled MNIST and exported by the CLI -> (run dir, npz)."""
  root = tmp_path_factory.mktemp('init_from')
  run = root / 'forward'
  train.train_and_evaluate(mnist_config(), run, stop_at=4)
  out = root / 'export' / 'F.npz'
  proc = python('-m', 'biflow_jax.tools.export_tarflow', f'--workdir={run}', f'--out={out}',
                timeout=300)
  assert 'F of step 4' in proc.stdout
  return run, out


def reverse_only_config(source, **model):
  config = mnist_config(init_from=str(source), **model)
  config.reverse.enabled = True
  config.schedule.plan = 'reverse_only'
  config.schedule.forward_steps = 0
  config.schedule.reverse_steps = 30
  config.optim.reverse.warmup_steps = 1
  return config


def test_export_then_import_is_exact(exported):
  run, out = exported
  ema = init_from.read_params(run / 'checkpoints' / '4')
  flow, params = tarflow.load(out)  # reads the .json beside it: geometry, heads, clip
  assert max_abs_diff(params, ema) == 0
  state = dict(np.load(out))
  assert state['blocks.0.class_embed'].shape == (10, 1, 32) and np.all(state['var'] == 1)
  np.testing.assert_array_equal(state['blocks.1.attn_mask'], np.tril(np.ones((16, 16))))
  x = np.random.RandomState(0).uniform(-1, 1, (3, 28, 28, 1)).astype(np.float32)
  y = np.array([0, 3, -1], np.int32)
  run_flow = ForwardFlow.from_config(mnist_config().model)
  z_run, _, _ = run_flow.apply({'params': ema}, x, y)
  z_imported, _, _ = flow.apply({'params': params}, x, y)
  assert float(jnp.max(jnp.abs(z_run - z_imported))) == 0


@pytest.mark.slow  # a G-only run from an export (~25 s)
def test_reverse_only_from_the_export_trains_g_with_f_bit_identical(exported, tmp_path, caplog):
  _, out = exported
  config = reverse_only_config(out)
  config.checkpoint_every = 1
  workdir = tmp_path / 'distil'
  state = train.train_and_evaluate(config, workdir, stop_at=3)
  f_source = tarflow.load(out)[1]
  assert int(state.step) == 3
  assert max_abs_diff(state.params['forward'], f_source) == 0  # F: bit-identical, EMA too
  assert max_abs_diff(state.ema['forward'], f_source) == 0
  steps = optim.group_steps(state.opt_state)
  assert int(steps['forward']) == 0 and int(steps['reverse']) == 3
  # G trains: its step-1 params are its init (the first update's lr is 0 after warmup 1).
  g_step1 = init_from.read_params(workdir / 'checkpoints' / '1', 'params', 'reverse')
  assert max_abs_diff(state.params['reverse'], g_step1) > 1e-4
  assert max_abs_diff(init_from.read_params(workdir / 'checkpoints' / '1', 'params'), f_source) == 0
  # G samples: one pass from noise, finite images in [-1, 1].
  sampler = decoders.make_samplers(config, ('reverse',))['reverse']
  images = np.asarray(sampler(state.ema, jax.random.PRNGKey(0),
                              sampling.class_rows(10, 10), guidance=0.0, temperature=1.0))
  assert images.shape == (10, 28, 28, 1) and np.all(np.isfinite(images))
  assert np.all(np.abs(images) <= 1) and images.std() > 0.05

  # The workdir now has its own checkpoint: a resumed run ignores init_from (even one that
  # no longer exists) and says so; training/train.py then restores the checkpoint as for any run.
  config.model.init_from = str(tmp_path / 'gone.npz')
  with caplog.at_level(logging.INFO):
    assert init_from.prepare(build_experiment(config), workdir) is None
  assert 'has its own checkpoint (step 3): resuming from it' in caplog.text
  assert 'gone.npz is ignored' in caplog.text


# --------------------------------------------------------------------------- errors

def _fails_writing_nothing(config, workdir, error, match):
  with pytest.raises(error, match=match) as info:
    train.train_and_evaluate(config, workdir)
  assert not workdir.exists(), f'{workdir} was created'
  return str(info.value)


def test_mismatched_architecture_is_one_error_naming_each_field(exported, tmp_path):
  _, out = exported
  message = _fails_writing_nothing(reverse_only_config(out, channels=48, num_blocks=3),
                                   tmp_path / 'w', ValueError, 'does not match')
  assert 'model.channels is 32 in the source and 48 in the config' in message
  assert 'model.num_blocks is 2 in the source and 3 in the config' in message
  assert '--config.model.channels=32' in message and str(out) in message
  # A run's own checkpoint as the source: checked against its config.json and shapes.
  run, _ = exported
  message = _fails_writing_nothing(reverse_only_config(run, patch_size=4, num_heads=4),
                                   tmp_path / 'w', ValueError, 'does not match')
  assert 'model.patch_size is 7 in the source and 4 in the config' in message
  assert 'model.num_heads is 2 in the source and 4 in the config' in message
  assert 'biflow_jax checkpoint' in message and '(step 4)' in message
  # TARFlow has no clip: F with one would be another function.
  config = reverse_only_config(out)
  config.model.clip = 3.0
  message = _fails_writing_nothing(config, tmp_path / 'w', ValueError, 'model.clip is None')
  assert 'c.model.clip = None' in message


def test_clip_form_is_checked_against_the_source(exported):
  """A soft-clipped F loaded as a hard-clipped one would be another function: named."""
  run, _ = exported
  params = init_from.read_params(run / 'checkpoints' / '4')
  model = mnist_config(clip=3.0).model
  stated = {'clip': 3.0, 'clip_form': 'tanh'}
  lines = init_from.mismatches(init_from.forward_facts(params, stated), model)
  assert lines == ["model.clip_form is 'tanh' in the source and 'hard' in the config"]
  # A run from before the field existed stated only its clip, which was the hard one.
  assert init_from.mismatches(init_from.forward_facts(params, {'clip': 3.0}), model) == []
  model.clip_form = 'tanh'
  assert init_from.mismatches(init_from.forward_facts(params, {'clip': 3.0}), model) == [
      "model.clip_form is 'hard' in the source and 'tanh' in the config"]


# orbax leaves callbacks on a closed event loop when a restore of damaged arrays fails.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_missing_corrupt_and_foreign_sources_are_clear_errors(exported, tmp_path):
  run, out = exported
  workdir = tmp_path / 'w'
  _fails_writing_nothing(reverse_only_config(tmp_path / 'nope.npz'), workdir,
                         FileNotFoundError, 'nope.npz.*does not exist')
  corrupt = tmp_path / 'corrupt.npz'
  corrupt.write_bytes(out.read_bytes()[:5000])  # a download cut short
  _fails_writing_nothing(reverse_only_config(corrupt), workdir, ValueError,
                         'corrupt.npz could not be read as a state dict.*damaged')
  _fails_writing_nothing(reverse_only_config(CLASSIFIER), workdir, ValueError,
                         'mnist_classifier.npz: not a TARFlow state dict')  # another model
  _fails_writing_nothing(reverse_only_config(tmp_path), workdir, ValueError,
                         'not a biflow_jax run')
  # A checkpoint step whose arrays are damaged.
  damaged = tmp_path / 'damaged' / 'checkpoints'
  step = damaged / '4'
  shutil.copytree(run / 'checkpoints' / '4', step)
  for f in (step / 'state').rglob('*'):
    if f.is_file() and f.parent.name == 'd':
      f.write_bytes(b'\0' * 16)
  _fails_writing_nothing(reverse_only_config(step), workdir, ValueError, 'damaged')


def test_reverse_only_needs_init_from_in_a_fresh_workdir(tmp_path):
  _fails_writing_nothing(reverse_only_config(''), tmp_path / 'w', ValueError,
                         'init_from is empty and .* has no checkpoint')
  config = reverse_only_config('x.npz')
  config.schedule.forward_steps = 5
  with pytest.raises(ValueError, match='forward_steps=5 is not used by'):
    build_experiment(config)


def test_export_cli_fails_cleanly_and_writes_nothing(tmp_path):
  out = tmp_path / 'F.npz'
  proc = python('-m', 'biflow_jax.tools.export_tarflow', f'--workdir={tmp_path / "none"}',
                f'--out={out}', expect=1, timeout=120)
  assert 'FATAL:' in proc.stderr and 'none is not a directory' in proc.stderr
  assert not any(tmp_path.iterdir())


def test_a_run_given_as_a_relative_path_works_and_restores_without_warnings(exported, tmp_path,
                                                                           monkeypatch, caplog):
  """Issue 32, items 5 and 7. Orbax reads absolute paths only: `--workdir=workdir/tiny` of
  export_tarflow and `--config.model.init_from=workdir/mnist` (the README's own ablation
  command) stopped with 'is a checkpoint of another model: it holds NoneType'. And every
  restore warned 'Metadata file does not exist: .../state/_CHECKPOINT_METADATA', a file a
  CheckpointManager never writes there."""
  run, _ = exported
  monkeypatch.chdir(run.parent)
  relative = Path(run.name)
  assert not relative.is_absolute() and (relative / 'checkpoints' / '4').is_dir()
  with caplog.at_level(logging.WARNING):
    params = init_from.read_params(relative / 'checkpoints' / '4')
    assert max_abs_diff(params, init_from.read_params(run / 'checkpoints' / '4')) == 0
    proc = python('-m', 'biflow_jax.tools.export_tarflow', f'--workdir={relative}',
                  '--out=relative_F.npz', cwd=run.parent, timeout=300,
                  env={'PYTHONPATH': str(ROOT)})  # this checkout's package, from another cwd
    assert 'F of step 4' in proc.stdout and (run.parent / 'relative_F.npz').is_file()
    exp = build_experiment(mnist_config(init_from=str(relative)))
    start = init_from.prepare(exp, tmp_path / 'fresh')
    assert max_abs_diff(start.params, params) == 0
    _, state, step = restore.restore_run(mnist_config(), relative)
    assert step == 4 and max_abs_diff(state.ema['forward'], params) == 0
  assert 'Metadata file does not exist' not in caplog.text
  assert 'Failed to get item metadata' not in caplog.text
