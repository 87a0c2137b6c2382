"""Knowledge distillation (Hinton et al. 2015, Eq. K1): a small student learns from a large teacher.

    L = (1 − λ) · CE(y, softmax(z_s)) + λ · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))      K1

z_s, z_t: student and teacher logits (the teacher frozen, run under no_grad);
y: the hard labels (next tokens, or classes); T: the temperature; λ: the weight
of the soft term.  A high T flattens the teacher's distribution, so the student
also learns how the teacher ranks the *wrong* answers ("dark knowledge").

Why T².  Write p = softmax(z_s/T), q = softmax(z_t/T).  For one row,

    ∂KL(q ‖ p)/∂z_s = (p − q) / T

so the soft term's gradient shrinks like 1/T — and, for large T, p − q ≈
(z_s − z_t)/(K·T) (K classes, zero-mean logits), so it shrinks like 1/T²
overall.  Multiplying by T² keeps the soft gradient's scale independent of T,
so changing T does not silently change the balance λ sets.  The full gradient
of K1 for one row (mean over the N rows counted):

    ∂L/∂z_s = [ (1 − λ)(softmax(z_s) − onehot(y)) + λ · T · (p − q) ] / N

Hidden-state terms (students as wide as the teacher): MSE(h_s, h_t) or
1 − cos(h_s, h_t) per position, between student layer l and its mapped teacher
layer, added with weight ``hidden_weight`` (DistilBERT's cosine loss).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import backend
from . import functional as F
from .configs import check_fields
from .function import Function, get_array_module
from .tensor import Tensor, is_grad_enabled, no_grad


def _log_softmax(xp, z):
    m = z.max(axis=-1, keepdims=True)
    s = z - m
    return s - xp.log(xp.exp(s).sum(axis=-1, keepdims=True))


class DistillationLoss(Function):
    """Eq. K1 as one op: forward the loss, backward the gradient derived in the module docstring.

    Inputs: z_s (N, K) student logits; z_t (N, K) teacher logits (a constant: no gradient);
    y (N,) integer labels (rows equal to ``ignore_index`` count in neither term) or None (λ = 1).
    With p = softmax(z_s/T), q = softmax(z_t/T), s = softmax(z_s), n counted rows:

        L        = (1 − λ)·(−1/n) Σ log s[y] + λ·T²·(1/n) Σ_rows Σ_k q_k (log q_k − log p_k)
        ∂L/∂z_s  = g · [(1 − λ)(s − onehot(y)) + λ·T·(p − q)] / n      on counted rows, 0 elsewhere
    """

    def forward(ctx, z_s, z_t, y=None, T=2.0, lam=0.5, ignore_index=-100):
        xp = get_array_module(z_s)
        zt = z_t.astype(z_s.dtype, copy=False)
        N, K = z_s.shape
        valid = xp.ones(N, dtype=bool) if y is None else (y != ignore_index)           # (N,)
        count = valid.sum().astype(z_s.dtype)
        n = xp.maximum(count, 1)
        log_p = _log_softmax(xp, z_s / T)                                 # log softmax(z_s/T), (N, K)
        log_q = _log_softmax(xp, zt / T)                                  # log softmax(z_t/T), (N, K)
        q = xp.exp(log_q)
        kl = ((q * (log_q - log_p)).sum(axis=-1) * valid).sum() / n       # mean KL(q ‖ p) over counted rows
        ce = xp.zeros((), dtype=z_s.dtype)
        log_s, y_safe = None, None
        if y is not None:
            log_s = _log_softmax(xp, z_s)                                 # log softmax(z_s), (N, K)
            y_safe = xp.where(valid, y, 0)
            ce = -(log_s[xp.arange(N), y_safe] * valid).sum() / n         # mean −log s[y]
        ctx.save_for_backward(log_p, q, log_s, y_safe, valid, n)
        ctx.T, ctx.lam = T, lam
        ctx.parts = {"ce": ce, "kl": kl}
        loss = (1.0 - lam) * ce + lam * T * T * kl
        # every row ignored: 0/0 = nan, as cross_entropy does
        return xp.where(count > 0, loss, xp.nan).astype(z_s.dtype)

    def backward(ctx, g):
        log_p, q, log_s, y_safe, valid, n = ctx.saved
        xp = get_array_module(log_p)
        T, lam = ctx.T, ctx.lam
        grad = (lam * T) * (xp.exp(log_p) - q)                            # λ·T·(p − q)
        if log_s is not None:
            s = xp.exp(log_s)                                             # softmax(z_s)
            s[xp.arange(s.shape[0]), y_safe] -= 1                         # s − onehot(y)
            grad += (1.0 - lam) * s
        grad *= valid[:, None] * (g / n)
        return grad, None


def distillation_loss(student_logits, teacher_logits, targets=None, T: float = 2.0, lam: float = 0.5,
                      ignore_index: int = -100, return_parts: bool = False):
    """Eq. K1.  Logits (..., K) for student and teacher (same shape); targets (...) ints or None.

    With targets=None only the soft term is used (λ is then taken as 1).  The teacher's
    logits are a constant: the loss never sends a gradient into the teacher.
    ``return_parts=True`` also returns {"ce": …, "kl": …} (floats, for logging).
    """
    if T <= 0:
        raise ValueError(f"distillation_loss: temperature T must be positive, got {T}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"distillation_loss: λ must be in [0, 1], got {lam}")
    zs = student_logits
    zt = teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits
    if tuple(zt.shape) != tuple(zs.shape):
        raise ValueError(f"distillation_loss: student logits {zs.shape} and teacher logits {tuple(zt.shape)} "
                         "differ in shape (same vocabulary / classes and positions are needed)")
    if backend.device_of(zt) != zs.device:
        raise ValueError(f"distillation_loss: student logits on {zs.device!r}, teacher's on "
                         f"{backend.device_of(zt)!r}")
    K = zs.shape[-1]
    lead = zs.shape[:-1]
    y = None
    if targets is not None:
        t = targets.data if isinstance(targets, Tensor) else backend.to_device(np.asarray(targets), zs.device)
        if tuple(t.shape) != tuple(lead):
            raise ValueError(f"distillation_loss: targets of shape {tuple(t.shape)} do not match logits {zs.shape}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"distillation_loss: targets must be integer labels, got {t.dtype}")
        y = t.reshape(-1)                                                    # (N,)
        ok = (y == ignore_index) | ((y >= 0) & (y < K))
        if not bool(ok.all()):
            bad = int(y[~ok][0])
            raise IndexError(f"distillation_loss: label {bad} outside [0, {K})")
    else:
        lam = 1.0
    zs2 = zs.reshape(-1, K)                                                  # (..., K) -> (N, K)
    op = DistillationLoss()
    loss = Tensor(op.forward(zs2.data, zt.reshape(-1, K), y, float(T), float(lam), int(ignore_index))) \
        if not (zs.requires_grad and is_grad_enabled()) else None
    if loss is None:
        loss = DistillationLoss.apply(zs2, zt.reshape(-1, K), y=y, T=float(T), lam=float(lam),
                                      ignore_index=int(ignore_index))
        op = loss._ctx
    if return_parts:
        return loss, {k: float(backend.to_numpy(v)) for k, v in op.parts.items()}
    return loss


def hidden_loss(h_s, h_t, kind: str = "cosine"):
    """Mean over positions of ‖h_s − h_t‖²/d ("mse") or 1 − cos(h_s, h_t) ("cosine"); h_t a constant."""
    if tuple(h_s.shape) != tuple(h_t.shape):
        raise ValueError(f"hidden_loss: student states {h_s.shape} vs teacher states {tuple(h_t.shape)}; "
                         "hidden-state terms need a student as wide as the teacher")
    ht = Tensor(h_t.data if isinstance(h_t, Tensor) else h_t)
    if kind == "mse":
        d = h_s - ht
        return (d * d).mean()
    if kind == "cosine":
        eps = 1e-8
        dot = (h_s * ht).sum(axis=-1)
        ns = F.sqrt((h_s * h_s).sum(axis=-1) + eps)
        nt = F.sqrt((ht * ht).sum(axis=-1) + eps)
        return (1.0 - dot / (ns * nt)).mean()
    raise ValueError(f"hidden_loss: kind must be 'mse' or 'cosine', got {kind!r}")


# ---- models: logits and hidden states ---------------------------------------------------------------
def width_and_depth(model) -> tuple[int, int]:
    """(d, L) of ``model``'s body: GPT's n_embd / n_layer, BERT's hidden_size / num_hidden_layers."""
    config = model.base_model.config
    for d, L in (("n_embd", "n_layer"), ("hidden_size", "num_hidden_layers")):
        if hasattr(config, d) and hasattr(config, L):
            return getattr(config, d), getattr(config, L)
    raise TypeError(f"distillation: cannot read the width and depth of a {type(model).__name__} "
                    f"(its body's config is a {type(config).__name__}, with neither n_embd/n_layer nor "
                    "hidden_size/num_hidden_layers)")


