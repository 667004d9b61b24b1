"""Document lengths of two real corpora, in tokens, for the fill figures of bench_rolling.py.

No data set can be downloaded here, so the corpora are text that ships with the machine
(Debian 13, CPython 3.11.7), tokenized with a real tokenizer trained on them:

- ``manpages``: every English manual page under ``/usr/share/man/man1`` .. ``man8``
  (one document per page; pages that only point to another with ``.so`` are left out),
  as plain text: the roff source with comments and layout requests dropped, the text of
  font macros (``.B``, ``.I``, ``.SH``, ...) kept and escapes (``\\fB``, ``\\-``, ``\\(em``)
  turned into the characters they print;
- ``python_docstrings``: every module, class and function docstring of the Python
  standard library of the interpreter running the script (``sysconfig``'s ``stdlib``
  path, here CPython 3.11.7's 1,790 files, its tests included, ``site-packages`` left
  out), one document each: short documents.

The tokenizer is a byte-level BPE (GPT-2's scheme) with a 32,000-token vocabulary,
trained on both corpora with the ``tokenizers`` package (``pip install tokenizers``).
``python bench/real_corpus.py`` writes ``bench/data/real_lengths.npz`` (int32 lengths per
corpus, in file-name order), which is committed, so that the figures reproduce without
the pages or the tokenizer.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import pathlib
import re
import sys
import sysconfig

import numpy as np

OUT = pathlib.Path(__file__).resolve().parent / "data" / "real_lengths.npz"
MAN_ROOT = pathlib.Path("/usr/share/man")
STDLIB_ROOT = pathlib.Path(sysconfig.get_paths()["stdlib"])
VOCAB_SIZE = 32_000

# Macros whose arguments are printed text (man and mdoc); other requests only lay out.
_TEXT_MACROS = {"B", "I", "BR", "BI", "IB", "IR", "RB", "RI", "SB", "SM", "SH", "SS", "TP", "IP", "UR", "MT",
                "Nm", "Nd", "Ar", "Fl", "Cm", "Pa", "Xr", "Sh", "Ss", "Em", "Sy", "Dq", "Qq", "Fn", "Fa", "Ft",
                "Va", "Ev", "Er", "Ic", "Li", "It", "Op", "Ql", "Sq", "Pq"}
_ESCAPES = [(re.compile(r"\\f(\[[^]]*\]|\(..|.)"), ""),  # font changes
            (re.compile(r"\\s[-+]?\d"), ""),  # size changes
            (re.compile(r"\\\((em|en)"), "-"), (re.compile(r"\\\((lq|rq|dq)"), '"'),
            (re.compile(r"\\\((oq|cq|aq)"), "'"), (re.compile(r"\\\(bu"), "*"),
            (re.compile(r"\\\(..|\\\[[^]]*\]"), " "),  # other special characters
            (re.compile(r"\\[-]"), "-"), (re.compile(r"\\e"), r"\\"), (re.compile(r"\\[&|^,/%:]"), ""),
            (re.compile(r"\\ "), " "), (re.compile(r"\\\*(\(..|\[[^]]*\]|.)"), ""),  # strings
            (re.compile(r"\\.?"), "")]


def man_text(source: str) -> str:
    """The printed text of a roff manual page (roughly: no hyphenation, no filling)."""
    lines = []
    for line in source.splitlines():
        if line.startswith((".\\\"", "'\\\"", '.\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            name, _, arguments = line[1:].strip().partition(" ")
            if name not in _TEXT_MACROS:
                continue
            line = arguments.replace('"', "")
        for pattern, replacement in _ESCAPES:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return "\n".join(lines).strip() + "\n"


def man_pages(root: pathlib.Path = MAN_ROOT) -> list[str]:
    texts = []
    for path in sorted(p for section in sorted(root.glob("man[1-8]")) for p in section.iterdir()):
        if not path.is_file() or path.is_symlink():
            continue
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        source = raw.decode("utf-8", errors="replace")
        if source.lstrip().startswith(".so ") and len(source.strip().splitlines()) <= 2:
            continue  # a pointer to another page
        texts.append(man_text(source))
    return texts


def stdlib_docstrings(root: pathlib.Path = STDLIB_ROOT) -> list[str]:
    """Every module, class and function docstring of the ``.py`` files under ``root``
    (``site-packages`` left out), file by file in name order."""
    docstrings = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text("utf-8", errors="replace"))
        except SyntaxError:  # test data written to be invalid
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring:
                    docstrings.append(docstring)
    return docstrings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args(argv)
    from tokenizers import ByteLevelBPETokenizer

    corpora = {"manpages": man_pages(), "python_docstrings": stdlib_docstrings()}
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator([t for texts in corpora.values() for t in texts], vocab_size=VOCAB_SIZE,
                                  min_frequency=2, show_progress=False)
    lengths = {name: np.array([len(e.ids) for e in tokenizer.encode_batch(texts)], np.int32)
               for name, texts in corpora.items()}
    for name, values in lengths.items():
        print(f"{name}: {values.shape[0]:,} documents, {int(values.sum()):,} tokens, mean {values.mean():.0f}, "
              f"median {np.median(values):.0f}, max {values.max():,}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(temporary, **lengths)
    temporary.replace(args.out)  # atomically: a committed file is never half written
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
