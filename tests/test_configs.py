"""Every config parses, validates its phase plan and builds its models at full size."""
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biflow_jax.models.flow import ForwardFlow
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


@pytest.mark.parametrize('name,args', [('tiny', ()), ('mnist', ()), ('mnist_long', ()), ('cifar10', ()),
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
