"""Every config parses, validates its phase plan and builds its models at full size."""
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax import config_lib
from biflow_jax.models.flow import ForwardFlow
from biflow_jax.modes import edit, export
from biflow_jax.objective import phases

CONFIGS = Path(__file__).resolve().parents[1] / 'configs'


def load_config(name, *args):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def count_params(config):
  flow = ForwardFlow.from_config(config.model)
  shape = (1,) + flow.image_shape
  abstract = jax.eval_shape(lambda: flow.init(jax.random.PRNGKey(0), jnp.zeros(shape),
                                              jnp.zeros((1,), jnp.int32)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))


@pytest.mark.parametrize('name,args', [('tiny', ()), ('tiny_biflow', ()), ('mnist', ()), ('mnist_long', ()), ('cifar10', ()),
                                       ('cifar10', ('jpeg',)), ('cifar10', ('jpeg,forward_only',)),
                                       ('cifar10_small', ()), ('imagenet64', ()),
                                       ('imagenet64', ('forward_only',)),
                                       ('imagenet256', ()), ('imagenet256', ('S',)),
                                       ('imagenet256', ('XL',))])
def test_config_builds(name, args):
  config = load_config(name, *args)
  plan = phases.build_phase_plan(config)
  assert phases.total_steps(plan) > 0
  assert count_params(config) > 0


def test_imagenet256_forward_is_b2_sized():
  n = count_params(load_config('imagenet256'))
  assert 110e6 < n < 135e6, n  # the paper's iTARFlow-B/2 has ~120M


def test_bad_config_variant_is_a_clear_error():
  with pytest.raises(ValueError, match='choose one of'):
    load_config('imagenet256', 'XXL')
  with pytest.raises(ValueError, match=':jpeg'):
    load_config('cifar10', 'lmdb')
  with pytest.raises(ValueError, match='forward_only'):
    load_config('imagenet64', 'f_only')


@pytest.mark.parametrize('name,arg', [('cifar10', 'tfds'), ('cifar10_small', None),
                                      ('imagenet64', '')])
def test_dataset_configs_are_biflow_experiments_with_an_f_only_override(name, arg):
  # The issue: a user picking these gets F then G (two stages, learned denoising,
  # training-time CFG), and F alone only when asking for it.
  config = load_config(name, *(() if arg is None else (arg,)))
  assert config.reverse.enabled and config.schedule.plan == 'two_stage'
  assert config.schedule.forward_steps > 0 and config.schedule.reverse_steps > 0
  assert config.objective.denoise == 'learned' and config.objective.cfg_w_max > 0
  assert [p.name for p in phases.build_phase_plan(config)] == ['forward', 'reverse']
  if arg is not None:
    f_only = load_config(name, f'{arg},forward_only' if arg else 'forward_only')
    assert not f_only.reverse.enabled and f_only.schedule.plan == 'forward_only'
    assert [p.name for p in phases.build_phase_plan(f_only)] == ['forward']
    assert f_only.model.to_dict() == config.model.to_dict()


def test_each_decoder_samples_at_its_own_temperature():
  from biflow_jax import config_lib
  from biflow_jax.inference import decoders
  config = config_lib.base_config()
  config.sample.temperature, config.sample.reverse_temperature = 0.85, -1.0
  assert decoders.decoder_temperature(config, 'reverse') == 0.85  # -1: the shared one
  config.sample.reverse_temperature = 1.15
  assert decoders.decoder_temperature(config, 'reverse') == 1.15
  assert decoders.decoder_temperature(config, 'exact') == 0.85
  config_lib.validate(config)
  for name, bad in (('reverse_temperature', 0.0), ('temperature', -1.0),
                    ('reverse_temperature', float('nan'))):
    setattr(config.sample, name, bad)
    with pytest.raises(ValueError, match=f'config.sample.{name}'):
      config_lib.validate(config)
    config.sample.temperature, config.sample.reverse_temperature = 0.85, 1.15


