"""Confidence calibration: temperature scaling fitted on held-out logits, and the expected calibration error.

Numpy only, so that training, evaluation and monitoring can all use it without torch.
"""

from __future__ import annotations

import math

import numpy as np

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _check_logits_labels(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) array, got shape {logits.shape}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},) to match the logits, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be integer class indices in [0, {logits.shape[1]})")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values; check the model export before calibrating")
    return logits, labels.astype(np.int64)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` at the true labels."""
    logits, labels = _check_logits_labels(logits, labels)
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    bounds: tuple[float, float] = (MIN_TEMPERATURE, MAX_TEMPERATURE),
    tol: float = 1e-4,
) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    NLL is convex in ``1/T``, hence unimodal in ``log T``: a golden-section search on ``log T`` within ``bounds``
    finds the optimum to ``tol`` (relative). ``T > 1`` softens an over-confident model, ``T < 1`` sharpens one.
    """
    logits, labels = _check_logits_labels(logits, labels)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if not lo < hi:
        raise ValueError(f"bounds must be increasing and positive, got {bounds}")

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    loss_a, loss_b = loss(a), loss(b)
    while hi - lo > tol:
        if loss_a <= loss_b:
            hi, b, loss_b = b, a, loss_a
            a = hi - _GOLDEN * (hi - lo)
            loss_a = loss(a)
        else:
            lo, a, loss_a = a, b, loss_b
            b = lo + _GOLDEN * (hi - lo)
            loss_b = loss(b)
    return float(math.exp((lo + hi) / 2.0))


def calibrated_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """NLL at the temperature fitted on these logits: how well the model ranks and separates classes once calibrated,
    independent of its confidence scale (a fair way to compare models that are all served calibrated)."""
    return negative_log_likelihood(logits, labels, fit_temperature(logits, labels))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: confidence-weighted gap between accuracy and mean confidence over ``n_bins`` equal bins.

    ``probs`` are per-class probabilities (N, C) (rows sum to 1); bins are ``(k/n, (k+1)/n]``, the first includes 0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},) to match the probabilities, got {labels.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for k in np.unique(bins):
        in_bin = bins == k
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)
