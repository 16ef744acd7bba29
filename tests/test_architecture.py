"""The package's import structure, read from the source (nothing is imported here).

- No import cycles between the package's modules.
- No import inside a function, except a lazy import of an optional (or slow, rarely
  needed) third-party dependency with a comment saying why, on its line or the line above.
- `models/` imports nothing from the training side (only jax/flax/numpy and models/).
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
  assert 'biflow_jax.biflow' in MODULES and 'biflow_jax.models.flow' in MODULES
  assert 'biflow_jax.objectives' in GRAPH['biflow_jax.biflow']
  assert 'biflow_jax.models.flow' in GRAPH['biflow_jax.objectives']


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


def test_models_import_nothing_from_the_training_side():
  for module, imports in GRAPH.items():
    if module.startswith('biflow_jax.models'):
      outside = sorted(m for m in imports if not m.startswith('biflow_jax.models'))
      assert not outside, f'{module} imports {outside}'


def test_method_notes_live_in_the_repository():
  notes = ROOT / 'docs' / 'method.md'
  assert notes.is_file()
  for path in [*MODULES.values(), *sorted((ROOT / 'configs').glob('*.py'))]:
    assert 'METHOD.md' not in path.read_text(), f'{path} cites METHOD.md; cite docs/method.md'


# What a machine with only jax, flax, optax, numpy and absl must be able to import (an
# accelerator image without the data and logging stack): the objective, the step, the
# state, the samplers and the models.
CORE = ('biflow_jax.biflow', 'biflow_jax.step', 'biflow_jax.train_state', 'biflow_jax.objectives',
        'biflow_jax.optim', 'biflow_jax.sampling', 'biflow_jax.models.flow',
        'biflow_jax.models.generator')
DATA_AND_LOGGING_STACK = ('grain', 'ml_collections', 'tensorflow', 'tensorflow_datasets', 'clu',
                          'orbax', 'PIL', 'etils', 'array_record')


def test_core_imports_without_the_data_and_logging_stack():
  script = f'''
import importlib, importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split('.')[0] in {DATA_AND_LOGGING_STACK!r}:
      raise ImportError('not on this machine: ' + name)
sys.meta_path.insert(0, Block())
for module in {CORE!r}:
  importlib.import_module(module)
print('ok')
'''
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=120, cwd=ROOT)
  assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-3000:]
