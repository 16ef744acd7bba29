"""Running child processes in tests: a failure names its cause (status, output tail, logs).

Children run with this test's interpreter (sys.executable) and launchers get it as PYTHON,
so a run under /path/venv/bin/python works without activating the venv, whatever `python`
is on PATH.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch'
TAIL = 3000  # characters of each output shown on a failure
NONZERO = 'non-zero'  # expect=NONZERO: any failing status
_TIMED_OUT = object()


def _unexpected(returncode: int, expect) -> bool:
  if expect is None:
    return False
  if expect == NONZERO:
    return returncode == 0
  return returncode != expect


def tail(text: str | bytes | None, n: int = TAIL) -> str:
  if text is None:
    return ''
  if isinstance(text, bytes):
    text = text.decode(errors='replace')
  return text if len(text) <= n else '...' + text[-n:]


def child_env(env: dict | None = None) -> dict:
  """os.environ + `env`, with PYTHON (for the shell launchers) set to this interpreter."""
  return {**os.environ, 'PYTHON': sys.executable, 'PYTHONUNBUFFERED': '1', **(env or {})}


def broken_python_on_path(bin_dir: Path | str) -> dict:
  """An env whose PATH starts with a `python` and `python3` that fail (exit 127), as with a
  venv's interpreter run without activating the venv: whatever runs them is caught."""
  bin_dir = Path(bin_dir)
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name in ('python', 'python3'):
    script = bin_dir / name
    script.write_text('#!/bin/sh\necho "the python on PATH ($0) was used, not PYTHON" >&2\n'
                      'exit 127\n')
    script.chmod(0o755)
  return {'PATH': f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}'}


def _log_tails(logs: Iterable[Path | str]) -> str:
  parts = []
  for pattern in logs:
    pattern = Path(pattern)
    paths = sorted(pattern.parent.glob(pattern.name)) if pattern.parent.exists() else []
    for path in paths:
      parts.append(f'--- {path} (tail)\n{tail(path.read_text(errors="replace"))}')
  return '\n'.join(parts)


def describe(cmd: Sequence, returncode, stdout=None, stderr=None, logs=()) -> str:
  """What ran, how it ended and the end of what it said: the text of a failed check."""
  text = f'command: {" ".join(map(str, cmd))}\nexit status: {returncode}\n'
  if stdout:
    text += f'--- stdout (tail)\n{tail(stdout)}\n'
  if stderr:
    text += f'--- stderr (tail)\n{tail(stderr)}\n'
  return text + _log_tails(logs)


def run(cmd: Sequence, *, expect: int | str | None = 0, timeout: float = 300,
        env: dict | None = None, cwd: Path | str = ROOT,
        logs: Iterable[Path | str] = ()) -> subprocess.CompletedProcess:
  """Runs `cmd` to the end, output captured (text).

  Fails the test, with the exit status, the tails of stdout and stderr and of the files
  matching `logs` (globs, e.g. WORKDIR/logs/process_*.log), when the status is not
  `expect` (an int; NONZERO: any failure; None: anything) or the time runs out.
  """
  __tracebackhide__ = True  # failures point at the test
  cmd = [str(c) for c in cmd]
  try:
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired as e:
    proc = e
  if isinstance(proc, subprocess.TimeoutExpired):  # failed outside `except`: no chained error
    pytest.fail(f'timed out after {timeout} s\n' + describe(cmd, None, proc.stdout, proc.stderr,
                                                           logs))
  if _unexpected(proc.returncode, expect):
    pytest.fail(f'expected status {expect}\n' + describe(cmd, proc.returncode, proc.stdout,
                                                         proc.stderr, logs))
  return proc


def python(*args, **kwargs) -> subprocess.CompletedProcess:
  """`run` with this interpreter: python('-m', 'biflow_jax.main', ...)."""
  __tracebackhide__ = True  # failures point at the test
  return run([sys.executable, *args], **kwargs)


def launch(script: str, *args, **kwargs) -> subprocess.CompletedProcess:
  """`run` of launch/<script> with bash (PYTHON is this interpreter unless `env` says)."""
  __tracebackhide__ = True  # failures point at the test
  return run(['bash', LAUNCH / script, *args], **kwargs)


class Child:
  """A child whose merged stdout/stderr is read line by line while it runs.

    child = Child([sys.executable, '-m', 'biflow_jax.main', ...])
    child.wait_for(lambda line: ' loss ' in line, timeout=120, what='training')
    child.send_signal(signal.SIGTERM)
    child.finish(expect=0)
  """

  def __init__(self, cmd: Sequence, *, env: dict | None = None, cwd: Path | str = ROOT):
    self.cmd = [str(c) for c in cmd]
    self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=child_env(env), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line)
    self._queue.put(None)  # end of output

  @property
  def output(self) -> str:
    return ''.join(self.lines)

  def _fail(self, message: str):
    __tracebackhide__ = True  # failures point at the test
    if self.proc.poll() is None:
      self.proc.kill()
    try:
      self.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      pass
    self._drain(timeout=5)
    pytest.fail(message + '\n' + describe(self.cmd, self.proc.returncode, self.output))

  def _drain(self, timeout: float) -> bool:
    """Collects the rest of the output; True once it has all been read."""
    deadline = time.monotonic() + timeout
    while True:
      try:
        line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        return False
      if line is None:
        return True
      self.lines.append(line)

  def wait_for(self, predicate, *, timeout: float = 120, what: str = 'the expected line') -> str:
    """The first line (from now) that satisfies `predicate`; fails with the output tail if
    the child ends first or `timeout` seconds pass."""
    __tracebackhide__ = True  # failures point at the test
    deadline = time.monotonic() + timeout
    while True:
      try:
        line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        line = _TIMED_OUT
      if line is _TIMED_OUT:
        self._fail(f'{what} did not come within {timeout} s')
      if line is None:
        self.proc.wait()
        self._fail(f'the child ended before {what}')
      self.lines.append(line)
      if predicate(line):
        return line

  def send_signal(self, sig):
    self.proc.send_signal(sig)

  def finish(self, *, expect: int | str | None = 0, timeout: float = 120) -> int:
    """Waits for the end; fails with the output tail unless the status is `expect` (as in
    `run`). Returns the status."""
    __tracebackhide__ = True  # failures point at the test
    try:
      self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      pass
    if self.proc.returncode is None:
      self._fail(f'did not end within {timeout} s')
    self._drain(timeout=30)
    if _unexpected(self.proc.returncode, expect):
      pytest.fail(f'expected status {expect}\n' + describe(self.cmd, self.proc.returncode,
                                                           self.output))
    return self.proc.returncode

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.proc.poll() is None:  # the test failed while the child ran: don't leave it
      self.proc.kill()
      self.proc.wait()
