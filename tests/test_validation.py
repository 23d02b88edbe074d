"""The quick validation suite must pass: convergence orders, mass balance, positivity."""

import io

from gridpde.validation.suite import run_suite


def test_quick_validation_suite_passes():
    out = io.StringIO()
    ok = run_suite(quick=True, out=out)
    print(out.getvalue())
    assert ok, out.getvalue()
    assert " 0 failed" in out.getvalue()
    assert out.getvalue().count(" pass") >= 4 * 5 + 5
