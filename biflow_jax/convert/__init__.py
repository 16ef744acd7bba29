"""Weight importers: PyTorch/timm/diffusers state dicts -> parameters of `models/`.

TARFlow (F), the SD VAE, LPIPS-VGG and ConvNeXt-V2, and the FID InceptionV3. Nothing is
downloaded; files are read with `state_dict.read_state_dict`.

May import: `models/` and `convert/` only.
"""
