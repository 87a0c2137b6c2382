"""In-place initialisers for parameters (under no_grad, seedable)."""
from __future__ import annotations

import math

from ..tensor import Generator, default_generator


def _rng(param, generator):
    return (generator or default_generator).on(param.device)


def normal_(param, mean: float = 0.0, std: float = 1.0, generator: Generator | None = None):
    """param ~ N(mean, std²)"""
    param.data = _rng(param, generator).normal(param.shape, param.dtype) * std + mean
    param.data = param.data.astype(param.dtype, copy=False)
    return param


def uniform_(param, low: float, high: float, generator: Generator | None = None):
    """param ~ U[low, high)"""
    param.data = (_rng(param, generator).uniform(param.shape, param.dtype) * (high - low) + low).astype(param.dtype)
    return param


def zeros_(param):
    param.data = param.data * 0
    return param


def ones_(param):
    param.data = param.data * 0 + 1
    return param


def xavier_uniform_(param, gain: float = 1.0, generator: Generator | None = None):
    """U[−a, a], a = gain·√(6 / (fan_in + fan_out)): keeps activations' variance through a layer."""
    fan_in, fan_out = param.shape[0], param.shape[-1]
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -a, a, generator)
