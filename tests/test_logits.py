"""camenn.logits: the one logit and sigmoid that views, thresholds and benchmarks share."""

from __future__ import annotations

import numpy as np
import pytest

from camenn.logits import logit, sigmoid


def test_logit_and_sigmoid_invert_each_other_and_keep_the_ends_finite():
    p = np.array([1e-6, 0.02, 0.5, 0.9, 0.999])
    assert sigmoid(logit(p)) == pytest.approx(p, rel=1e-9)
    assert logit(0.5) == 0.0 and logit(0.9) == pytest.approx(np.log(9.0))
    ends = logit(np.array([0.0, 1.0]))                      # an absolute threshold of 0 or 1
    assert np.isfinite(ends).all() and ends[0] == pytest.approx(-ends[1])
    assert sigmoid(ends) == pytest.approx([0.0, 1.0], abs=1e-6)


def test_a_listings_views_combine_as_the_sigmoid_of_their_mean_logit():
    from camenn.predictor import mean_logit

    sure, unsure = np.array([0.001, 0.9]), np.array([0.5, 0.9])
    combined = mean_logit([sure, unsure])
    assert combined == pytest.approx(sigmoid((logit(sure) + logit(unsure)) / 2))
    assert combined[0] < 0.05 < np.mean([0.001, 0.5])   # one sure view of a mismatch still says mismatch; a mean probability would not
