"""The install's fallback warning: said once, with the slowdown and the fix."""

import builtins
import runpy
from pathlib import Path

import pytest
from setuptools import Distribution, Extension

ROOT = Path(__file__).parent.parent


@pytest.fixture
def build_ext_class(monkeypatch):
    """setup.py's OptionalBuildExt, loaded without running setup() or cythonizing."""
    monkeypatch.setenv("XBATCH_NO_EXTENSION", "1")
    monkeypatch.setattr("setuptools.setup", lambda **_: None)
    return runpy.run_path(str(ROOT / "setup.py"))["OptionalBuildExt"]


def test_a_broken_compiler_warns_once(build_ext_class, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setattr(build_ext_class, "_warned", False)
    real_open = builtins.open

    def no_terminal(path, *args, **kwargs):  # as in CI; on a terminal the warning goes there
        if path == "/dev/tty":
            raise OSError("no terminal")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_terminal)
    distribution = Distribution({"ext_modules": [Extension("xbatch._kernels", [str(tmp_path / "k.cpp")])]})
    command = build_ext_class(distribution)
    command.build_temp, command.build_lib = str(tmp_path / "temp"), str(tmp_path / "lib")
    command.ensure_finalized()
    command.run()
    command.run()  # pip may build twice in one process; still one warning
    err = capfd.readouterr().err
    assert err.count("xbatch: the compiled kernels could not be built") == 1, err
    assert "about 4-11x slower" in err and "pip install --force-reinstall --no-deps ." in err
