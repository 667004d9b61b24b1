"""The ``xbatch`` command: the parser and :func:`main`; one module per command.

``xbatch info`` (:mod:`.info`)
    xbatch's version, the active kernel backend, where the compiled kernels were loaded
    from (or why not), and the numpy / jax / grain versions.
``xbatch pack [CORPUS]`` (:mod:`.pack`)
    Packs a tokenized corpus into rows of the :class:`xbatch.batch.LLMBatch` layout and
    prints a summary; without ``CORPUS`` it packs a built-in synthetic corpus.
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

from .. import __version__
from . import bench, info, pack
from .common import CommandError, Parser
from .info import describe_installation
from .pack import ROW_FIELDS, PackOptions, pack_corpus, render_row

__all__ = [
    "COMMANDS", "CommandError", "PackOptions", "ROW_FIELDS", "build_parser", "describe_installation", "main",
    "pack_corpus", "render_row",
]

# The command modules, in the order ``xbatch --help`` lists them.
COMMANDS = (info, pack, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="xbatch", description="Packs tokenized documents into fixed-shape LLM batches.")
    parser.add_argument("--version", action="version", version=f"xbatch {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None, out=None) -> int:
    """Runs the ``xbatch`` command with ``argv`` (default ``sys.argv[1:]``); the exit status.

    User errors (bad files, options, or arguments the packers reject) print one line on
    stderr and give 1.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (one line, status 1)
        return exc.code
    if args.command is None:
        parser.print_help(out or sys.stdout)
        return 1
    try:
        args.run(args, out or sys.stdout)
    except (CommandError, ValueError, TypeError) as exc:
        print(f"xbatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"xbatch {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
