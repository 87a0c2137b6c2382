"""Adapters (§3.2, §4.2, Eqs. A1–A3): a small bottleneck added to a frozen Transformer.

    Hˡ_adapter = σ(Hˡ W1 + b1) W2 + b2      A1   W1 ∈ R^{d×r}, W2 ∈ R^{r×d}, r ≪ d, σ = ReLU
    Hˡ_output  = Hˡ + Hˡ_adapter            A2   (the adapter's own skip connection)
    min over {W1, b1, W2, b2} of (1/N) Σᵢ L(f_θ(xᵢ), yᵢ), pretrained θ frozen      A3

Shapes.  The document writes W1 H with W1 ∈ R^{d×r}; that product only
type-checks with tokens as rows, so here (as everywhere in minilm) H is
(…, T, d) and the product is H W1: (…, T, d)(d, r) → (…, T, r).  Same
matrices, same parameter count: 2dr + d + r.

Where they go (``placement``), in each of ``model.layers()`` — on a pre-LayerNorm GPT block
x → x + Attn(LN₁ x) → x + MLP(LN₂ x) as drawn here; a post-LN BERT layer has the same three
slots, each adapter applied to its sub-layer's output before the residual sum and LayerNorm:

* ``"output"``   — after each block's output, Hˡ ← Hˡ + adapter(Hˡ), as §3.2 of the course reads;
* ``"houlsby"``  — on both sub-layers' outputs, inside the residual (Houlsby et al. 2019):
                   x + Adapter(Attn(LN₁ x)), then x + Adapter(MLP(LN₂ x));
* ``"pfeiffer"`` — on the MLP's output only (Pfeiffer et al. 2020): half the adapters, about the same quality.

Initialisation (``init``): ``"near_identity"`` (default) draws W1 from N(0, 0.01²) and sets
W2 = 0, b = 0, so A2 is exactly the identity at step 0 and the adapted model
starts equal to the base; ``"xavier"`` and ``"normal"`` (N(0, 0.02²)) draw both
matrices, so the model starts slightly perturbed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from ..configs import check_fields
from ..nn import Module, Parameter, init
from ..tensor import Generator
from .base import PeftModule, freeze_base, layers_of, placement_device, register

PLACEMENTS = {"output": ("adapter_output",), "houlsby": ("adapter_attn", "adapter_mlp"),
              "pfeiffer": ("adapter_mlp",)}
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": F.tanh}


def bottleneck_size(d: int, r: int | None = None, reduction_factor: float | None = None) -> int:
    """r given directly, or as d / reduction_factor (Pfeiffer's convention, e.g. 16 → r = d/16)."""
    if (r is None) == (reduction_factor is None):
        raise ValueError(f"Adapter: give exactly one of r and reduction_factor, got r={r}, "
                         f"reduction_factor={reduction_factor}")
    if r is None:
        if reduction_factor <= 0:
            raise ValueError(f"Adapter: reduction_factor must be positive, got {reduction_factor}")
        r = max(1, int(round(d / reduction_factor)))
    if not 0 < r:
        raise ValueError(f"Adapter: bottleneck r must be positive, got {r}")
    return int(r)


class Adapter(PeftModule):
    """H ↦ H + σ(H W1 + b1) W2 + b2   (Eqs. A1–A2; H is (…, d), tokens as rows).

    Gradients (g = ∂L/∂output, z = H W1 + b1, a = σ(z)):
        ∂L/∂W2 = aᵀ g,  ∂L/∂b2 = Σ g,  ∂L/∂a = g W2ᵀ,  ∂L/∂z = ∂L/∂a ⊙ σ'(z),
        ∂L/∂W1 = Hᵀ ∂L/∂z,  ∂L/∂b1 = Σ ∂L/∂z,  ∂L/∂H = g + ∂L/∂z W1ᵀ   (the skip adds g)
    — each is the VJP of an op minilm already checks (linear, relu, add), so autograd composes them.
    """

    def __init__(self, d: int, r: int | None = None, reduction_factor: float | None = None,
                 activation: str = "relu", init_method: str = "near_identity",
                 generator: Generator | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Adapter: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        r = bottleneck_size(d, r, reduction_factor)
        self.d, self.r, self.activation, self.init_method = d, r, activation, init_method
        self.W1 = Parameter(np.zeros((d, r), np.float32))      # down-projection, d → r
        self.b1 = Parameter(np.zeros(r, np.float32))
        self.W2 = Parameter(np.zeros((r, d), np.float32))      # up-projection, r → d
        self.b2 = Parameter(np.zeros(d, np.float32))
        self.active = True
        if init_method == "near_identity":
            init.normal_(self.W1, 0.0, 0.01, generator)        # W2 = 0: A2 is the identity at step 0
        elif init_method == "xavier":
            init.xavier_uniform_(self.W1, generator=generator)
            init.xavier_uniform_(self.W2, generator=generator)
        elif init_method == "normal":
            init.normal_(self.W1, 0.0, 0.02, generator)
            init.normal_(self.W2, 0.0, 0.02, generator)
        else:
            raise ValueError(f"Adapter: init must be 'near_identity', 'xavier' or 'normal', got {init_method!r}")

    def forward(self, H):
        if not self.active:                                    # disable_adapters(): the base model
            return H
        if H.shape[-1] != self.d:
            raise ValueError(f"Adapter: input of shape {H.shape} does not fit d={self.d}")
        a = ACTIVATIONS[self.activation](F.linear(H, self.W1, self.b1))   # σ(H W1 + b1), (…, r)
        return H + F.linear(a, self.W2, self.b2)                        # A2: H + (A1), (…, d)

    def extra_repr(self):
        return f"d={self.d}, r={self.r}, σ={self.activation}"


@dataclass
class AdapterConfig:
    """How to add adapters: bottleneck r (or reduction_factor), placement, σ, init, and which
    other parameters stay trainable (glob patterns; a classifier's head is added automatically)."""
    r: int | None = None
    reduction_factor: float | None = None
    placement: str = "houlsby"
    activation: str = "relu"
    init: str = "near_identity"
    train_also: tuple = ()
    seed: int = 0
    method: str = "adapter"

    def __post_init__(self):
        check_fields(self)
        if (self.r is not None and self.r < 1) or (self.reduction_factor is not None and self.reduction_factor <= 0):
            raise ValueError(f"AdapterConfig: r must be ≥ 1 and reduction_factor > 0, got r={self.r}, "
                             f"reduction_factor={self.reduction_factor}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"AdapterConfig: placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}")
        if self.r is None and self.reduction_factor is None:
            self.r = 16
        self.train_also = tuple(self.train_also)

    def to_dict(self):
        return asdict(self)


@register(AdapterConfig)
def add_adapters(model: Module, config: AdapterConfig) -> Module:
    """Put an Adapter in the slots for ``config.placement`` of each of ``model.layers()`` and
    freeze everything else but other PEFT parameters, the task head and ``config.train_also`` (A3)."""
    gen = Generator(config.seed)
    layers = layers_of(model)
    taken = [f"block {i}: {slot}" for i, b in enumerate(layers) for slot in PLACEMENTS[config.placement]
             if getattr(b, slot) is not None]
    if taken:                                              # checked before anything is put in
        raise ValueError(f"add_adapters: these slots already hold adapters: {', '.join(taken)}")
    device, dtype = placement_device(model)
    for layer in layers:
        for slot in PLACEMENTS[config.placement]:
            adapter = Adapter(layer.adapter_width, config.r, config.reduction_factor, config.activation,
                              config.init, gen)
            setattr(layer, slot, adapter.to(device, dtype))
    freeze_base(model, config.train_also)
    return model
