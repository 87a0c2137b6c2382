"""LoRA (Hu et al. 2021, Eq. L1): a frozen weight plus a trained low-rank update.

    h = x W0 + b + (α/r) · dropout(x) A B            L1, row convention
        W0 ∈ R^{in×out} frozen,  A ∈ R^{in×r} random,  B ∈ R^{r×out} zero,  r ≪ min(in, out)

(The paper writes h = W0 x + B A x with column vectors; with tokens as rows the
same update is x A B, A = its Aᵀ and B = its Bᵀ.)  B = 0 makes the update zero
at step 0, so training starts from the pretrained model exactly; A is drawn
kaiming-uniform, U[−1/√in, 1/√in] (PEFT's default) or N(0, 1/r²) ("gaussian").
The update has r(in + out) parameters instead of in·out.

Merging.  x W0 + s·x A B = x (W0 + s·A B), s = α/r, so after training the update
can be folded into the weight — ``merge()`` — and the model serves with no extra
latency; ``unmerge()`` takes it back out.  The sum is formed in float64 and
rounded once; ``merge(keep_original=True)`` also keeps W0 so ``unmerge()``
restores it bit for bit.

Fused attention matrices.  A model names its Linear layers whose output columns
are q, k and v side by side in ``fused_qkv`` (GPT-2's ``c_attn``, d → 3d; BERT has
separate ``query``/``key``/``value`` and none).  On such a layer ``parts=("q", "v")``
(the paper's choice) adapts only the q and v column blocks: each part p has its own
A_p (d, r) and B_p (r, d).  Written as one update, A = [A_q A_v] (d, 2r) and
B = [[B_q 0 0], [0 0 B_v]] (2r, 3d), so
s·A B = [s A_q B_q | 0 | s A_v B_v]: a rank-2r LoRA of the whole matrix with
α' = 2α (so that α'/2r = α/r).  That is the form the forward pass uses and the
form :func:`minilm.peft.export_peft` writes.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import backend
from .. import functional as F
from ..configs import check_fields
from ..nn import Linear, Module, Parameter, init
from ..tensor import Generator, Tensor, no_grad
from .base import PeftModule, freeze_base, register

QKV = ("q", "k", "v")


class LoRALinear(PeftModule):
    """A Linear (in → out) with a LoRA update: x W0 + b + (α/r)·dropout(x) A B   (Eq. L1).

    ``weight`` and ``bias`` are the wrapped Linear's own Parameters (same objects,
    same names in the state dict), frozen.  Trained: ``lora_A`` (in, r) and
    ``lora_B`` (r, out), or ``lora_A_q``, ``lora_B_q``, … per part of a fused qkv matrix.

    Gradients (g = ∂L/∂h, u = dropout(x), s = α/r):
        ∂L/∂B = s (u A)ᵀ g,   ∂L/∂A = s uᵀ (g Bᵀ),   ∂L/∂x = g W0ᵀ + s·dropout'(g Bᵀ Aᵀ)
    — linear maps minilm checks one by one; autograd composes them.
    """

    def __init__(self, base: Linear, r: int, alpha: float, dropout: float = 0.0,
                 init_method: str = "kaiming", parts=None, generator: Generator | None = None):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"LoRALinear wraps a minilm.nn.Linear, got {type(base).__name__}")
        if r <= 0:
            raise ValueError(f"LoRA: rank r must be positive, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA: dropout must be in [0, 1), got {dropout}")
        n_in, n_out = base.in_features, base.out_features
        self.in_features, self.out_features = n_in, n_out
        self.weight, self.bias = base.weight, base.bias          # W0 and b: the base's own Parameters
        self.r, self.alpha, self.scaling = int(r), float(alpha), float(alpha) / r   # s = α/r
        self.dropout_p = float(dropout)
        self.parts = tuple(parts) if parts else None
        self.merged, self.active = False, True
        self._original = None                                    # W0, kept by merge(keep_original=True)
        self._base = (base,)                                     # a tuple: hidden from the module tree
        if self.parts:
            if n_out != 3 * n_in:
                raise ValueError(f"LoRA parts={self.parts} need a fused qkv Linear (out = 3·in), "
                                 f"got in={n_in}, out={n_out}")
            bad = [p for p in self.parts if p not in QKV]
            if bad or len(set(self.parts)) != len(self.parts):
                raise ValueError(f"LoRA parts must be distinct names from {QKV}, got {self.parts}")
            self.parts = tuple(p for p in QKV if p in self.parts)   # q, k, v order
            shapes = {p: ((n_in, r), (r, n_in)) for p in self.parts}
        else:
            shapes = {"": ((n_in, r), (r, n_out))}
        dev, dt = base.weight.device, base.weight.dtype
        for p, (a_shape, b_shape) in shapes.items():
            suffix = "_" + p if p else ""
            A = Parameter(np.zeros(a_shape, np.float32))
            if init_method == "kaiming":       # PEFT's default: kaiming_uniform(a=√5) on (r, in) → U[−1/√in, 1/√in]
                bound = 1.0 / math.sqrt(n_in)
                init.uniform_(A, -bound, bound, generator)
            elif init_method == "gaussian":    # PEFT's "gaussian": N(0, 1/r²)
                init.normal_(A, 0.0, 1.0 / r, generator)
            else:
                raise ValueError(f"LoRA: init must be 'kaiming' or 'gaussian', got {init_method!r}")
            setattr(self, "lora_A" + suffix, A)
            setattr(self, "lora_B" + suffix, Parameter(np.zeros(b_shape, np.float32)))   # B = 0
        for _, p in self.named_parameters():
            if p is not self.weight and p is not self.bias:
                p.data = backend.to_device(p.data, dev).astype(dt)

    def new_parameters(self):
        """The LoRA matrices only: W0 and b belong to the base (A3 keeps them frozen)."""
        return [p for _, p in self.named_parameters() if p is not self.weight and p is not self.bias]

    # ---- the update ---------------------------------------------------------------
    def lora_AB(self):
        """(A, B) of the whole update, s·A B of shape (in, out); for parts, A = [A_q A_v]
        (in, n·r) and B block-structured (n·r, 3·in) with zeros where a part is not adapted."""
        if not self.parts:
            return self.lora_A, self.lora_B
        d, r = self.in_features, self.r
        xp = backend.get_array_module(self.weight.data)
        As, Bs = [], []
        for p in self.parts:
            j = QKV.index(p)
            As.append(getattr(self, "lora_A_" + p))
            row = [getattr(self, "lora_B_" + p) if i == j else
                   Tensor(xp.zeros((r, d), dtype=self.weight.dtype)) for i in range(3)]
            Bs.append(F.concat(row, axis=1))                             # (r, 3d)
        return F.concat(As, axis=1), F.concat(Bs, axis=0)               # (d, n·r), (n·r, 3d)

    def delta_weight(self):
        """s·A B, (in, out): what merge() adds to W0."""
        A, B = self.lora_AB()
        return (A @ B) * self.scaling

    def forward(self, x):
        h = F.linear(x, self.weight, self.bias)                  # x W0 + b, (…, out)
        if self.merged or not self.active:
            return h
        u = F.dropout(x, self.dropout_p, self.training) if self.dropout_p else x
        A, B = self.lora_AB()
        return h + ((u @ A) @ B) * self.scaling                  # L1: + (α/r) · dropout(x) A B

    # ---- merge ------------------------------------------------------------------------
    def merge(self, keep_original: bool = False):
        """W0 ← W0 + s·A B, summed in float64 (or wider) and rounded once; forward then skips the update."""
        if self.merged:
            raise RuntimeError("LoRA: this layer is already merged; merging twice would add the update twice")
        if not self.active:
            raise RuntimeError("LoRA: cannot merge while adapters are disabled")
        with no_grad():
            dw = self.delta_weight().data
        W = self.weight.data
        wide = np.promote_types(W.dtype, np.float64)
        if keep_original:
            self._original = W.copy()
        self.weight.data = (W.astype(wide) + dw.astype(wide)).astype(W.dtype)
        self.merged = True
        return self

    def unmerge(self):
        """W ← W − s·A B (float64), or the kept W0 exactly; forward adds the update again."""
        if not self.merged:
            raise RuntimeError("LoRA: this layer is not merged")
        W = self.weight.data
        if self._original is not None:
            kept, self._original = self._original, None       # moved with the model since merge()?
            self.weight.data = backend.to_device(kept, self.weight.device).astype(W.dtype, copy=False)
        else:
            with no_grad():
                dw = self.delta_weight().data
            wide = np.promote_types(W.dtype, np.float64)
            self.weight.data = (W.astype(wide) - dw.astype(wide)).astype(W.dtype)
        self.merged = False
        return self

    def base_layer(self) -> Linear:
        """The wrapped Linear (sharing weight and bias with this layer)."""
        return self._base[0]

    def extra_repr(self):
        parts = f", parts={''.join(self.parts)}" if self.parts else ""
        return (f"{self.in_features}, {self.out_features}, r={self.r}, α={self.alpha:g}{parts}"
                f"{', merged' if self.merged else ''}")


@dataclass
class LoRAConfig:
    """Which Linear layers get LoRA and how.

    target_modules: module names, matched as PEFT does (a name equal to, or ending
    in ".<target>"), or glob patterns (``"transformer.h.*.attn.c_attn"``).
    parts: for a fused qkv Linear (one the model names in ``fused_qkv``, GPT-2's ``c_attn``),
    adapt only these of "q", "k", "v" (the paper's default is ("q", "v")); None adapts the
    whole matrix.  Other targets (``c_proj``, ``c_fc``) always get a whole-matrix update; parts
    with no fused qkv layer among the targets (BERT: target ``query`` and ``value`` instead)
    is an error.
    """
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple = ("c_attn",)
    parts: tuple | None = None
    init: str = "kaiming"
    train_also: tuple = ()
    seed: int = 0
    method: str = "lora"

    def __post_init__(self):
        check_fields(self)
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRAConfig: the rank r must be ≥ 1, alpha > 0 and dropout in [0, 1), got r={self.r}, "
                             f"alpha={self.alpha}, dropout={self.dropout}")
        self.target_modules = (self.target_modules,) if isinstance(self.target_modules, str) \
            else tuple(self.target_modules)
        self.parts = tuple(self.parts) if self.parts else None
        self.train_also = tuple(self.train_also)

    def to_dict(self):
        return asdict(self)


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) or fnmatch.fnmatchcase(name, t) for t in targets)


@register(LoRAConfig)
def add_lora(model: Module, config: LoRAConfig) -> Module:
    """Replace every Linear whose name matches ``config.target_modules`` by a LoRALinear
    around it (same weight objects, so base names and ties are unchanged), then freeze
    everything but PEFT parameters, the task head and ``config.train_also``.  ``config.parts``
    apply to the targets the model names in ``model.base_model.fused_qkv``."""
    gen = Generator(config.seed)
    chosen, wrapped_already = [], []
    for name, m in list(model.named_modules()):
        for attr, child in list(m.named_children()):
            full = f"{name}.{attr}" if name else attr
            if isinstance(child, Linear) and _matches(full, config.target_modules):
                chosen.append((m, attr, full, child))
            elif isinstance(child, LoRALinear) and _matches(full, config.target_modules):
                wrapped_already.append(full)
    if wrapped_already:
        raise ValueError(f"add_lora: the model already has LoRA on {wrapped_already[:8]}"
                         f"{' ...' if len(wrapped_already) > 8 else ''}; remove it first (peft.remove_peft) "
                         "or fold it into the weights (peft.merge_and_unload) to add another")
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, Linear)]
        raise KeyError(f"add_lora: no Linear matches target_modules={list(config.target_modules)}; "
                       f"the model's Linear layers include {linears[:8]}{' ...' if len(linears) > 8 else ''}")
    fused = tuple(getattr(getattr(model, "base_model", model), "fused_qkv", ()))
    if config.parts and not any(_matches(full, fused) for _, _, full, _ in chosen):
        raise ValueError(f"add_lora: parts={config.parts} adapt the q/k/v blocks of a fused qkv Linear, but none "
                         f"of the targets {[full for _, _, full, _ in chosen][:8]} is one (the fused qkv layers of "
                         f"{type(model).__name__}: {list(fused) or 'none'}); target the q/v projections by name "
                         "and leave parts=None")
    wrapped = [LoRALinear(child, config.r, config.alpha, config.dropout, config.init,
                          config.parts if _matches(full, fused) else None, gen)
               for parent, attr, full, child in chosen]       # all built (and checked) before any is put in
    for (parent, attr, _, _), layer in zip(chosen, wrapped):
        setattr(parent, attr, layer)
    freeze_base(model, config.train_also)
    return model


def lora_layers(model: Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def merge_lora(model: Module, keep_original: bool = False) -> Module:
    """merge() every LoRA layer: the model then runs at the base model's cost."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("merge_lora: the model has no LoRA layers")
    for _, m in layers:
        m.merge(keep_original)
    return model


def unmerge_lora(model: Module) -> Module:
    for _, m in lora_layers(model):
        m.unmerge()
    return model
