"""What a run puts in TensorBoard besides scalars: its config as text, sample grids as images.

Both go through the run's clu metric writer (TensorBoard events in the workdir), so they
sit beside the scalars: the grid of each decoder under `samples/<decoder>` at the step
it was drawn, the config under `config` at the step the run (re)started.
"""
from __future__ import annotations

import ml_collections
import numpy as np
from clu import metric_writers

from biflow_jax.runtime import images


def config_text(config: ml_collections.ConfigDict) -> str:
  """The config as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
  body = config.to_json_best_effort(indent=2)
  return '```\n' + body + '\n```'


def write_config(writer: metric_writers.MetricWriter, step: int,
                 config: ml_collections.ConfigDict) -> None:
  """The whole config as a text summary named `config` at `step`."""
  writer.write_texts(step, {'config': config_text(config)})


def write_sample_grids(writer: metric_writers.MetricWriter, step: int,
                       outputs: dict[str, np.ndarray], num_classes: int = 0) -> None:
  """One image summary per decoder, `samples/<decoder>`: a grid of its samples.

  outputs: decoder name -> (N, H, W, C) images in [-1, 1] (what
  `inference.write_sample_grid` returns); C is 1 or 3. Each becomes one uint8 grid
  (1, H', W', C), one row per class when N is a multiple of `num_classes`, else square.
  """
  grids = {}
  for name, x in outputs.items():
    rows = num_classes if num_classes and len(x) % num_classes == 0 else None
    grids[f'samples/{name}'] = images.make_grid(images.to_uint8(x), rows=rows)[None]
  writer.write_images(step, grids)
