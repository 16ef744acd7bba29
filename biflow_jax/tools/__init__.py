"""One-command research and maintenance tools (`python -m biflow_jax.tools.<name>`):
ablations, device and memory benchmarks, latent caching, TARFlow export, the offline
classifiers and feature nets, the exported sampler's runner, the (w, t) sweep and its audit, the
z-sensitivity diagnosis, the market baselines, and packing/unpacking the shipped weights.

May import: anything of the package but `main`. `run_exported.py` is a standalone script
(jax and numpy only) that `modes/export.py` copies next to every export.
"""
