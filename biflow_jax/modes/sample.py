"""`--mode=sample`: a grid (and the raw samples) of one decoder from a run's latest checkpoint."""
from __future__ import annotations

import numpy as np
from absl import logging
from etils import epath

from biflow_jax.inference import decoders, sampling
from biflow_jax.runtime import files, images, parallel
from biflow_jax.training import restore


def run(config, workdir: epath.PathLike, name: str | None = None) -> epath.Path:
  """`--mode=sample`: a grid (and the raw samples) from the latest checkpoint's EMA params."""
  workdir = epath.Path(workdir)
  exp, state, step = restore.restore_run(config, workdir)
  s = config.sample
  w = decoders.decoder_guidance(config, s.decoder)
  t = decoders.decoder_temperature(config, s.decoder)
  name = name or f'{s.decoder}_w{w:g}_t{t:g}_step{step}'
  path, outputs = decoders.write_sample_grid(
      config, decoders.make_samplers(config, (s.decoder,)), state.ema,
      workdir / 'samples' / f'{name}.png',
      to_pixels=decoders.pixel_decoder(exp.models.frozen, exp.frozen_params))
  if parallel.is_main_process():
    def write(tmp):
      with tmp.open('wb') as f:  # a file object: np.savez would append .npz to a name
        np.savez(f, images=images.to_uint8(outputs[s.decoder]),
                 labels=np.asarray(sampling.class_rows(s.num, config.model.num_classes)))
    files.write_atomic(workdir / 'samples' / f'{name}.npz', write)  # never half an .npz
  logging.info('wrote %s', path)
  return path
