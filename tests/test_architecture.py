"""The package's import structure, read from the source (nothing is imported here).

- No import cycles between the package's modules.
- No import inside a function, except a lazy import of an optional (or slow, rarely
  needed) third-party dependency with a comment saying why, on its line or the line above.
- The layers (each subpackage's `__init__.py` says what it may import): a module imports
  only from its own layer and the layers below it (LAYERS, lowest first). In particular
  `models/` imports nothing of ours but `models/`, `objective/` never imports training,
  data, inference or modes, and nothing below `modes/` imports `modes/`.
- Each subpackage's `__init__.py` has a docstring saying what it holds and may import.
- The top level holds only `main.py` and the config schema (`config_lib.py`).
- Code and docstrings cite the repository's own method notes, not an outside file.
- The core (objective, step, state, samplers, models) imports without the data and
  logging stack, as on an accelerator image that has only jax, flax, optax and absl.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'biflow_jax'
ROOT = PACKAGE.parent


def module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def imported_modules(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
  """Absolute names of what an import statement brings in (package modules resolved)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  base = node.module or ''
  if node.level:
    package = module.split('.')[:-node.level] if not MODULES[module].name == '__init__.py' else (
        module.split('.')[:len(module.split('.')) - node.level + 1])
    base = '.'.join(package + ([base] if base else []))
  names = []
  for alias in node.names:
    candidate = f'{base}.{alias.name}'
    names.append(candidate if candidate in MODULES else base)
  return names


def package_imports(module: str) -> tuple[set[str], list[tuple[int, str, ast.AST]]]:
  """(package modules imported at module level, [(line, name, node)] of function-level imports)."""
  tree = ast.parse(MODULES[module].read_text())
  top, nested = set(), []

  def visit(node, in_function: bool):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        for name in imported_modules(child, module):
          if in_function:
            nested.append((child.lineno, name, child))
          elif name.startswith('biflow_jax'):
            top.add(name)
      visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda)))

  visit(tree, False)
  return {m for m in top if m in MODULES}, nested


def all_package_imports(module: str) -> set[str]:
  """Package modules imported anywhere in `module`, function level included."""
  top, nested = package_imports(module)
  return top | {name for _, name, _ in nested if name in MODULES}


GRAPH = {m: all_package_imports(m) for m in MODULES}


def test_the_parser_sees_the_package():
  assert 'biflow_jax.objective.biflow' in MODULES and 'biflow_jax.models.flow' in MODULES
  assert 'biflow_jax.objective.primitives' in GRAPH['biflow_jax.objective.biflow']
  assert 'biflow_jax.models.flow' in GRAPH['biflow_jax.objective.primitives']


