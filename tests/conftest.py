"""Devices for the test suite.

Every device-aware test is parametrized over DEVICES: "cpu", "strict" (NumPy
arrays that refuse silent host conversion, so a stray ``np.`` call in an op
fails here as it would on a GPU) and "cuda" (skipped with the reason where CuPy
or a GPU is missing).  MINILM_TEST_DEVICES=cuda (comma-separated) narrows it.
Hypothesis runs derandomized (the same examples every run); HYPOTHESIS_EXPLORE=1 draws new ones.
"""
import os

import pytest

from minilm import backend

try:        # property tests draw the same examples on every run (a CI gate must not be a lottery);
    from hypothesis import settings as _hypothesis_settings   # HYPOTHESIS_EXPLORE=1 explores afresh

    _hypothesis_settings.register_profile("minilm", derandomize=not os.environ.get("HYPOTHESIS_EXPLORE"))
    _hypothesis_settings.load_profile("minilm")
except ImportError:                                            # the tests that need it skip
    pass

ALL_DEVICES = ("cpu", "strict", "cuda")
DEVICES = tuple(d.strip() for d in os.environ.get("MINILM_TEST_DEVICES", ",".join(ALL_DEVICES)).split(",") if d.strip())


def _skip_reason(device):
    if device != "cuda":
        return None
    if backend._cupy is None:
        return "CuPy is not installed (pip install minilm[gpu])"
    if not backend.cuda_available():
        return "CuPy is installed but sees no GPU"
    return None


DEVICE_PARAMS = [pytest.param(d, id=d, marks=pytest.mark.skipif(_skip_reason(d) is not None,
                                                              reason=_skip_reason(d) or ""))
                 for d in DEVICES]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param


# ---- tiny models (builders in helpers.py; fixtures for tests that prefer them) ----------------------------
@pytest.fixture
def make_gpt():
    """A factory: make_gpt(device, seed, dtype, **GPTConfig fields) -> a seeded tiny GPT."""
    from helpers import tiny_gpt
    return tiny_gpt


@pytest.fixture
def make_bert():
    """A factory: make_bert(device, seed, dtype, perturb, **BertConfig fields) -> a seeded tiny Bert."""
    from helpers import tiny_bert
    return tiny_bert
