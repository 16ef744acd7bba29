"""--mode=export: G's 1-NFE sampler and F's exact inverse as jax.export artifacts; a script
with jax alone samples from them and gets what the in-process sampler gives."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from biflow_jax.inference import decoders, sampling
from biflow_jax.modes import export
from biflow_jax.tools import run_exported
from biflow_jax.training import train
from subprocess_util import python
from tiny_run import flags_of, two_stage_config

TINY = Path(__file__).resolve().parents[1] / 'configs' / 'tiny.py'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('export') / 'run'
  config = two_stage_config(forward_steps=20, reverse_steps=10)
  state = train.train_and_evaluate(config, workdir)
  proc = python('-m', 'biflow_jax.main', f'--config={TINY}', f'--workdir={workdir}',
                '--mode=export', *flags_of(config), timeout=300)
  return config, state, workdir, proc


@pytest.mark.parametrize('decoder', ['reverse', 'exact'])
def test_exported_sampler_equals_the_in_process_one(exported, decoder):
  config, state, workdir, _ = exported
  folder = workdir / 'export' / decoder
  manifest = json.loads((folder / 'manifest.json').read_text())
  assert manifest['checkpoint_step'] == 30 and manifest['platforms'] == ['cpu']
  for num in (3, 5):  # the batch dimension is symbolic
    noise = np.asarray(sampling.sample_noise(config, jax.random.PRNGKey(num), num))
    labels = np.arange(num, dtype=np.int32) % 10
    labels[0] = -1
    decode = jax.jit(sampling.make_decoder(config, decoder,
                                           decoders.default_denoise(config, decoder)),
                     static_argnames=('guidance',))
    expected = decode(state.ema, noise, labels, guidance=decoders.decoder_guidance(config, decoder))
    got = run_exported.sample(folder, noise, labels)
    assert got.shape == (num, 28, 28, 1)
    np.testing.assert_allclose(got, np.asarray(expected), atol=1e-5)


def test_script_samples_without_biflow_jax(exported, tmp_path):
  _, _, workdir, proc = exported
  assert 'exported reverse' in proc.stderr and 'exported exact' in proc.stderr
  script = workdir / 'export' / 'run_exported.py'
  # Any import of biflow_jax in the script would fail.
  guard = ("import sys, runpy; sys.modules['biflow_jax'] = None; "
           f"sys.argv = [{str(script)!r}] + sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
  out = tmp_path / 's.npz'
  result = python('-c', guard, str(workdir / 'export' / 'reverse'), '--num=4', '--label=7',
                  f'--out={out}', cwd=tmp_path, timeout=120)
  assert 'reverse: (4, 28, 28, 1) uint8 images' in result.stdout
  saved = np.load(out)
  assert saved['images'].dtype == np.uint8 and saved['labels'].tolist() == [7] * 4


def test_bad_decoder_list_fails_before_restoring(tmp_path):
  config = two_stage_config()
  config.export.decoders = 'reverse,nope'
  with pytest.raises(ValueError, match="'nope' is not one of"):
    export.run(config, tmp_path / 'none')
  config.reverse.enabled = False
  config.export.decoders = 'reverse'
  with pytest.raises(ValueError, match='has no G'):
    export.run(config, tmp_path / 'none')


def test_runner_refuses_labels_outside_the_manifest_and_bad_arguments(exported, tmp_path, capsys):
  """Issue 32, item 2: --label=10 gave G's unconditional samples, 11 and 255 all-black
  images, saved under those labels, exit 0."""
  _, _, workdir, _ = exported
  folder = workdir / 'export' / 'reverse'
  script = workdir / 'export' / 'run_exported.py'
  out = tmp_path / 'bad.npz'
  proc = python(script, folder, '--num=2', '--label=10', f'--out={out}', cwd=tmp_path,
                expect=2, timeout=120)
  assert ('--label=10: label 10 is not a class of this sampler: labels must be in [0, 10) '
          'or -1 for none') in proc.stderr
  assert not out.exists()
  for argv, message in ((['--label=255'], 'label 255 is not a class'),
                        (['--label=-2'], 'label -2 is not a class'),
                        (['--num=0'], '--num=0 must be at least 1'),
                        ([f'--out={tmp_path / "s"}'], 'must end in .npz'),
                        ([], 'is not an export folder')):
    target = tmp_path if message == 'is not an export folder' else folder
    with pytest.raises(SystemExit) as stop:
      run_exported.main([str(target), '--num=2', *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err, argv
  noise = np.zeros((2, 16, 49), np.float32)
  with pytest.raises(ValueError, match='label 11 is not a class'):
    run_exported.sample(folder, noise, np.array([0, 11]))
  with pytest.raises(ValueError, match=r'must be \(N, 16, 49\)'):
    run_exported.sample(folder, noise[:, :8], np.array([0, 1]))


def test_runner_refuses_a_sampler_exported_for_another_platform():
  other = jax.export.export(jax.jit(lambda x: x + 1), platforms=['tpu'])(np.float32(1))
  with pytest.raises(ValueError, match=r"exported for \['tpu'\] and this machine runs jax on "
                                       r"'cpu'.*--config.export.platforms=tpu,cpu"):
    run_exported.check_platform(other)


def test_default_platform_is_the_name_jax_export_uses(monkeypatch):
  """Issue 32, item 12: '' became jax.default_backend(), which is 'gpu' on NVIDIA hosts;
  jax.export's platforms are 'cpu', 'cuda', 'rocm' and 'tpu'
  (jax.export.default_export_platform canonicalises 'gpu' to the GPU present)."""
  config = two_stage_config()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')  # what an NVIDIA host says
  assert export._platforms(config) == (jax.export.default_export_platform(),)
  assert set(export._platforms(config)) <= set(export.EXPORT_PLATFORMS)
  config.export.platforms = 'cpu, cuda'
  assert export._platforms(config) == ('cpu', 'cuda')
  config.export.platforms = 'gpu'
  with pytest.raises(ValueError, match="'gpu' is not a jax.export platform.*'cuda'"):
    export.run(config, '/nonexistent/run')
