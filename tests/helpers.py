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
