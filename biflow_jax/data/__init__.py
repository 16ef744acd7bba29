"""Input data: grain pipelines (bundled MNIST, tfds, JPEG/PNG folders and tars, latent
array records), the resumable VAE latent cache, and decoding of image files.

May import: `runtime/` and `assets` only.
"""
