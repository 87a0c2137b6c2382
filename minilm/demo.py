"""A first training run: a two-layer MLP learns to tell two interleaved spirals apart.

Everything is minilm: the tensors, the forward pass, cross_entropy, backward()
and a plain gradient-descent step written out by hand (w ← w − lr · ∂L/∂w).
"""
from __future__ import annotations

import time

import numpy as np

import minilm
import minilm.functional as F


def spirals(n_per_class: int, rng: np.random.Generator):
    """Two spirals in the plane: points (x, y) and labels 0 / 1."""
    t = np.sqrt(rng.random(n_per_class)) * 3 * np.pi
    arms = []
    for label, phase in ((0, 0.0), (1, np.pi)):
        r = t / (3 * np.pi)
        pts = np.stack([r * np.cos(t + phase), r * np.sin(t + phase)], axis=1)
        arms.append((pts + 0.02 * rng.standard_normal(pts.shape), np.full(n_per_class, label)))
    x = np.concatenate([a[0] for a in arms]).astype(np.float32)
    y = np.concatenate([a[1] for a in arms]).astype(np.int64)
    return x, y


def run(steps: int = 300, device: str = "cpu", seed: int = 0, hidden: int = 64, lr: float = 0.5,
        log_every: int = 25, verbose: bool = True):
    rng = np.random.default_rng(seed)
    gen = minilm.Generator(seed)
    x_np, y_np = spirals(500, rng)
    x = minilm.tensor(x_np, device=device)
    y = minilm.tensor(y_np, device=device)

    def param(*shape, scale):
        return (minilm.randn(*shape, generator=gen, device=device) * scale).detach().requires_grad_()

    W1, b1 = param(2, hidden, scale=1.0), minilm.zeros(hidden, device=device, requires_grad=True)
    W2, b2 = param(hidden, hidden, scale=hidden ** -0.5), minilm.zeros(hidden, device=device, requires_grad=True)
    W3, b3 = param(hidden, 2, scale=hidden ** -0.5), minilm.zeros(2, device=device, requires_grad=True)
    params = [W1, b1, W2, b2, W3, b3]

    def forward(inp):
        h = F.tanh(inp @ W1 + b1)        # (N, 2) -> (N, hidden)
        h = F.relu(h @ W2 + b2)          # (N, hidden)
        return h @ W3 + b3               # (N, 2) logits

    start = time.perf_counter()
    history = []
    for step in range(steps + 1):
        loss = F.cross_entropy(forward(x), y)
        for p in params:
            p.grad = None
        loss.backward()
        with minilm.no_grad():
            for p in params:
                p.data -= lr * p.grad.data
        history.append(loss.item())
        if verbose and step % log_every == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    with minilm.no_grad():
        accuracy = float((forward(x).argmax(axis=-1) == y).numpy().mean())
    if verbose:
        print(f"trained {steps} steps in {time.perf_counter() - start:.1f}s on {device!r}: "
              f"loss {history[0]:.3f} -> {history[-1]:.3f}, accuracy {accuracy:.1%}")
    return history, accuracy