def test_no_import_cycles():
  state: dict[str, str] = {}
  stack: list[str] = []

  def dfs(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(GRAPH[m]):
      if state.get(n) == 'open':
        cycle = stack[stack.index(n):] + [n]
        pytest.fail('import cycle: ' + ' -> '.join(cycle))
      if n not in state:
        dfs(n)
    stack.pop()
    state[m] = 'done'

  for m in sorted(GRAPH):
    if m not in state:
      dfs(m)


def test_no_function_level_imports_but_commented_optional_ones():
  problems = []
  for module, path in MODULES.items():
    lines = path.read_text().splitlines()
    for lineno, name, _ in package_imports(module)[1]:
      where = f'{path.relative_to(ROOT)}:{lineno} imports {name}'
      if name.startswith('biflow_jax'):
        problems.append(f'{where} inside a function: import it at the top of the module')
        continue
      line, above = lines[lineno - 1], lines[lineno - 2].strip() if lineno > 1 else ''
      comment = line.split('#', 1)[1].strip() if '#' in line else ''
      comment = comment.removeprefix('pylint: disable=g-import-not-at-top').strip()
      if not comment and not above.startswith('#'):
        problems.append(f'{where} inside a function without a comment saying why it is lazy')
  assert not problems, '\n'.join(problems)


# The layers, lowest first; a module may import its own layer and any layer below it.
# Names are subpackages or top-level modules of biflow_jax.
LAYERS = (
    ('runtime', 'assets'),     # plumbing and shipped files: import nothing of ours
    ('models',),               # F, G, layers, VAE, frozen nets' architectures
    ('convert',),              # weight importers into models
    ('objective', 'data'),     # the loss (pure); input pipelines
    ('inference',),            # samplers, decoder policy, grids
    ('evaluation',),           # metrics, feature nets, held-out likelihood
    ('config_lib',),           # the schema: reads each field's choices from its owner
    ('training',),             # loop, step, state, optimiser, checkpoints, restore
    ('modes',),                # what a trained run is used for (--mode)
    ('tools',),                # one-command research tools
    ('main',),                 # the entry point
)
# Within a layer, these may not import each other either (siblings stay independent).
SEPARATE = {('objective', 'data'), ('runtime', 'assets')}


def layer_of(module: str) -> tuple[int, str]:
  part = module.split('.')[1] if module != 'biflow_jax' else ''
  for rank, names in enumerate(LAYERS):
    if part in names:
      return rank, part
  raise AssertionError(f'{module} is in no layer: add its folder to LAYERS')


def test_every_module_is_in_a_layer_and_imports_only_down():
  problems = []
  for module, imports in GRAPH.items():
    if module == 'biflow_jax':
      continue
    rank, part = layer_of(module)
    for other in imports - {'biflow_jax'}:  # the root package itself holds nothing
      other_rank, other_part = layer_of(other)
      if other_rank > rank:
        problems.append(f'{module} ({part}) imports {other} ({other_part}, a higher layer)')
      elif other_rank == rank and part != other_part and (
          tuple(sorted((part, other_part))) in {tuple(sorted(p)) for p in SEPARATE}):
        problems.append(f'{module} ({part}) imports its sibling {other} ({other_part})')
  assert not problems, '\n'.join(sorted(problems))


def test_the_layer_rules_catch_an_upward_import():
  assert layer_of('biflow_jax.models.flow')[0] < layer_of('biflow_jax.objective.biflow')[0]
  assert layer_of('biflow_jax.objective.biflow')[0] < layer_of('biflow_jax.training.step')[0]
  assert layer_of('biflow_jax.training.step')[0] < layer_of('biflow_jax.modes.edit')[0]
  with pytest.raises(AssertionError, match='no layer'):
    layer_of('biflow_jax.somewhere_new')


def test_models_import_nothing_of_ours_but_models():
  for module, imports in GRAPH.items():
    if module.startswith('biflow_jax.models'):
      outside = sorted(m for m in imports if not m.startswith('biflow_jax.models'))
      assert not outside, f'{module} imports {outside}'


def test_subpackages_say_what_they_hold_and_may_import():
  for init in sorted(PACKAGE.glob('*/__init__.py')):
    doc = ast.get_docstring(ast.parse(init.read_text())) or ''
    assert len(doc) > 80 and 'May import' in doc, f'{init}: say what it holds and may import'


def test_top_level_holds_only_the_entry_point_and_the_config_schema():
  top = sorted(p.name for p in PACKAGE.glob('*.py'))
  assert top == ['__init__.py', 'config_lib.py', 'main.py'], top


def test_method_notes_live_in_the_repository():
  notes = ROOT / 'docs' / 'method.md'
  assert notes.is_file()
  for path in [*MODULES.values(), *sorted((ROOT / 'configs').glob('*.py'))]:
    assert 'METHOD.md' not in path.read_text(), f'{path} cites METHOD.md; cite docs/method.md'


# What a machine with only jax, flax, optax, numpy and absl must be able to import (an
# accelerator image without the data and logging stack): the objective, the step, the
# state, the samplers and the models.
CORE = ('biflow_jax.objective.biflow', 'biflow_jax.training.step',
        'biflow_jax.training.train_state', 'biflow_jax.objective.primitives',
        'biflow_jax.training.optim', 'biflow_jax.inference.sampling', 'biflow_jax.models.flow',
        'biflow_jax.models.generator')
DATA_AND_LOGGING_STACK = ('grain', 'ml_collections', 'tensorflow', 'tensorflow_datasets', 'clu',
                          'orbax', 'PIL', 'etils', 'array_record')


def on_a_bare_image(code: str) -> str:
  """A Python program that runs `code` with the data and logging stack unimportable, as
  on an accelerator image that has only jax, flax, optax, numpy and absl."""
  return f'''
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in {DATA_AND_LOGGING_STACK!r}:
      raise ImportError('not on this machine: ' + name)
sys.meta_path.insert(0, Block())
{code}
'''


def test_core_imports_without_the_data_and_logging_stack():
  script = on_a_bare_image(f"for module in {CORE!r}:\n  importlib.import_module(module)\nprint('ok')")
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]
