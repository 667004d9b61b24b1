"""Backend selection at import: XBATCH_BACKEND, and what happens without the extension."""

import os
import subprocess
import sys

import pytest

from xbatch import _backend

# Makes `import xbatch._kernels` fail, as on a machine where nothing was compiled.
HIDE_EXTENSION = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "xbatch._kernels":
            raise ImportError("pretend the extension was not built")
sys.meta_path.insert(0, Hide())
"""


def run_python(code: str, backend: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != _backend.ENV_VAR}
    if backend is not None:
        env[_backend.ENV_VAR] = backend
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


REPORT = "import xbatch, xbatch._backend as b; print(xbatch.BACKEND, '|', b.FALLBACK_REASON)"


def test_numpy_is_forced_by_the_variable():
    result = run_python(REPORT, "numpy")
    assert result.returncode == 0, result.stderr
    backend, reason = result.stdout.strip().split(" | ")
    assert backend == "numpy" and "XBATCH_BACKEND=numpy" in reason


@pytest.mark.skipif(_backend.compiled_module() is None, reason="compiled extension not built")
@pytest.mark.parametrize("backend", [None, "cython", "CYTHON "])
def test_the_extension_is_preferred_or_required(backend):
    result = run_python(REPORT, backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cython | None"


def test_missing_extension_falls_back_with_one_warning_line():
    result = run_python(HIDE_EXTENSION + REPORT, None)
    assert result.returncode == 0, result.stderr
    backend, reason = result.stdout.strip().split(" | ")
    assert backend == "numpy" and "pretend the extension was not built" in reason
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("xbatch: running the NumPy fallback, about 4-11x slower at packing")
    assert "pip install --force-reinstall --no-deps ." in lines[0]


def test_forced_numpy_does_not_warn():
    assert run_python(REPORT, "numpy").stderr == ""


def test_an_extension_never_built_is_named_as_such(tmp_path):
    reason = _backend._why_not_compiled(ModuleNotFoundError("No module named 'xbatch._kernels'"), tmp_path)
    assert "is not installed" in reason and "not built when xbatch was installed" in reason
    assert "circular import" not in reason


def test_a_bad_variable_leaves_import_working_and_fails_on_first_kernel_use():
    code = (
        "import numpy as np, xbatch, xbatch.kernels as k\n"
        "try:\n    k.document_borders(np.array([[1, 1, 2]]))\n"
        "except ImportError as exc:\n    print('kernel:', exc)\n"
        "try:\n    xbatch.BACKEND\n"
        "except ImportError as exc:\n    print('BACKEND:', exc)\n"
    )
    result = run_python(code, "fortran")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("kernel: XBATCH_BACKEND='fortran' is not a backend")
    assert lines[1].startswith("BACKEND: XBATCH_BACKEND='fortran' is not a backend")


def test_missing_extension_is_an_error_when_required():
    result = run_python(HIDE_EXTENSION + REPORT, "cython")
    assert result.returncode != 0
    assert "ImportError: XBATCH_BACKEND=cython but" in result.stderr
    assert "pretend the extension was not built" in result.stderr


def test_unknown_backend_is_rejected():
    result = run_python(REPORT, "fortran")
    assert result.returncode != 0
    assert "XBATCH_BACKEND='fortran' is not a backend" in result.stderr


def test_kernels_need_neither_jax_nor_grain():
    code = HIDE_EXTENSION.replace('name == "xbatch._kernels"', 'name in ("jax", "grain")') + (
        "import numpy as np, xbatch.kernels as k; "
        "print(k.document_borders(np.array([[1, 1, 2]])).tolist())"
    )
    result = run_python(code, "numpy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[True, False, True]]"
