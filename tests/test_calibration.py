"""Temperature scaling and ECE on synthetic logits whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from pawfinder.calibration import (
    calibrated_nll,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels sampled FROM softmax(logits): calibrated by construction (T = 1)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(20_000, 10))
    probs = _softmax(logits)
    labels = (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_distortion(calibrated: tuple[np.ndarray, np.ndarray], scale: float) -> None:
    logits, labels = calibrated
    temperature = fit_temperature(logits * scale, labels)
    assert temperature == pytest.approx(scale, rel=0.05)


def test_temperature_lowers_nll_and_ece_of_an_overconfident_model(calibrated: tuple[np.ndarray, np.ndarray]) -> None:
    logits, labels = calibrated
    overconfident = logits * 3.0
    temperature = fit_temperature(overconfident, labels)
    before = expected_calibration_error(_softmax(overconfident), labels)
    after = expected_calibration_error(_softmax(overconfident / temperature), labels)
    assert before > 0.1
    assert after < 0.02
    assert negative_log_likelihood(overconfident, labels, temperature) < negative_log_likelihood(overconfident, labels)


def test_calibrated_nll_ignores_the_confidence_scale_but_not_the_ranking(
    calibrated: tuple[np.ndarray, np.ndarray],
) -> None:
    logits, labels = calibrated
    reference = calibrated_nll(logits, labels)
    assert reference == pytest.approx(negative_log_likelihood(logits, labels), rel=1e-3)
    for scale in (0.4, 2.5):  # under- and over-confident copies of the same model score the same once calibrated
        assert calibrated_nll(logits * scale, labels) == pytest.approx(reference, rel=1e-3)
        assert negative_log_likelihood(logits * scale, labels) > reference + 0.05
    noisy = logits + np.random.default_rng(1).normal(scale=2.0, size=logits.shape)  # a worse model
    assert calibrated_nll(noisy, labels) > reference + 0.05


def test_fit_temperature_stays_within_bounds() -> None:
    logits = np.array([[10.0, 0.0], [0.0, 10.0]])
    labels = np.array([0, 1])  # always right: NLL keeps falling as T -> 0
    assert fit_temperature(logits, labels, bounds=(0.5, 4.0)) == pytest.approx(0.5, rel=1e-3)


def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins of width 0.5: (0.5, 1.0] holds all four; accuracy 3/4, mean confidence (0.9+0.9+0.6+0.7)/4 = 0.775
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.025)
    # 10 bins: {0.9, 0.9} acc 1/2 gap 0.4, {0.6} acc 1 gap 0.4, {0.7} acc 1 gap 0.3
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx((2 * 0.4 + 0.4 + 0.3) / 4)


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "non-empty"),
        (np.zeros((2, 3)), np.array([0, 3]), "class indices"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "class indices"),
        (np.array([[np.nan, 0.0]]), np.array([0]), "NaN"),
        (np.zeros((2, 3)), np.array([0]), "shape"),
    ],
)
def test_bad_inputs_get_clear_errors(logits: np.ndarray, labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)
