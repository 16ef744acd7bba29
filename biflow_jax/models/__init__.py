"""The networks, as pure Flax Linen modules used through `apply`.

- `flow`: F (iTARFlow): forward pass with its trajectory, exact and fixed-point inverses,
  score denoising, the Gaussian NLL.
- `generator`: G, the bidirectional reverse model (1 NFE).
- `base_density`: F's base density over z (Gaussian, or unit-variance Student-t for heavy
  tails), its log-density, sampling and the cost of scaling z.
- `layers`: the Transformer pieces both share (attention, MLPs, patchify, precision).
- `layout`: stacked (`nn.scan`) <-> per-layer parameter layouts of F and G.
- `vae`: the Stable Diffusion VAE (latent ImageNet-256).
- `perceptual_nets`, `inception`: the frozen pretrained networks of the perceptual terms
  (LPIPS-VGG, ConvNeXt-V2) and of FID (InceptionV3); here, not in `objective/` or
  `evaluation/`, because the weight importers in `convert/` build them.

May import: nothing of the package but `models/` (test_architecture enforces it).
"""
