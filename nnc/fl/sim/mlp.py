"""The numpy MLP of the simulations: softmax regression or one hidden layer, minibatch SGD, distillation."""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["init_mlp", "forward", "predict", "evaluate", "minibatch_sgd", "train_local", "softmax",
           "predict_proba", "train_soft"]


# --------------------------------------------------------------------------------------------------------
# model: numpy MLP
# --------------------------------------------------------------------------------------------------------
def init_mlp(n_in: int, n_out: int, hidden: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised ``n_in -> hidden -> n_out`` MLP (``hidden=0``: softmax regression)."""
    rng = np.random.default_rng(seed)
    if hidden <= 0:
        return {"fc.weight": (rng.standard_normal((n_out, n_in)) * np.sqrt(1.0 / n_in)).astype(np.float32),
                "fc.bias": np.zeros(n_out, np.float32)}
    return {"fc1.weight": (rng.standard_normal((hidden, n_in)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            "fc1.bias": np.zeros(hidden, np.float32),
            "fc2.weight": (rng.standard_normal((n_out, hidden)) * np.sqrt(1.0 / hidden)).astype(np.float32),
            "fc2.bias": np.zeros(n_out, np.float32)}


def forward(p, x):
    if "fc.weight" in p:
        return x @ p["fc.weight"].T + p["fc.bias"], None
    h = np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0)
    return h @ p["fc2.weight"].T + p["fc2.bias"], h


def predict(p, x) -> np.ndarray:
    return forward(p, x)[0].argmax(1)


def evaluate(p, x, y) -> float:
    """Accuracy in [0, 1]."""
    return float((predict(p, x) == y).mean())


def minibatch_sgd(params, x, grad: Callable[[np.ndarray, np.ndarray], np.ndarray], *, epochs: int, lr: float,
                  batch: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Minibatch SGD for the MLPs of :func:`init_mlp`; returns new float32 parameters.

    ``grad(logits, idx)`` gives the loss gradient with respect to the logits of the batch ``x[idx]``
    (float32, already divided by the batch size); it is back-propagated through the one or two layers.
    """
    rng = rng or np.random.default_rng(0)
    p = {k: v.astype(np.float32).copy() for k, v in params.items()}
    n = len(x)
    for _ in range(epochs if n else 0):
        order = rng.permutation(n)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            xb = x[idx]
            logits, h = forward(p, xb)
            g = grad(logits, idx)
            if h is None:
                p["fc.weight"] -= lr * (g.T @ xb)
                p["fc.bias"] -= lr * g.sum(0)
            else:
                gh = (g @ p["fc2.weight"]) * (h > 0)
                p["fc2.weight"] -= lr * (g.T @ h)
                p["fc2.bias"] -= lr * g.sum(0)
                p["fc1.weight"] -= lr * (gh.T @ xb)
                p["fc1.bias"] -= lr * gh.sum(0)
    return p


def train_local(params, x, y, *, epochs: int = 1, lr: float = 0.05, batch: int = 32,
                rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Plain minibatch SGD on softmax cross-entropy; returns new float32 parameters."""

    def grad(logits, idx):
        yb = y[idx]
        logits = logits - logits.max(1, keepdims=True)
        pr = np.exp(logits)
        pr /= pr.sum(1, keepdims=True)
        pr[np.arange(len(yb)), yb] -= 1
        return (pr / len(yb)).astype(np.float32)

    return minibatch_sgd(params, x, grad, epochs=epochs, lr=lr, batch=batch, rng=rng)


# --------------------------------------------------------------------------------------------------------
# numpy model helpers for distillation
# --------------------------------------------------------------------------------------------------------
def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict_proba(p, x) -> np.ndarray:
    return softmax(forward(p, x)[0])


def train_soft(params, x, q, *, epochs: int = 1, lr: float = 0.05, batch: int = 32,
               rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Minibatch SGD on cross-entropy against soft targets ``q`` (distillation)."""
    return minibatch_sgd(params, x, lambda logits, idx: ((softmax(logits) - q[idx]) / len(idx)).astype(np.float32),
                         epochs=epochs, lr=lr, batch=batch, rng=rng)
