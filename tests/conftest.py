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
