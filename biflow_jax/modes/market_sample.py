"""`--mode=sample` for a market config: scenarios as raw daily log returns in an .npz.

    DIR/samples/market_<decoder>_n<n>_t<T>_step<step>.npz
      scenarios  (n, days, A) float64 daily log returns (natural log, not percent)
      labels     (n,) int32 volatility bin each scenario was drawn at (-1: no label)
      assets     (A,) asset names, in column order
      provenance a JSON string: data (version, sha256, split), decoder, seed, temperature,
                 checkpoint step, and the caveats (not modelled, not investment advice)
    and the same JSON beside it (.json).

Fields: config.sample.num scenarios, config.sample.decoder ('reverse' = G in one pass,
'exact' = F's exact inverse), config.sample.temperature (1 = the model; > 1 scales the
noise: a what-if, see `--mode=stress`), config.sample.label (-1 = regimes drawn with
their training shares, i.e. the unconditional model; k = bin k), config.seed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from absl import logging

from biflow_jax.data import market_source
from biflow_jax.modes import market_run
from biflow_jax.runtime import files

DECODERS = ('reverse', 'exact')


def check(config) -> None:
  """ValueError for sample fields a market run cannot use, before anything loads."""
  s = config.sample
  if s.decoder not in DECODERS:
    raise ValueError(f'config.sample.decoder={s.decoder!r}: market scenarios come from '
                     f"{DECODERS} ('reverse' = G, 1 pass; 'exact' = F's exact inverse)")
  label = int(s.get('label', -1))
  k = int(config.model.num_classes)
  if label != -1 and not 0 <= label < k:
    raise ValueError(f'config.sample.label={label} must be -1 (regimes drawn with their '
                     f'training shares) or a volatility bin in [0, {k})')


def run(config, workdir: str | os.PathLike) -> Path:
  """Writes config.sample.num scenarios of config.sample.decoder; returns the .npz path."""
  check(config)
  market_source.load(config)  # a config that does not fit its data fails before restoring
  mr = market_run.restore(config, workdir, config.sample.denoise)
  s = config.sample
  rng = np.random.default_rng(config.seed)
  label = int(s.get('label', -1))
  labels = (mr.marginal_labels(rng, s.num) if label == -1
            else np.full(s.num, label, np.int32))
  x = mr.scenarios(s.decoder, labels, config.seed, float(s.temperature))
  meta = {**mr.header(),
          'scenarios': {'shape': list(x.shape), 'units': 'daily log returns',
                        'decoder': s.decoder, 'seed': int(config.seed),
                        'temperature': float(s.temperature),
                        'labels': 'drawn with training shares' if label == -1 else f'bin {label}',
                        'nonfinite_windows': int(np.sum(~np.all(np.isfinite(x), axis=(1, 2))))}}
  out = Path(workdir) / 'samples'
  out.mkdir(parents=True, exist_ok=True)
  name = f'market_{s.decoder}_n{s.num}_t{float(s.temperature):g}_step{mr.step}'
  path = out / f'{name}.npz'

  def write(tmp: Path) -> None:
    with open(tmp, 'wb') as f:  # a file object: np.savez would append .npz to a name
      np.savez(f, scenarios=x, labels=labels, assets=np.array(mr.data.assets),
               provenance=np.array(json.dumps(meta)))

  files.write_atomic(path, write)
  market_run.write_json(out / f'{name}.json', meta)
  logging.info('wrote %s (%s scenarios)', path, x.shape)
  return path
