"""Class scores: softmax probabilities from logits, and the best k classes with their names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["softmax", "top_k"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Logits along the last axis -> probabilities, computed in float64."""
    shifted = np.exp(np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    """One image's ``k`` most probable classes, best first (ties: the lower index): class, label and score."""
    probabilities = np.asarray(probabilities).reshape(-1)
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"class": int(i), "label": labels[i] if i < len(labels) else str(i), "score": float(probabilities[i])}
            for i in order]
