"""The peer-implementation reference vectors in tests/testdata, and the stand-in weight
rule (testdata/weight_recipe.py, copied from shared/reference) they were made with."""
import functools
import importlib.util
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / 'testdata'


@functools.cache
def recipe():
  """weight_recipe.make(name, shape, k): entry k of a state_dict_order list -> weights."""
  spec = importlib.util.spec_from_file_location('weight_recipe', DATA / 'weight_recipe.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.make


def state_dict_order(name: str) -> list:
  """[(PyTorch name, shape), ...] of `<name>_reference.json`, in state-dict order."""
  return json.loads((DATA / f'{name}_reference.json').read_text())['state_dict_order']


def reference(name: str) -> dict:
  """Every array of `<name>_reference.npz`."""
  with np.load(DATA / f'{name}_reference.npz') as ref:
    return {k: ref[k] for k in ref.files}
