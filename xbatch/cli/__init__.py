"""The ``xbatch`` command: the parser and :func:`main`; one module per command.

``xbatch info`` (:mod:`.info`)
    xbatch's version, the active kernel backend, where the compiled kernels were loaded
    from (or why not), and the numpy / jax / grain versions.
``xbatch pack [CORPUS]`` (:mod:`.pack`)
    Packs a tokenized corpus into rows of the :class:`xbatch.batch.LLMBatch` layout and
    prints a summary; without ``CORPUS`` it packs a built-in synthetic corpus.
``xbatch convert INPUT OUTPUT`` (:mod:`.convert`)
    Writes a tokenized corpus of any readable format in xbatch's own memory-mapped
    format (:mod:`xbatch.sources`).
``xbatch bench`` (:mod:`.bench`)
    xbatch's packers against grain's ``FirstFitPackIterDataset`` on the built-in corpus,
    printed as a table of ratios.

A command module has ``add_parser(commands)``, which adds its subparser with
``set_defaults(run=run)``, and ``run(args, out)``; list it in ``COMMANDS``. Bad files and
options end with one line on stderr and exit status 1, never a traceback (raise
:class:`~.common.CommandError`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__, _backend
from . import bench, convert, info, pack
from .common import CommandError, Parser
from .info import describe_installation
from .pack import ROW_FIELDS, PackOptions, pack_corpus, render_row

__all__ = [
    "COMMANDS", "CommandError", "PackOptions", "ROW_FIELDS", "build_parser", "describe_installation", "main",
    "pack_corpus", "render_row",
]

# The command modules, in the order ``xbatch --help`` lists them.
COMMANDS = (info, pack, convert, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="xbatch", description="Packs tokenized documents into fixed-shape LLM batches.")
    parser.add_argument("--version", action="version", version=f"xbatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


# Optional libraries a command may need, and what to install for them.
_OPTIONAL = {"grain": "grain", "jax": "jax", "pyarrow": "pyarrow", "tqdm": "tqdm"}


def _missing_library(exc: ModuleNotFoundError) -> str | None:
    """The one-line advice for an optional library that is not installed, else None."""
    top = (exc.name or "").split(".")[0]
    if top not in _OPTIONAL:
        return None
    return (
        f"this needs {top}, which is not installed: pip install {_OPTIONAL[top]} "
        "(or install xbatch with the [cli] extra: pip install '.[cli]' in xbatch's source tree)"
    )


def main(argv: Sequence[str] | None = None, out=None) -> int:
    """Runs the ``xbatch`` command with ``argv`` (default ``sys.argv[1:]``); the exit status.

    User errors (bad files, options, arguments the packers reject, a missing optional
    library, a bad ``XBATCH_BACKEND``) print one line on stderr and give 1; ``xbatch
    info`` works whatever the backend.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the command's own parser, which names its own --help
            command_parser = _subparsers(parser).get(args.command, parser)
            command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or a bad option (one line, status 1)
        return exc.code
    if args.command is None:
        parser.print_help(out or sys.stdout)
        return 1
    try:
        if args.command != "info":  # info reports a bad XBATCH_BACKEND instead of failing
            _backend.check()
        args.run(args, out or sys.stdout)
    except (CommandError, ValueError, TypeError, ImportError) as exc:
        message = _missing_library(exc) if isinstance(exc, ModuleNotFoundError) else None
        if message is None and isinstance(exc, ModuleNotFoundError):
            raise  # a bug, not the user's setup: keep the traceback
        print(f"xbatch {args.command}: error: {message or exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"xbatch {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