def test_a_mode_takes_what_was_trained_from_the_run_and_how_to_use_it_from_the_command_line():
  """Issue 32, item 6 (config_lib.for_mode): the run's config.json for what was trained,
  the --config file for the groups that say how the run is used, the command line's
  overrides over both."""
  trained = load_config('tiny')
  trained.reverse.enabled = True
  trained.schedule.plan = 'two_stage'
  trained.model.clip = None
  trained.sample.temperature = 0.7
  run = json.loads(trained.to_json_best_effort())
  run['model']['renamed_since'] = 3      # a field this code no longer has
  del run['objective']['prior_fraction']  # a field added after the run was trained
  given = load_config('tiny')
  given.eval.num_samples = 50            # the file's own use settings
  given.lock()
  config, notes = config_lib.for_mode(given, run, {'data.num_heldout': 32,
                                                   'sample.decoder': 'reverse'})
  assert config.reverse.enabled and config.schedule.plan == 'two_stage'
  assert config.model.clip is None and config.vae.block_out_channels == (128, 256, 512, 512)
  assert config.sample.temperature == given.sample.temperature  # use groups: the file's
  assert config.eval.num_samples == 50
  assert config.data.num_heldout == given.data.num_heldout  # an override is the file's value
  assert 'reverse.enabled (run True, --config False)' in notes['differs']
  assert 'model.clip (run None, --config 3.0)' in notes['differs']
  assert not any(n.startswith('sample.') for n in notes['differs'])
  assert notes['kept'] == ['model.renamed_since (not a field of this config)']
  assert notes['missing'] == ['objective.prior_fraction']
  assert given.reverse.enabled is False  # the given config is not changed


def test_tiny_biflow_trains_f_then_g_so_every_mode_of_the_quick_start_has_what_it_needs():
  """Issue 32, item 11: configs/tiny.py trains F only, so --mode=edit and the reverse
  export failed on it, and a run with G took four flags found only in tests/tiny_run.py."""
  config = load_config('tiny_biflow')
  config_lib.validate(config)
  assert config.reverse.enabled and config.schedule.plan == 'two_stage'
  assert [p.name for p in phases.build_phase_plan(config)] == ['forward', 'reverse']
  assert phases.total_steps(phases.build_phase_plan(config)) <= 60
  edit.check(config)
  assert export._decoders(config) == ('reverse', 'exact')


@pytest.mark.parametrize('field,value,match', [
    ('guidance', float('nan'), 'sample.guidance=nan must be a finite'),
    ('reverse_guidance', -0.5, r'reverse_guidance=-0.5 must be >= 0, or -1'),
    ('reverse_guidance', float('inf'), 'reverse_guidance=inf'),
    ('fixed_point_tol', float('nan'), 'fixed_point_tol=nan'),
    ('fixed_point_groups', 0, 'fixed_point_groups=0 >= 1'),
])
def test_sampling_values_that_reach_traced_code_are_checked_first(field, value, match):
  """Audit of issue 32: a value that reaches a jitted sampler as a number gives wrong
  images there, not an error; -0.5 meant 'the same as guidance' like -1, silently."""
  config = load_config('tiny')
  config_lib.validate(config)
  setattr(config.sample, field, value)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)


def test_g_is_not_guided_below_zero():
  config = load_config('tiny')
  config.reverse.enabled = True
  config.sample.guidance = -1.0  # F's scale, which G takes with reverse_guidance=-1
  with pytest.raises(ValueError, match='G is asked for guidance w=-1'):
    config_lib.validate(config)


def test_inverse_matching_refuses_a_feature_term_it_would_drop():
  """Inverse matching has no data image to compare G's output with, so the MNIST default's
  feature term (weight 1) would be silently dropped: an error naming the fix instead."""
  config = load_config('mnist')
  config.objective.reverse_target = 'inverse_matching'
  with pytest.raises(ValueError, match=r'perceptual.feature_weight.*set perceptual.feature_weight=0'):
    config_lib.validate(config)
  config.perceptual.feature_weight = 0.0
  config_lib.validate(config)


@pytest.mark.parametrize('path,value,match', [
    ('optim.reverse.ema_warmup', 1.0, r'config.optim.reverse.ema_warmup=1.0 must be > 1'),
    ('optim.forward.ema_warmup', -3.0, r'config.optim.forward.ema_warmup=-3.0 must be > 1'),
    ('model.clip_form', 'soft', r"config.model.clip_form='soft' is not one of \('hard', 'tanh'\)"),
    ('reverse.w_embed_scale', 0.0, r'config.reverse.w_embed_scale=0.0 must be a finite number > 0'),
    ('reverse.w_embed_scale', float('inf'), r'config.reverse.w_embed_scale=inf must be a finite'),
])
def test_ema_warmup_and_clip_form_are_checked_first(path, value, match):
  """c <= 1 makes the EMA's decay (1 + n) / (c + n) reach 1 (the EMA never moves) or pass
  it; an unknown bound would only fail inside F's first trace."""
  config = load_config('tiny')
  config_lib.validate(config)
  config.update_from_flattened_dict({path: value})
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config)
