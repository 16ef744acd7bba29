"""Input data: grain pipelines (bundled MNIST, tfds, JPEG/PNG folders and tars, latent
array records), the resumable VAE latent cache, and decoding of image files; market
windows of daily log returns (`market`: data, split, condition; `market_space`: the
standardised, whitened space F models; `market_source`: the training job's source;
`market_files`: a user's prices or returns CSV).

May import: `runtime/` and `assets` only.
"""
