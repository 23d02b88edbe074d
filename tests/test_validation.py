"""The quick validation suite must pass: convergence orders, mass balance, positivity."""

import io

import numpy as np
import pytest

from gridpde.validation.suite import run_suite
from gridpde.validation.training_studies import crossing_time


def test_quick_validation_suite_passes():
    out = io.StringIO()
    ok = run_suite(quick=True, out=out)
    print(out.getvalue())
    assert ok, out.getvalue()
    assert " 0 failed" in out.getvalue()
    assert out.getvalue().count(" pass") >= 4 * 5 + 5


def test_crossing_time_interpolates_an_exponential_decay_exactly():
    """R(t) = exp(-t / 3) sampled at uneven steps: the time R falls to 1e-4 is 3 ln 1e4, whatever the steps."""
    lrs = np.array([0.5, 2.0, 7.0, 7.0, 7.0, 7.0])
    risks = np.exp(-np.concatenate([[0.0], np.cumsum(lrs)]) / 3)
    assert crossing_time(risks, lrs, 1e-4) == pytest.approx(3 * np.log(1e4), rel=1e-12)
    assert crossing_time(risks, lrs, 2.0) == 0.0
    assert crossing_time(risks, lrs, 1e-9) == float("inf")


def test_study_names_for_the_help_are_the_suites():
    from gridpde.validation.names import STUDY_NAMES
    from gridpde.validation.suite import FULL, QUICK, SLOW

    assert list(STUDY_NAMES) == list(dict.fromkeys([*QUICK, *FULL, *SLOW]))
