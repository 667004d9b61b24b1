"""``xbatch info``: versions, the active backend and where its kernels come from."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from .. import __version__, _backend


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def describe_installation() -> str:
    """xbatch's version and backend, where the compiled kernels come from (or why not, and
    the fix), library versions. Works with any ``XBATCH_BACKEND``: a bad one is reported."""
    compiled = _backend.compiled_module()
    if _backend.ERROR is not None:
        backend = f"none: {_backend.ERROR}"
    else:
        backend = _backend.BACKEND
    if _backend.BACKEND == "cython":
        extension = compiled.__file__
    elif compiled is not None:
        extension = f"built at {compiled.__file__}, not used: {_backend.FALLBACK_REASON}"
    else:
        extension = f"not used: {_backend.FALLBACK_REASON or 'the compiled extension does not import'}"
    rows = [
        ("xbatch", __version__),
        ("backend", backend),
        ("extension", extension),
    ]
    if compiled is None:
        rows.append(("fix", _backend.FIX))
    rows += [
        ("python", sys.version.split()[0]),
        *((name, _version(name)) for name in ("numpy", "jax", "grain", "tqdm", "pyarrow")),
    ]
    return "\n".join(f"{name:<10} {value}" for name, value in rows)


def run(args: argparse.Namespace, out) -> None:
    print(describe_installation(), file=out)


def add_parser(commands) -> None:
    info = commands.add_parser("info", help="versions, the active backend and where its kernels come from")
    info.set_defaults(run=run)
