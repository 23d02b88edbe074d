import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _strict_floats():
    """Floating-point errors raise in tests (underflow is expected in softmax tails)."""
    old = np.seterr(all="raise", under="ignore")
    yield
    np.seterr(**old)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=["serial", "parallel"])
def kernel_build(request, monkeypatch):
    """Run a test with every kernel in its serial build, then in its parallel (prange) build.

    Kernels pick their serial twin below ``SERIAL_BELOW`` elements and the
    tests are small, so without this the parallel builds would never run.
    """
    from gridpde import _numba

    monkeypatch.setattr(_numba, "SERIAL_BELOW", 10**12 if request.param == "serial" else 0)
    return request.param
