"""Detection metrics: one-to-one matching, precision/recall/F1/Jaccard, RMSE."""

import numpy as np
import pandas as pd
import pytest

from evflow import metrics
from evflow.errors import ConfigError


def test_matching_is_one_to_one_and_optimal():
    truth = np.array([[0.0, 0.0], [0.0, 1.0]])
    # greedy nearest would pair det0 with truth1 (0.1) and leave truth0 unmatched (det1 at 1.05 > r)
    det = np.array([[0.0, 0.9], [0.0, 1.95]])
    it, idet, dist = metrics.match_points(truth, det, radius=1.0)
    assert list(it) == [0, 1] and list(idet) == [0, 1]
    np.testing.assert_allclose(dist, [0.9, 0.95])


def test_metrics_values():
    truth = pd.DataFrame({"y": [0.0, 10, 20, 30], "x": [0.0, 0, 0, 0]})
    det = pd.DataFrame({"y": [0.3, 10.0, 25.0], "x": [0.4, 0.0, 0.0]})
    m = metrics.detection_metrics(truth, det, radius=1.0)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * 2 / (4 + 1 + 2))
    assert m["jaccard"] == pytest.approx(2 / 5)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0) / 2))
    assert m["rmse_y"] == pytest.approx(np.sqrt(0.09 / 2))


def test_metrics_by_field_do_not_cross_match():
    truth = pd.DataFrame({"fov": [0, 1], "y": [5.0, 5.0], "x": [5.0, 5.0]})
    det = pd.DataFrame({"fov": [1, 1], "y": [5.1, 5.2], "x": [5.0, 5.0]})
    m = metrics.detection_metrics(truth, det, radius=1.0, by="fov")
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1)


def test_many_points_match_quickly_and_exactly():
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2000, (3000, 2))
    d = t + rng.normal(0, 0.2, t.shape)
    it, idet, _ = metrics.match_points(t, d, radius=1.5)
    assert len(it) >= 2990
    assert np.mean(it == idet) > 0.995


def test_empty_and_bad_input():
    m = metrics.detection_metrics(np.empty((0, 2)), np.empty((0, 2)))
    assert m["f1"] == 1.0 and m["tp"] == 0
    m = metrics.detection_metrics(np.array([[1.0, 1.0]]), np.empty((0, 2)))
    assert m["recall"] == 0.0 and m["fn"] == 1
    with pytest.raises(ConfigError, match="radius"):
        metrics.match_points([[0, 0]], [[0, 0]], radius=0)
    with pytest.raises(ConfigError, match="column"):
        metrics.detection_metrics(pd.DataFrame({"y": [1.0]}), pd.DataFrame({"y": [1.0], "x": [1.0]}))
