"""Perceptual distances for G's reverse loss: LPIPS-VGG and a ConvNeXt-V2 feature distance.

The networks are in `models/perceptual_nets.py`; this module turns them into weighted
terms of the reverse loss. `lpips_distance` is LPIPS; `convnext_distance` is this
project's design (documented there). `load_terms(config.perceptual)` builds the weighted
terms from weight files (`convert/perceptual.py` reads them; nothing is downloaded).
Numerics: config.perceptual.precision / .dtype (`numerics`); the distances are float32
whatever `dtype`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from biflow_jax.convert import perceptual as perceptual_convert
from biflow_jax.models import layers
from biflow_jax.models.perceptual_nets import (IMAGENET_MEAN, IMAGENET_STD, LPIPS, PRECISION,
                                               ConvNeXtV2, convnext_model)

Array = jax.Array


def lpips_distance(model: LPIPS, params, x0: Array, x1: Array) -> Array:
  """LPIPS(x0, x1) -> (batch,); NHWC in [-1, 1]; `params` = the module's 'params'."""
  return model.apply({'params': params}, x0, x1)



def convnext_inputs(x: Array, resize: int = 224) -> Array:
  """[-1, 1] NHWC images -> ImageNet-normalised, resized to (resize, resize)."""
  x = (x.astype(jnp.float32) + 1.0) * 0.5
  x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
  if resize and x.shape[1:3] != (resize, resize):
    x = jax.image.resize(x, (x.shape[0], resize, resize, x.shape[3]), 'bilinear',
                         antialias=False)
  return x


def convnext_distance(model: ConvNeXtV2, params, x0: Array, x1: Array,
                      resize: int = 224) -> Array:
  """ConvNeXt-V2 feature distance (this project's design) -> (batch,).

  x0, x1: NHWC in [-1, 1]. Both are mapped to [0, 1], normalised with the ImageNet
  mean/std, resized to resize x resize with `jax.image.resize(..., 'bilinear',
  antialias=False)` (half-pixel centres, 2 taps per axis like PyTorch's
  align_corners=False; skipped when already that size; resize=0 keeps the input size),
  and embedded with `pre_logits` (global pool + head LayerNorm, the features a
  classifier head would see). The distance is the mean over features of the squared
  difference, per sample. Differentiable in both arguments (the caller stops the
  target's gradient).
  """
  if x0.shape != x1.shape:
    raise ValueError(f'convnext_distance: image shapes differ: {x0.shape} vs {x1.shape}')
  batch = x0.shape[0]
  x = convnext_inputs(jnp.concatenate([x0, x1], axis=0), resize)
  feats = model.apply({'params': params}, x, method=ConvNeXtV2.pre_logits).astype(jnp.float32)
  return jnp.mean(jnp.square(feats[:batch] - feats[batch:]), axis=-1)


# ----------------------------------------------------------------------------- terms


@dataclasses.dataclass(frozen=True)
class PerceptualTerm:
  """One weighted perceptual term; `distance(params, x0, x1) -> (batch,)` is jit-safe.

  Pass `params` as a (traced) argument of the jitted step rather than closing over it,
  so the weights are not baked into the compiled program as constants.
  """
  name: str
  weight: float
  params: Any
  distance: Callable[[Any, Array, Array], Array]


def numerics(perceptual_cfg) -> tuple[Any, Any]:
  """(jax.lax.Precision, compute dtype) of the frozen loss nets from config.perceptual's
  `precision` ('highest' | 'high' | 'default') and `dtype` ('float32' | 'bfloat16' | ...);
  absent fields mean HIGHEST and float32. Unknown names are a ValueError naming the field."""
  precision = perceptual_cfg.get('precision', 'highest')
  dtype = perceptual_cfg.get('dtype', 'float32')
  if precision not in layers.PRECISIONS:
    raise ValueError(f'config.perceptual.precision={precision!r} is not one of '
                     f'{tuple(layers.PRECISIONS)}')
  if dtype not in layers.DTYPES:
    raise ValueError(f'config.perceptual.dtype={dtype!r} is not one of {tuple(layers.DTYPES)}')
  return layers.resolve_precision(precision), layers.resolve_dtype(dtype)