def logits_and_states(model, input_ids, attention_mask=None):
    """(logits, [H⁰ … Hᴸ]) through the model interface: a GPT's (B, T, V), a classifier's (B, C),
    a masked LM's (B, T, V); Hˡ the body's layer outputs before any final LayerNorm."""
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    if out.logits is None:
        raise TypeError(f"distillation: {type(model).__name__} returns no logits (a body without a head?); "
                        "distil a model with an LM or classification head")
    return out.logits, out.hidden_states


def student_from_teacher(teacher, layers):
    """A GPT with the teacher's width made of the teacher's blocks ``layers`` (DistilBERT's
    initialisation: take every other layer), with its embeddings and final LayerNorm."""
    from dataclasses import replace
    from .models import GPT
    gpt = teacher.base_model
    if not isinstance(gpt, GPT):
        raise TypeError(f"student_from_teacher: the teacher's body must be a minilm GPT, got {type(gpt).__name__}")
    L = gpt.config.n_layer
    layers = list(layers)
    bad = [l for l in layers if not 0 <= l < L]
    if bad or not layers:
        raise ValueError(f"student_from_teacher: layers {layers} must be a non-empty subset of 0..{L - 1}")
    student = GPT(replace(gpt.config, n_layer=len(layers)))
    state = {}
    for k, v in gpt.state_dict().items():
        if k.startswith("transformer.h."):
            i, rest = k[len("transformer.h."):].split(".", 1)
            if int(i) in layers:
                state[f"transformer.h.{layers.index(int(i))}.{rest}"] = v
        else:
            state[k] = v
    student.load_state_dict(state)
    return student.to(gpt.device)


