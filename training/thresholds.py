"""Decision thresholds tuned on validation: per-label sigmoid thresholds (multi-label) and a
confidence threshold that rejects a text as out-of-scope (CLINC150).

Pure numpy on scores, so they are tested on synthetic scores with a known answer.
"""

from __future__ import annotations

import numpy as np

# Candidate thresholds: a grid fine enough for F1, coarse enough that ties stay stable.
GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def tune_label_thresholds(
    probs: np.ndarray, y_true: np.ndarray, grid: np.ndarray = GRID, default: float = 0.5
) -> list[float]:
    """For each label, the grid threshold that maximises that label's F1 on (N, L)
    probabilities vs 0/1 truth. A label with no positive row keeps `default` (no evidence);
    ties go to the threshold closest to `default`."""
    probs, y_true = np.asarray(probs), np.asarray(y_true).astype(bool)
    pred = probs[None, :, :] >= grid[:, None, None]  # (G, N, L)
    tp = (pred & y_true).sum(axis=1)  # (G, L)
    fp = (pred & ~y_true).sum(axis=1)
    fn = (~pred & y_true).sum(axis=1)
    f1 = _f1(tp, fp, fn)  # (G, L)
    out = []
    closeness = -np.abs(grid - default)
    for label in range(probs.shape[1]):
        if not y_true[:, label].any():
            out.append(default)
            continue
        best = f1[:, label].max()
        candidates = np.flatnonzero(np.isclose(f1[:, label], best))
        out.append(float(grid[candidates[np.argmax(closeness[candidates])]]))
    return out


def reject_below(probs: np.ndarray, threshold: float, oos_index: int) -> np.ndarray:
    """Argmax labels, replaced by the out-of-scope label where the top probability is below
    `threshold`."""
    pred = probs.argmax(axis=-1)
    return np.where(probs.max(axis=-1) < threshold, oos_index, pred)


def tune_rejection_threshold(
    probs: np.ndarray, y_true: np.ndarray, oos_index: int, grid: np.ndarray | None = None
) -> float:
    """The confidence threshold that maximises the mean of in-scope accuracy and out-of-scope
    recall on validation. The mean, not overall accuracy: CLINC150's validation split has 30x
    more in-scope rows, so accuracy alone would rather never reject. Ties go to the lowest
    threshold (reject as little as possible)."""
    probs, y_true = np.asarray(probs), np.asarray(y_true)
    grid = np.round(np.arange(0.0, 1.0, 0.01), 2) if grid is None else grid
    in_scope, oos = y_true != oos_index, y_true == oos_index
    best_t, best = 0.0, -1.0
    for t in grid:
        pred = reject_below(probs, float(t), oos_index)
        acc = (pred[in_scope] == y_true[in_scope]).mean() if in_scope.any() else 0.0
        recall = (pred[oos] == oos_index).mean() if oos.any() else 0.0
        score = (acc + recall) / 2
        if score > best + 1e-12:
            best_t, best = float(t), score
    return best_t
