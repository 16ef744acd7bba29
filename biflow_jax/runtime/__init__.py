"""Plumbing every layer may use: devices and processes, console, files, timing, summaries.

- `parallel`: the device mesh, global batches, process helpers, `jax.distributed` set-up.
- `console`: what reaches the console and what only the full log (`DIR/logs/`).
- `cli`: flag parsing shared by the entry points (one-line errors for bad overrides).
- `files`: atomic writes and sha256 of files.
- `timing`: timed calls, FLOP and memory counts, chip peaks (jax and numpy only, so the
  device benchmark runs on a bare accelerator image).
- `images`: PNG sample grids; `summaries`: TensorBoard writers (clu).

May import: nothing of the package (the bottom layer, beside `assets`).
"""
