"""Shared helpers: build tensors on a device from host arrays, read them back."""
import numpy as np

import minilm
from minilm import backend


def to_tensor(a, device, requires_grad=False, noncontiguous=False):
    """A leaf tensor on ``device`` holding the host array ``a``.

    With ``noncontiguous`` (and ndim ≥ 2) the tensor's array is a transposed
    view of a contiguous device array: same values, non-contiguous strides.
    """
    a = np.asarray(a)
    if noncontiguous and a.ndim >= 2:
        base = backend.to_device(np.ascontiguousarray(np.swapaxes(a, -1, -2)), device)
        data = base.swapaxes(-1, -2)
    else:
        data = backend.to_device(np.array(a), device)
    return minilm.Tensor(data, requires_grad=requires_grad)


def host(x):
    """A tensor or device array as a host NumPy array."""
    if isinstance(x, minilm.Tensor):
        x = x.data
    return backend.to_numpy(x)


# ---- tiny models, shared by the model, PEFT, pruning and distillation tests -----------------------------
# Each test file names its sizes (a dict of config fields) and builds through these, so how a tiny model
# is made (seeded generator, dtype, device) is written once.

def tiny_gpt(device="cpu", seed=0, dtype=None, **config):
    """A GPT of the given GPTConfig fields, initialised from Generator(seed), then cast and moved."""
    from minilm.models import GPT, GPTConfig
    m = GPT(GPTConfig(**config), generator=minilm.Generator(seed))
    if dtype is not None:
        m.to(dtype=dtype)
    return m.to(device)


def tiny_bert(device="cpu", seed=0, dtype=None, perturb=True, **config):
    """A Bert of the given BertConfig fields; ``perturb`` gives biases and LayerNorm gains random
    values (on the host, before moving), so that a mistake in any of them shows."""
    from minilm.models import Bert, BertConfig
    m = Bert(BertConfig(**config), generator=minilm.Generator(seed))
    if dtype is not None:
        m.to(dtype=dtype)
    if perturb:
        rng = np.random.default_rng(seed + 1)
        for name, p in m.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.data = p.data + 0.1 * rng.standard_normal(p.shape).astype(p.dtype)
    return m.to(device)


def token_ids(shape, high, device="cpu", seed=0, low=0):
    """Random integer ids in [low, high) as a Tensor on ``device``."""
    return to_tensor(np.random.default_rng(seed).integers(low, high, size=shape), device)


def randomize(model, seed=0, scale=0.2, only=None, trainable_only=True):
    """Overwrite parameters (trainable ones, or all; those whose name contains ``only``) with random
    values: zero-initialised biases or LoRA B matrices would hide mistakes."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if (p.requires_grad or not trainable_only) and (only is None or only in name):
            p.data = backend.to_device((rng.standard_normal(p.shape) * scale).astype(host(p).dtype), p.device)


def snapshot(model):
    """{name: host copy} of every parameter."""
    return {n: host(p).copy() for n, p in model.named_parameters()}


def logits_of(model, *args, **kwargs):
    """The model's logits as a host array, under no_grad."""
    with minilm.no_grad():
        return host(model(*args, **kwargs).logits).copy()