@dataclass
class DistillConfig:
    T: float = 2.0
    lam: float = 0.5
    hidden_weight: float = 0.0       # > 0 adds hidden-state terms (same width only)
    hidden: str = "cosine"
    layer_map: tuple | None = None   # student layer l ↔ teacher layer layer_map[l]; default evenly spaced

    def __post_init__(self):
        check_fields(self)

    def to_dict(self):
        return asdict(self)


class Distiller:
    """Trains a student on K1 against a frozen teacher: ``loss, parts = distiller.loss(x, y)``.

    Teacher and student are any minilm models with logits (GPT, GPTClassifier, BertForMaskedLM,
    BertClassifier), read through the model interface (``logits_and_states``).

    The teacher runs under no_grad and in eval mode; its logits live only for the step
    (nothing of the teacher is stored across steps).
    """

    def __init__(self, teacher, student, config: DistillConfig = None):
        self.teacher, self.student, self.config = teacher, student, config or DistillConfig()
        self.teacher.eval()        # frozen: it runs under no_grad in loss(); its requires_grad flags are left alone
        c = self.config
        if c.hidden_weight:
            (dt, Lt), (ds, Ls) = width_and_depth(teacher), width_and_depth(student)
            if dt != ds:
                raise ValueError(f"Distiller: hidden-state terms need equal widths, teacher d={dt}, student d={ds}")
            self.layer_map = list(c.layer_map) if c.layer_map else \
                [round((l + 1) * Lt / Ls) - 1 for l in range(Ls)]           # student block l ↔ teacher block
            if len(self.layer_map) != Ls or not all(0 <= j < Lt for j in self.layer_map):
                raise ValueError(f"Distiller: layer_map {self.layer_map} must give a teacher block (0..{Lt - 1}) "
                                 f"for each of the student's {Ls} blocks")

    def loss(self, x, y=None, attention_mask=None):
        c = self.config
        with no_grad():
            z_t, h_t = logits_and_states(self.teacher, x, attention_mask)
        z_s, h_s = logits_and_states(self.student, x, attention_mask)
        loss, parts = distillation_loss(z_s, z_t, y, c.T, c.lam, return_parts=True)
        if c.hidden_weight:
            h = sum((hidden_loss(h_s[l + 1], h_t[j + 1], c.hidden) for l, j in enumerate(self.layer_map)),
                    start=hidden_loss(h_s[0], h_t[0], c.hidden))
            h = h * (1.0 / (len(self.layer_map) + 1))
            parts["hidden"] = h.item()
            loss = loss + h * c.hidden_weight
        return loss, parts
