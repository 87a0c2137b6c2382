"""minilm: a from-scratch framework for how language models are pretrained and
fine-tuned cheaply -- tensors and reverse-mode autograd on NumPy or CuPy.

    import minilm
    import minilm.functional as F

    x = minilm.randn(4, 3, requires_grad=True)
    loss = F.relu(x @ x.T).sum()
    loss.backward()          # x.grad now holds ∂loss/∂x
"""
from . import backend
from .tensor import (Generator, Tensor, arange, bool_, default_generator, enable_grad, float16,
                     float32, float64, int32, int64, is_grad_enabled, manual_seed, no_grad, ones,
                     ones_like, rand, randn, tensor, zeros, zeros_like)
from . import functional
from . import nn
from .function import Function
from .gradcheck import GradcheckError, gradcheck, gradcheck_module

__version__ = "0.1.0"

__all__ = [
    "Tensor", "tensor", "zeros", "ones", "zeros_like", "ones_like", "randn", "rand", "arange",
    "Generator", "manual_seed", "default_generator", "no_grad", "enable_grad", "is_grad_enabled",
    "float16", "float32", "float64", "int32", "int64", "bool_",
    "Function", "functional", "nn", "gradcheck", "gradcheck_module", "GradcheckError", "backend",
]