def lpips_term(weight: float, params, precision: Any = PRECISION,
               dtype: Any = jnp.float32) -> PerceptualTerm:
  return PerceptualTerm('lpips', weight, params,
                        functools.partial(lpips_distance,
                                          LPIPS(precision=precision, dtype=dtype)))


def convnext_term(weight: float, model: ConvNeXtV2, params, resize: int) -> PerceptualTerm:
  return PerceptualTerm('convnext', weight, params,
                        functools.partial(convnext_distance, model, resize=resize))


def term_weights(perceptual_cfg) -> tuple[float, float]:
  return (float(perceptual_cfg.get('lpips_weight', 0.0) or 0.0),
          float(perceptual_cfg.get('convnext_weight', 0.0) or 0.0))


def abstract_terms(perceptual_cfg) -> list[PerceptualTerm]:
  """`load_terms` with ShapeDtypeStruct params and no files (eval_shape, lowering, FLOPs)."""
  rng = jax.random.PRNGKey(0)
  terms = []
  lpips_weight, convnext_weight = term_weights(perceptual_cfg)
  precision, dtype = numerics(perceptual_cfg)
  if lpips_weight > 0:
    x = jnp.zeros((1, 64, 64, 3))
    terms.append(lpips_term(lpips_weight, jax.eval_shape(LPIPS().init, rng, x, x)['params'],
                            precision, dtype))
  if convnext_weight > 0:
    model = convnext_model(str(perceptual_cfg.get('convnext_variant', 'base')),
                           precision=precision, dtype=dtype)
    resize = int(perceptual_cfg.get('convnext_resize', 224))
    x = jnp.zeros((1, resize, resize, 3))
    terms.append(convnext_term(convnext_weight, model,
                                jax.eval_shape(model.init, rng, x)['params'], resize))
  return terms


def load_terms(perceptual_cfg) -> list[PerceptualTerm]:
  """The perceptual terms with weight > 0, weights loaded from config.perceptual.

  Fields: lpips_weight, lpips_weights ('file' or 'trunk,heads'; see `LPIPS_HOW_TO` in
  convert/perceptual.py), convnext_weight, convnext_weights, convnext_variant,
  convnext_resize, precision and dtype (the nets' numerics, `numerics`). A term with
  weight > 0 and no readable weights file raises FileNotFoundError naming the field.
  """
  terms = []
  lpips_weight, convnext_weight = term_weights(perceptual_cfg)
  precision, dtype = numerics(perceptual_cfg)
  if lpips_weight > 0:
    paths = perceptual_convert.existing_paths('lpips_weights', perceptual_cfg.get('lpips_weights'),
                                              perceptual_convert.LPIPS_HOW_TO)
    terms.append(lpips_term(lpips_weight, perceptual_convert.load_lpips_params(paths), precision,
                            dtype))
  if convnext_weight > 0:
    variant = str(perceptual_cfg.get('convnext_variant', 'base'))
    how_to = perceptual_convert.CONVNEXT_HOW_TO.format(variant=variant.removeprefix('convnextv2_'))
    paths = perceptual_convert.existing_paths('convnext_weights',
                                              perceptual_cfg.get('convnext_weights'), how_to)
    if len(paths) != 1:
      raise ValueError('config.perceptual.convnext_weights names one checkpoint file, got '
                       f'{len(paths)}: {[str(p) for p in paths]}')
    model, params = perceptual_convert.load_convnext_params(paths[0], variant)
    model = model.clone(precision=precision, dtype=dtype)
    terms.append(convnext_term(convnext_weight, model, params,
                               int(perceptual_cfg.get('convnext_resize', 224))))
  return terms
