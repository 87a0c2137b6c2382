"""Prefix-Tuning (Li & Liang 2021, Eq. P1): learned keys and values in front of every layer's.

In layer l, with the layer's own K, V ∈ R^{T×d} from the tokens,

    K' = [P_K^l ; K],   V' = [P_V^l ; V],   P_K^l, P_V^l ∈ R^{m×d}          P1
    Attn(Q, K', V') = softmax(Q K'ᵀ/√d_h + M) V'

The queries are unchanged (the prefix produces no output positions), and every
position may attend to the whole prefix: the causal mask M applies only to the
T real keys (the attention kernel's ``n_prefix``), and a padding mask never
hides a prefix key.  Only P = {P_K^l, P_V^l} is trained: m·L·2·d numbers.

Reparameterisation.  Optimising P directly is unstable (the paper, §4.3), so
during training P = MLP(P′) = tanh(P′ W₁ + b₁) W₂ + b₂ with a small P′ ∈ R^{m×d}
(an Embedding of the m prefix positions) and W₂ producing all L layers' keys and
values at once.  After training the MLP is evaluated once and thrown away:
``fold()`` replaces it by the flat P it computes, which is what is saved.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import functional as F
from ..configs import check_fields
from ..nn import Embedding, Linear, Module, Parameter, init
from ..tensor import Generator, no_grad
from .base import PeftModule, freeze_base, layers_of, placement_device, register


class PrefixEncoder(PeftModule):
    """Per-layer prefix keys and values for a model with L layers, H heads of size d/H.

    ``self(B)`` returns a list of L pairs (P_K, P_V), each (B, H, m, d/H), ready for an
    attention's ``prefix_kv`` (GPT's CausalSelfAttention, BERT's BertSelfAttention).  Flat:
    one Parameter ``prefix`` of shape (L, 2, m, d).  Reparameterised: ``wte`` (m, d) → Linear(d, hidden) → tanh →
    Linear(hidden, L·2·d).
    """

    def __init__(self, n_layer: int, n_head: int, d: int, m: int, hidden: int | None = None,
                 init_std: float = 0.02, generator: Generator | None = None):
        super().__init__()
        if m <= 0:
            raise ValueError(f"Prefix-Tuning: prefix length m must be positive, got {m}")
        if d % n_head:
            raise ValueError(f"Prefix-Tuning: d={d} is not divisible by n_head={n_head}")
        self.n_layer, self.n_head, self.d, self.m, self.hidden = n_layer, n_head, d, m, hidden
        self.active = True
        if hidden:                                             # P = MLP(P′), trained; folded for saving
            self.wte = Embedding(m, d, generator=generator)    # P′: one row per prefix position
            init.normal_(self.wte.weight, 0.0, init_std * 10, generator)
            self.mlp_in = Linear(d, hidden, generator=generator)
            self.mlp_out = Linear(hidden, n_layer * 2 * d, generator=generator)
            init.normal_(self.mlp_out.weight, 0.0, init_std, generator)
            init.zeros_(self.mlp_out.bias)
            self.prefix = None
        else:
            self.prefix = init.normal_(Parameter(np.zeros((n_layer, 2, m, d), np.float32)), 0.0, init_std,
                                       generator)

    @property
    def reparameterized(self) -> bool:
        return self.prefix is None

    def flat(self):
        """P as a (L, 2, m, d) tensor: the Parameter itself, or MLP(P′) reshaped."""
        if not self.reparameterized:
            return self.prefix
        L, m, d = self.n_layer, self.m, self.d
        p = self.mlp_out(F.tanh(self.mlp_in(self.wte.weight)))           # (m, L·2·d)
        return p.reshape(m, L, 2, d).permute(1, 2, 0, 3)                # (m, L, 2, d) -> (L, 2, m, d)

    def forward(self, batch_size: int):
        L, H, m, d = self.n_layer, self.n_head, self.m, self.d
        P = self.flat()                                                  # (L, 2, m, d)
        P = P.reshape(L, 2, m, H, d // H).permute(0, 1, 3, 2, 4)         # (L, 2, H, m, hs)
        P = F.broadcast_to(P.reshape(L, 2, 1, H, m, d // H), (L, 2, batch_size, H, m, d // H))
        return [(P[l, 0], P[l, 1]) for l in range(L)]                    # L × 2 × (B, H, m, hs)

    def fold(self):
        """Evaluate the reparameterisation once and keep only the flat P (what is saved)."""
        if not self.reparameterized:
            return self
        with no_grad():
            flat = self.flat().data.copy()
        del self.wte, self.mlp_in, self.mlp_out
        self.prefix = Parameter(flat)
        self.hidden = None
        return self

    def num_saved_parameters(self) -> int:
        """m·L·2·d: the size of the flat prefix, what remains after folding."""
        return self.n_layer * 2 * self.m * self.d

    def extra_repr(self):
        how = f"reparameterized, hidden={self.hidden}" if self.reparameterized else "flat"
        return f"layers={self.n_layer}, m={self.m}, d={self.d}, {how}"


@dataclass
class PrefixConfig:
    """m prefix vectors per layer; ``hidden`` > 0 trains them through the MLP reparameterisation."""
    m: int = 10
    hidden: int | None = 256
    init_std: float = 0.02
    train_also: tuple = ()
    seed: int = 0
    method: str = "prefix"

    def __post_init__(self):
        check_fields(self)
        if self.m < 1 or (self.hidden is not None and self.hidden < 0) or self.init_std < 0:
            raise ValueError(f"PrefixConfig: m must be positive, hidden ≥ 0 (or null) and init_std ≥ 0, got m={self.m}, "
                             f"hidden={self.hidden}, init_std={self.init_std}")
        self.train_also = tuple(self.train_also)

    def to_dict(self):
        return asdict(self)


@register(PrefixConfig)
def add_prefix(model: Module, config: PrefixConfig) -> Module:
    """Attach a PrefixEncoder to the model's body (``model.base_model.prefix``: GPT or Bert), its
    keys shaped as ``model.attention_shape(l)`` says, and freeze the rest (P1)."""
    body = getattr(model, "base_model", model)
    if not hasattr(body, "prefix"):
        raise TypeError(f"add_prefix: {type(body).__name__} has no prefix slot (its attention takes no prefix_kv)")
    if body.prefix is not None:
        raise ValueError("add_prefix: the model already has a prefix")
    L = len(layers_of(model))
    shapes = [tuple(model.attention_shape(l)) for l in range(L)]         # (heads, head size) per layer
    if len(set(shapes)) != 1:
        raise ValueError(f"add_prefix: the layers' attention shapes (heads, head size) differ, {shapes} "
                         "(a head-pruned model); one PrefixEncoder needs the same heads in every layer")
    H, hs = shapes[0]
    if H == 0:
        raise ValueError(f"add_prefix: {type(body).__name__}'s layers have no attention heads left to take a prefix")
    device, dtype = placement_device(model)
    body.prefix = PrefixEncoder(L, H, H * hs, config.m, config.hidden, config.init_std,
                                Generator(config.seed)).to(device, dtype)
    freeze_base(model, config.train_also)
    return model
