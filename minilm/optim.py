"""Optimizers, learning-rate schedules and gradient clipping.

An optimizer holds *param groups*, as in PyTorch: lists of parameters that
share hyperparameters (``lr``, ``weight_decay``, …), so one model can train its
matrices with weight decay and its biases without.  ``step()`` reads each
parameter's gradient g = ∂L/∂p and updates ``p.data`` in place through the
parameter's own array module, so one body runs on every device.

The update rules, t counting steps from 1, λ the weight decay, η the lr:

    SGD     g ← g + λp;  b ← μb + g;  g ← g + μb (Nesterov) or g ← b;  p ← p − ηg
    Adam    g ← g + λp (L2 in the gradient);  Adam moments (below);  p ← p − η m̂/(√v̂ + ε)
    AdamW   p ← p − ηλp (decoupled);          Adam moments;          p ← p − η m̂/(√v̂ + ε)

    Adam moments:  m ← β₁m + (1−β₁)g    v ← β₂v + (1−β₂)g²    m̂ = m/(1−β₁ᵗ)    v̂ = v/(1−β₂ᵗ)
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, is_array, to_device, to_numpy
from .nn.layers import Embedding, LayerNorm, Linear
from .tensor import Tensor


class OptimizerStateError(ValueError):
    """An optimizer state dict that does not fit this optimizer's parameters."""


