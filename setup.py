"""Build script: cythonizes the kernels; the extension is optional.

Without a working C++ compiler (or with ``XBATCH_NO_EXTENSION=1``) the install still
succeeds, warns once, and xbatch runs on its NumPy fallback. ``XBATCH_CYTHON_DEBUG=1``
builds with bounds checks on (used by the tests to catch out-of-bounds access).
"""

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile into a warning instead of an error."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing, broken toolchain, ...
            self._warn(exc)

    def build_extensions(self):
        # C++ sources go to the C++ compiler, but a user who sets CC to a compiler that
        # does not work (CC=/bin/false) means "no compiler": check CC first.
        problem = self._c_compiler_problem()
        if problem:
            self._warn(problem)
            return
        super().build_extensions()

    def _c_compiler_problem(self):
        with tempfile.TemporaryDirectory() as folder:
            source = os.path.join(folder, "probe.c")
            with open(source, "w") as file:
                file.write("int xbatch_probe(void) { return 0; }\n")
            try:
                self.compiler.compile([source], output_dir=folder)
            except Exception as exc:
                return f"the C compiler does not work: {exc}"
        return None

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    _warned = False

    @classmethod
    def _warn(cls, exc):
        """Says once per build, where the user sees it, that the fallback is installed."""
        if cls._warned:
            return
        cls._warned = True
        message = (
            f"WARNING: xbatch: the compiled kernels could not be built ({exc}); installing the "
            "pure-NumPy fallback, about 4-11x slower at packing. To build them, install a C++ "
            "compiler (e.g. apt install g++) and reinstall: pip install --force-reinstall --no-deps ."
        )
        # pip hides a successful build's output unless run with -v, so the message goes to
        # the terminal when there is one, else to stderr (a log, CI).
        try:
            with open("/dev/tty", "w") as terminal:
                terminal.write(message + "\n")
        except OSError:
            print(message, file=sys.stderr, flush=True)


def _extensions():
    if _flag("XBATCH_NO_EXTENSION"):
        return []
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:
        OptionalBuildExt._warn(f"cannot cythonize: {exc}")
        return []
    debug = _flag("XBATCH_CYTHON_DEBUG")
    extension = Extension(
        "xbatch._kernels",
        ["xbatch/_kernels.pyx"],
        include_dirs=[numpy.get_include()],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17"] if os.name != "nt" else [],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    try:
        return _cythonize(cythonize, extension, debug)
    except Exception as exc:  # keep the install working; the NumPy fallback runs
        OptionalBuildExt._warn(f"cythonizing the kernels failed: {exc!r}")
        return []


def _cythonize(cythonize, extension, debug):
    return cythonize(
        [extension],
        force=True,  # directives may differ from the last build (debug switch): regenerate
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": debug,
        },
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
