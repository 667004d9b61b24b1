"""Shared fixtures: every kernel-backed test runs once per backend."""

import os

import pytest

from xbatch import _backend, _kernels_numpy

_FORCED = os.environ.get(_backend.ENV_VAR, "").strip().lower()


@pytest.fixture(params=["cython", "numpy"])
def backend(request, monkeypatch):
    """Makes every xbatch kernel call in the test go to one backend; yields its module.

    The compiled backend is skipped only when it cannot be tested: forced off with
    XBATCH_BACKEND=numpy, or not built (CI builds it and sets XBATCH_BACKEND=cython,
    which turns a missing extension into an import error instead of a skip).
    """
    if request.param == "numpy":
        module = _kernels_numpy
    else:
        if _FORCED == "numpy":
            pytest.skip("XBATCH_BACKEND=numpy forces the fallback")
        module = _backend.compiled_module()
        if module is None:
            pytest.skip("the compiled extension is not built")
    monkeypatch.setattr(_backend, "impl", module)
    monkeypatch.setattr(_backend, "BACKEND", request.param)
    yield module


@pytest.fixture(scope="session", autouse=True)
def absl_flags_parsed():
    """grain's multiprocessing reads absl flags, which nothing parses under pytest."""
    try:
        from absl import flags
    except ImportError:
        return
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
