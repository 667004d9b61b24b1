"""The docs a new user follows: snippets that run, install lines that work, honest extras,
and every difference and caveat the hardening issue found written down."""

import re
import tomllib
from pathlib import Path

from xbatch import corpus

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def read(name: str) -> str:
    return (ROOT / name).read_text()


def code_blocks(text: str) -> list[str]:
    """The python code blocks of an .rst page, dedented."""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    return ["\n".join(line[3:] for line in block.splitlines()) for block in blocks]


def test_rampup_worked_schedule_runs_and_gives_the_stated_figures():
    block = next(b for b in code_blocks(read("docs/rampup.rst")) if "examples_consumed(schedule" in b)
    namespace = {}
    exec(compile(block, "rampup.rst", "exec"), namespace)
    assert namespace["examples_consumed"](namespace["schedule"], 6000) == 1_792_000
    assert namespace["step_for_examples"](namespace["schedule"], 2_000_000) == 6204


def test_cli_docs_list_every_suffix_the_command_reads():
    text = read("docs/cli.rst")
    suffixes = corpus.NPZ_SUFFIXES + corpus.NPY_SUFFIXES + corpus.JSONL_SUFFIXES + corpus.PARQUET_SUFFIXES
    assert [s for s in suffixes if f"``*{s}``" not in text] == []
    assert "--allow-empty" in text and "atomically" in text


def test_install_lines_work_from_the_source_tree():
    for name in ("README.md", "docs/index.rst", "docs/quickstart.rst"):
        assert '"xbatch[' not in read(name), f"{name}: xbatch is on no package index"
    quickstart = read("docs/quickstart.rst")
    assert 'pip install ".[all]"' in quickstart and "python -m build --wheel" in quickstart
    assert "about a minute" in quickstart and "about a minute" in read("README.md")


def test_the_cli_extra_is_enough_for_every_command():
    extras = tomllib.loads(read("pyproject.toml"))["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~ \[]", requirement)[0] for requirement in extras["cli"]}
    assert names >= {"jax", "grain", "tqdm"}


def test_speed_claims_say_what_they_include():
    for name in ("README.md", "docs/benchmarks.rst"):
        text = read(name)
        flat = " ".join(text.split())
        assert "self time" in flat and "num_threads=0" in flat and "about 1.5x end to end" in flat, name
        assert re.search(r"\*\*End to end\*\*|^End to end$", text, re.MULTILINE), name


def test_migration_guide_lists_every_difference():
    text = read("docs/migrating.rst")
    for words in ("shuffle_bins=False", "keyword-only", "check shapes", 'shift="targets"',
                  "flags.FLAGS.mark_as_parsed()", "grain 0.2.18", "[0, 2**31)", "get_sample"):
        assert words in text, words


def test_layout_says_split_pieces_restart_at_position_0_and_how_targets_shift():
    text = read("docs/layout.rst")
    assert "each piece restarts at\n  position 0" in text
    assert "ShiftData(shift_target=True)" in text
