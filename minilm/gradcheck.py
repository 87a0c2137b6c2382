"""Check a backward pass against central differences, in float64.

For y = f(x₁, …, xₖ) the analytic side is reverse mode, Jᵀv; the numeric side
is the central difference

    (f(x + εu) − f(x − εu)) / 2ε  =  J u + O(ε²).

Small problems compare the whole Jacobian, entry by entry.  Large ones compare
the scalar vᵀ J u computed both ways for random directions u and v, then a few
single entries (u = eᵢ) so that a failure can still name an element.
"""
from __future__ import annotations

import itertools

import numpy as np

from . import backend
from .tensor import Tensor, no_grad


__all__ = ["gradcheck", "gradcheck_module", "GradcheckError"]


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with central differences."""


def _eval(fn, inputs):
    with no_grad():
        y = fn(*inputs)
    return y.data


def _replace(inputs, i, data):
    out = list(inputs)
    out[i] = Tensor(data)
    return out


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              full_limit: int = 256, n_directions: int = 3, n_entries: int = 4, seed: int = 0) -> bool:
    """Raise GradcheckError unless fn's backward matches central differences.

    fn      takes the tensors in ``inputs`` and returns one tensor (any shape).
    inputs  tensors; those with requires_grad=True are checked, and must be float64.
    The whole Jacobian is compared when every checked input and the output have
    at most ``full_limit`` elements; otherwise ``n_directions`` random vᵀJu and
    ``n_entries`` random entries of Jᵀv per input.  Agreement means
    |analytic − numeric| ≤ atol + rtol·|numeric|.
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = list(inputs)
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; central differences need float64")
    saved_grads = [inputs[i]._grad for i in checked]
    rng = np.random.default_rng(seed)
    try:
        y = fn(*inputs)
        if not isinstance(y, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor, got {type(y).__name__}")
        xp = backend.get_array_module(y.data)
        device = y.device
        small = y.numel() <= full_limit and all(inputs[i].numel() <= full_limit for i in checked)
        if small:
            _full_jacobian(fn, inputs, checked, y, xp, eps, atol, rtol)
        else:
            _directions(fn, inputs, checked, y, xp, device, rng, eps, atol, rtol, n_directions, n_entries)
    finally:
        for i, g in zip(checked, saved_grads):
            inputs[i]._grad = g
    return True


def _fail(i, x_index, out_index, analytic, numeric, what):
    raise GradcheckError(
        f"gradcheck failed for input {i} at element {x_index}{out_index}: "
        f"{what} analytic {analytic:.10g} vs numeric {numeric:.10g} "
        f"(difference {abs(analytic - numeric):.3g})")


def _close(a, n, atol, rtol):
    return abs(a - n) <= atol + rtol * abs(n) and np.isfinite(a) == np.isfinite(n)


def _full_jacobian(fn, inputs, checked, y, xp, eps, atol, rtol):
    out_shape = y.shape
    n_out = y.numel()
    analytic = {i: np.zeros((n_out, inputs[i].numel())) for i in checked}
    for o in range(n_out):
        for i in checked:
            inputs[i]._grad = None
        e = np.zeros(n_out)
        e[o] = 1.0
        y.backward(backend.to_device(e.reshape(out_shape).astype(y.dtype), y.device), retain_graph=True)
        for i in checked:
            g = inputs[i]._grad
            analytic[i][o] = 0.0 if g is None else backend.to_numpy(g).reshape(-1)  # (n_in,)
    for i in checked:
        x = inputs[i]
        base = x.data
        for j, idx in enumerate(itertools.product(*map(range, x.shape))):
            step = xp.zeros(x.shape, dtype=x.dtype)
            step[idx] = eps
            f_plus = backend.to_numpy(_eval(fn, _replace(inputs, i, base + step))).reshape(-1)
            f_minus = backend.to_numpy(_eval(fn, _replace(inputs, i, base - step))).reshape(-1)
            numeric = (f_plus - f_minus) / (2 * eps)  # column j of J, (n_out,)
            for o in range(n_out):
                a, n = analytic[i][o, j], numeric[o]
                if not _close(a, n, atol, rtol):
                    out_index = np.unravel_index(o, out_shape) if out_shape else ()
                    _fail(i, idx, f" (output element {tuple(int(k) for k in out_index)})", a, n, "∂y/∂x:")


def _directions(fn, inputs, checked, y, xp, device, rng, eps, atol, rtol, n_directions, n_entries):
    v_host = rng.standard_normal(y.shape)
    v = backend.to_device(v_host.astype(y.dtype), device)
    for i in checked:
        inputs[i]._grad = None
    y.backward(v, retain_graph=True)
    for i in checked:
        x = inputs[i]
        g = inputs[i]._grad
        g_host = np.zeros(x.shape) if g is None else backend.to_numpy(g)  # Jᵢᵀ v
        if g_host.shape != tuple(x.shape):
            raise GradcheckError(f"gradcheck failed for input {i}: gradient of shape {g_host.shape} "
                                 f"for an input of shape {x.shape}")
        if x.numel() == 0:
            continue                   # an empty input (a pruned-away width): no entry to perturb
        base = x.data

        def v_dot_Ju(u_host):
            u = backend.to_device(u_host, device)
            f_plus = backend.to_numpy(_eval(fn, _replace(inputs, i, base + eps * u)))
            f_minus = backend.to_numpy(_eval(fn, _replace(inputs, i, base - eps * u)))
            return float((v_host * (f_plus - f_minus)).sum() / (2 * eps))

        for k in range(n_directions):
            u_host = rng.standard_normal(x.shape)
            a = float((g_host * u_host).sum())
            n = v_dot_Ju(u_host)
            if not _close(a, n, atol * np.sqrt(x.numel()), rtol):
                raise GradcheckError(
                    f"gradcheck failed for input {i} (shape {x.shape}) along random direction {k}: "
                    f"vᵀJu analytic {a:.10g} vs numeric {n:.10g} (difference {abs(a - n):.3g})")
        for _ in range(n_entries):
            idx = tuple(int(rng.integers(n)) for n in x.shape)
            e = np.zeros(x.shape)
            e[idx] = 1.0
            a = float(g_host[idx])
            n = v_dot_Ju(e)
            if not _close(a, n, atol, rtol):
                _fail(i, idx, "", a, n, "(Jᵀv):")


def gradcheck_module(module, inputs=(), fn=None, **kwargs) -> bool:
    """gradcheck a Module with respect to its inputs *and* its trainable parameters.

    The module must hold float64 parameters (``module.double()``).  ``fn``
    maps the module's output to the tensor that is checked (default: the
    output itself; use e.g. ``lambda out: out.loss`` for a model's ModelOutput).
    """
    from .nn.module import functional_call

    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in trainable], [p for _, p in trainable]
    inputs = list(inputs)
    n_in = len(inputs)
    fn = fn or (lambda out: out)

    def call(*tensors):
        out = functional_call(module, dict(zip(names, tensors[n_in:])), *tensors[:n_in])
        return fn(out)

    return gradcheck(call, inputs + list(params), **kwargs)