class Optimizer:
    """Base class: param groups, per-parameter state, zero_grad, state_dict.

    ``Optimizer(params, **defaults)``: ``params`` is an iterable of Parameters
    or a list of dicts ``{"params": [...], "lr": ..., ...}``; a key a group
    leaves out takes its value from ``defaults``.  Subclasses define
    ``_update(p, g, group, state)`` (one parameter, its gradient array, its
    group, its state dict) and name their per-parameter arrays in
    ``state_arrays``.
    """

    state_arrays: tuple = ()

    def __init__(self, params, **defaults):
        if isinstance(params, Tensor):
            raise TypeError("an optimizer takes an iterable of parameters (e.g. model.parameters()), not one tensor")
        groups = list(params)
        if not groups:
            raise ValueError("the optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}  # id(p) -> {"step": t, "exp_avg": m, ...}
        for group in groups:
            self.add_param_group(group)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError("the optimizer got an empty parameter list (every group is empty)")

    def add_param_group(self, group: dict):
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a param group is a dict with a 'params' list")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            where = f"param group {len(self.param_groups)}, parameter {i}"
            if not isinstance(p, Tensor):
                raise TypeError(f"{where} is a {type(p).__name__}, not a Parameter")
            if not p.is_leaf:
                raise ValueError(f"{where} is not a leaf tensor (it was computed by an op), so it cannot be optimized")
            if p.dtype.kind != "f":
                raise TypeError(f"{where} has dtype {p.dtype}; only floating-point parameters can be optimized")
            if id(p) in seen:
                raise ValueError(f"{where} appears twice in the optimizer (in this group or an earlier one)")
            seen.add(id(p))
        self.param_groups.append({**self.defaults, **group, "params": params})

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        """Forget every gradient: p.grad = None (the next backward() starts from zero)."""
        for p in self._params():
            p.grad = None

    def step(self):
        """One update of every parameter that requires grad and has one."""
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad
                if grad is None or not p.requires_grad:
                    continue
                self._update(p, grad.data, group, self.state.setdefault(id(p), {}))

    def _update(self, p, g, group, state):  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- state ---------------------------------------------------------------
    def state_dict(self) -> dict:
        """A copy of the state, PyTorch's layout with parameters as indices:

            {"optimizer": "Adam",
             "param_groups": [{"lr": ..., "betas": ..., "params": [0, 1, 2]}, ...],
             "state": {0: {"step": 3, "exp_avg": array, "exp_avg_sq": array}, ...}}

        Index i is the i-th parameter counting through the groups in order.
        Arrays are copies on the parameters' device; ``flatten_state_dict``
        turns the whole into host arrays + JSON for a safetensors file.
        """
        groups, state, index = [], {}, 0
        for group in self.param_groups:
            ids = list(range(index, index + len(group["params"])))
            for i, p in zip(ids, group["params"]):
                if id(p) in self.state:
                    state[i] = {k: v.copy() if is_array(v) else v for k, v in self.state[id(p)].items()}
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
            index += len(ids)
        return {"optimizer": type(self).__name__, "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict: dict):
        """Restore hyperparameters and per-parameter state from ``state_dict``.

        Everything is checked first: the optimizer type, the number of groups
        and of parameters in each, the state keys and every array's shape.
        Any mismatch raises one OptimizerStateError listing them all, and the
        optimizer is left unchanged.
        """
        problems = []
        kind = state_dict.get("optimizer")
        if kind != type(self).__name__:
            problems.append(f"it was saved by {kind}, this optimizer is {type(self).__name__}")
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            problems.append(f"it has {len(saved_groups)} param groups, this optimizer {len(self.param_groups)}")
        owner = {}  # saved index -> parameter
        for gi, (saved, own) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                problems.append(f"param group {gi} has {len(saved['params'])} parameters there, "
                                f"{len(own['params'])} here")
            missing = sorted(set(self.defaults) - set(saved))
            if missing:
                problems.append(f"param group {gi} lacks hyperparameters {missing}")
            owner.update(zip(saved["params"], own["params"]))
        for i, entry in state_dict.get("state", {}).items():
            p = owner.get(int(i))
            if p is None:
                problems.append(f"state for parameter {i}, which no param group lists")
                continue
            for k, v in entry.items():
                if k == "step":
                    continue
                if k not in self.state_arrays:
                    problems.append(f"parameter {i}: unknown state {k!r} ({type(self).__name__} keeps "
                                    f"{list(self.state_arrays)})")
                elif tuple(v.shape) != p.shape:
                    problems.append(f"parameter {i}: {k} has shape {tuple(v.shape)}, the parameter {p.shape}")
        if problems:
            raise OptimizerStateError(f"{type(self).__name__}.load_state_dict failed; nothing was changed.\n  "
                                      + "\n  ".join(problems))
        for saved, own in zip(saved_groups, self.param_groups):
            own.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, entry in state_dict.get("state", {}).items():
            p = owner[int(i)]
            self.state[id(p)] = {k: int(v) if k == "step" else _array_like(p, v) for k, v in entry.items()}


def _array_like(p, value):
    """A copy of ``value`` on p's device, in p's dtype."""
    value = value if is_array(value) else np.asarray(value)
    return to_device(value, p.device).astype(p.dtype, copy=True)


def flatten_state_dict(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer state dict as (arrays, meta): {"state.<i>.<name>": host ndarray}
    for a safetensors file, and a JSON-able dict with everything else."""
    arrays, scalars = {}, {}
    for i, entry in state_dict["state"].items():
        scalars[str(i)] = {}
        for k, v in entry.items():
            if is_array(v):
                arrays[f"state.{i}.{k}"] = np.ascontiguousarray(to_numpy(v))
            else:
                scalars[str(i)][k] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return arrays, {"optimizer": state_dict["optimizer"], "param_groups": groups, "state": scalars}


def unflatten_state_dict(arrays: dict, meta: dict) -> dict:
    """The inverse of ``flatten_state_dict``."""
    state = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in arrays.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise OptimizerStateError(f"optimizer array {key!r} is not named state.<index>.<name>")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    return {"optimizer": meta["optimizer"], "param_groups": [dict(g) for g in meta["param_groups"]], "state": state}


def _check(name, value, low=0.0, high=math.inf):
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum μ and L2 weight decay λ (as torch.optim.SGD):

        g ← g + λp
        b ← μb + g                  (b = 0 before the first step)
        g ← g + μb  (Nesterov)   or   g ← b
        p ← p − η g
    """

    state_arrays = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        _check("lr", lr)
        _check("momentum", momentum)
        _check("weight_decay", weight_decay)
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    def _update(self, p, g, group, state):
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        xp = get_array_module(p.data)
        if wd:
            g = g + wd * p.data
        if mu:
            b = state.setdefault("momentum_buffer", xp.zeros_like(p.data))
            b *= mu
            b += g
            g = g + mu * b if group["nesterov"] else b
        p.data -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015), L2 weight decay added to the gradient (as torch.optim.Adam):

        t ← t + 1
        g ← g + λp
        m ← β₁m + (1−β₁)g          v ← β₂v + (1−β₂)g²
        m̂ = m/(1−β₁ᵗ)              v̂ = v/(1−β₂ᵗ)
        p ← p − η m̂/(√v̂ + ε)

    With Adam the L2 term is divided by √v̂ like the rest of g, so weights with
    large gradients are decayed less; AdamW decouples it.
    """

    state_arrays = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        _check("lr", lr)
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        _check("eps", eps)
        _check("weight_decay", weight_decay)
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    def _update(self, p, g, group, state):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        xp = get_array_module(p.data)
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if wd and self.decoupled:
            p.data *= 1.0 - lr * wd                        # p ← p − ηλp
        elif wd:
            g = g + wd * p.data                            # g ← g + λp
        m *= b1
        m += (1.0 - b1) * g                                # m ← β₁m + (1−β₁)g
        v *= b2
        v += (1.0 - b2) * (g * g)                          # v ← β₂v + (1−β₂)g²
        # η m̂/(√v̂ + ε) with the bias corrections folded into scalars, as PyTorch does
        denom = xp.sqrt(v) / math.sqrt(1.0 - b2 ** t) + eps
        p.data -= (lr / (1.0 - b1 ** t)) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019; as torch.optim.AdamW):

        p ← p − ηλp                 (shrink the weights, independently of g)
        then Adam's update with g as it is:  p ← p − η m̂/(√v̂ + ε)
    """

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def param_groups_for_weight_decay(model, weight_decay: float) -> list[dict]:
    """Two param groups: decay for weight matrices, none for everything else.

    Decided by the type of the module holding each parameter:
      Linear       weight → decay, bias → no decay
      Embedding    weight → no decay (so a matrix tied to an embedding, such as
                   a GPT's LM head, is not decayed either: being an embedding wins)
      LayerNorm    weight, bias → no decay
      other types  their own parameters: matrices (ndim ≥ 2) decay, vectors don't
    Only trainable parameters (requires_grad) are listed, each exactly once, in
    the order of ``model.named_parameters()``.
    """
    decay, no_decay = set(), set()
    for _, m in model.named_modules():
        own = [p for _, p in m.named_parameters(recurse=False)]
        if isinstance(m, (Embedding, LayerNorm)):
            no_decay.update(id(p) for p in own)
        elif isinstance(m, Linear):
            decay.add(id(m.weight))
            no_decay.update(id(p) for p in own if p is not m.weight)
        else:
            for p in own:
                (decay if p.ndim >= 2 else no_decay).add(id(p))
    decay -= no_decay
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = ([p for _, p in named if id(p) in decay], [p for _, p in named if id(p) in no_decay])
    lost = [n for n, p in named if (id(p) in decay) == (id(p) in no_decay)]
    assert not lost, f"parameters not in exactly one weight-decay group: {lost}"
    return [{"params": groups[0], "weight_decay": weight_decay},
            {"params": groups[1], "weight_decay": 0.0}]


def warmup_cosine(step: int, max_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """The learning rate at ``step``: a linear warmup, then a cosine decay.

        step < w:           η_t = η · t/w                                  (0 at t = 0)
        w ≤ step ≤ T:       η_t = η_min + ½(1 + cos(π (t−w)/(T−w))) (η − η_min)
        step > T:           η_t = η_min
    with w = warmup_steps, T = max_steps.
    """
    if not 0 <= warmup_steps <= max_steps:
        raise ValueError(f"need 0 <= warmup_steps <= max_steps, got warmup_steps={warmup_steps}, "
                         f"max_steps={max_steps}")
    if step < warmup_steps:
        return lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


class LRScheduler:
    """Sets every group's lr from a schedule: lr_g(t) = base_lr_g · factor(t).

    base_lr_g is the group's lr when the scheduler is made; making it applies
    factor(0).  Call ``scheduler.step()`` after each ``optimizer.step()``, so
    that update t uses lr(t).  Its state is the step count and the base lrs
    (``factor`` is code, so it is not saved: rebuild it, then load the state).
    """

    def __init__(self, optimizer: Optimizer, factor):
        self.optimizer, self.factor = optimizer, factor
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self):
        f = self.factor(self.last_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self):
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict):
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"scheduler state has {len(state['base_lrs'])} base lrs, the optimizer "
                             f"{len(self.optimizer.param_groups)} param groups")
        self.last_step, self.base_lrs = int(state["last_step"]), list(state["base_lrs"])
        self._apply()


def warmup_cosine_scheduler(optimizer: Optimizer, max_steps: int, warmup_steps: int,
                            min_lr_ratio: float = 0.1) -> LRScheduler:
    """``warmup_cosine`` for every group, from its own lr down to min_lr_ratio · lr."""
    return LRScheduler(optimizer, lambda t: warmup_cosine(t, max_steps, 1.0, min_lr_ratio, warmup_steps))


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most max_norm.

        ‖g‖ = √(Σ_p Σ_i g_{p,i}²)      if ‖g‖ > max_norm:  g ← g · max_norm/(‖g‖ + 1e-6)

    In place; parameters without a gradient are skipped.  Returns ‖g‖ before
    clipping as a float.  A non-finite norm (inf / nan) is returned without
    touching the gradients, so the caller can see it and skip the step.
    """
    params = [params] if isinstance(params, Tensor) else list(params)
    grads = [p.grad.data for p in params if p.grad is not None]
    total = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total
