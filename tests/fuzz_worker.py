"""Fuzzes every public kernel and packer for a while; run by tests/test_fuzz.py.

Runs in its own process, so a crash (segfault, abort, heap corruption) fails the test
that started it instead of killing pytest; the example being run is written to
``--log`` first, so a crash names its input. Hypothesis draws extreme integers (around
0, 2**31, 2**62, 2**63), odd dtypes (int8, uint64, float, bool) and byte orders,
non-contiguous, read-only and overlapping arrays. Every call must either succeed or
raise ``ValueError``/``TypeError``; every output lies in a buffer whose other cells must
not change (guard cells); and with the compiled backend built, the same call on the
NumPy backend must end the same way (the same error type, or equal outputs).

    python tests/fuzz_worker.py --target kernels --seconds 30 [--log FILE] [--numpy-only]

Prints one JSON line: {"target", "cases", "backends", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xbatch import _backend, _kernels_numpy, kernels

ALLOWED = (ValueError, TypeError)
# A packer's rows are row length x rows; one whose arrays exceed memory is a MemoryError.
ALLOWED_PACKERS = (ValueError, TypeError, MemoryError)
EXTREME = [2**31 - 1, 2**31, 2**32 + 1, 2**62, 2**62 + 1, 2**63 - 1, -(2**63), 2**64 + 3, -1, -2]
INTS = st.one_of(st.integers(-2, 12), st.sampled_from(EXTREME))
SIZES = st.one_of(st.integers(0, 6), st.sampled_from([2**31 - 1, 2**62, 2**62 + 1, 2**63 - 1, -1]))
DTYPES = ["<i8", "<i4", ">i8", ">i4", "i1", "u1", "u8", "<f4", "?", "<i2", ">u2"]
OUT_DTYPES = ["<i4", "<i8", ">i4", ">i8", "<f4", "i2", "u1"]
LAYOUTS = ["contiguous", "strided", "reversed", "readonly", "list"]
SENTINEL = 77


class Arena:
    """Arrays of one example, each inside a guarded buffer; ``check`` fails if any cell
    outside the declared outputs changed."""

    def __init__(self):
        self.buffers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # buffer, snapshot, writable mask

    def array(self, values: list[int], dtype: str, layout: str, *, output: bool = False,
              shape: tuple[int, ...] | None = None) -> Any:
        if layout == "list" and not output:
            return list(values)
        data = np.array([v % 2**64 for v in values], np.uint64).view(np.int64).astype(dtype)
        shape = shape or (len(values),)
        size = int(np.prod(shape))
        step = 2 if layout == "strided" else 1
        buffer = np.full(size * step + 16, SENTINEL, dtype=dtype)
        writable = np.zeros(buffer.shape, bool)
        view, mask = (a[8 : 8 + size * step] for a in (buffer, writable))
        if step == 2:
            view, mask = (a.reshape(*shape[:-1], shape[-1] * 2)[..., ::2] if shape[-1:] else a[::2].reshape(shape)
                          for a in (view, mask))
        else:
            view, mask = view.reshape(shape), mask.reshape(shape)
        if layout == "reversed":
            view, mask = view[::-1], mask[::-1]
        view[...] = data.reshape(view.shape) if data.size == view.size else view
        if output:
            mask[...] = True
        if layout == "readonly":
            view.flags.writeable = False
        self.buffers.append((buffer, buffer.copy(), writable))
        return view

    def view_of(self, base: np.ndarray, start: int, count: int) -> np.ndarray:
        """A 1-d view of ``count`` cells of ``base``'s memory (for overlapping inputs)."""
        flat = base.reshape(-1) if base.flags.c_contiguous else np.asarray(base).ravel()
        return flat[start : start + count]

    def check(self) -> None:
        for buffer, snapshot, writable in self.buffers:
            changed = ~((buffer == snapshot) | (np.isnan(buffer) & np.isnan(snapshot) if buffer.dtype.kind == "f" else False))
            assert not (changed & ~writable).any(), f"cells outside the outputs changed: {np.flatnonzero(changed & ~writable)[:8]}"


def outcome(call, allowed=ALLOWED) -> tuple:
    try:
        result = call()
    except allowed as exc:
        return ("error", type(exc).__name__)
    return ("ok", result)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


class Runner:
    """Runs an example's build-and-call on every backend and compares the outcomes."""

    def __init__(self, backends: list, log: str | None, allowed=ALLOWED):
        self.backends, self.log, self.cases, self.allowed = backends, log, 0, allowed
        self.succeeded: dict[str, int] = {}  # per kernel or packer: calls that did not raise

    def __call__(self, name: str, example: Any, run) -> None:
        self.cases += 1
        if self.log:
            with open(self.log, "w") as file:
                file.write(f"{name}: {example!r}\n")
        results = []
        for module in self.backends:
            _backend.impl = module
            arena = Arena()
            results.append(outcome(lambda: run(arena), self.allowed))
            arena.check()
        for other in results[1:]:
            assert same(results[0], other), f"{name}: backends differ: {results[0]!r} vs {other!r}"
        self.succeeded[name] = self.succeeded.get(name, 0) + (results[0][0] == "ok")


array_specs = st.tuples(st.lists(INTS, max_size=8), st.sampled_from(DTYPES), st.sampled_from(LAYOUTS))
out_specs = st.tuples(st.integers(0, 4), st.integers(0, 9), st.sampled_from(OUT_DTYPES),
                      st.sampled_from(["contiguous", "strided", "reversed", "readonly"]))
alias = st.one_of(st.none(), st.tuples(st.integers(0, 30), st.integers(0, 12)))


@st.composite
def placements(draw):
    """(lengths, bins, values, out) specs: mostly a consistent placement (so calls get
    past the argument checks into the kernels), each part sometimes replaced by anything."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(0, 9))
    n = draw(st.integers(0, 6))
    lengths = [draw(st.integers(0, min(cols, 4))) for _ in range(n)]
    bins = [draw(st.integers(0, rows - 1)) for _ in range(n)]
    values = draw(st.lists(INTS, min_size=sum(lengths), max_size=sum(lengths)))
    int_dtypes = st.sampled_from(["<i8", "<i4", ">i8", "u1", "<i2"])
    layouts = st.sampled_from(LAYOUTS)
    specs = [(lengths, draw(int_dtypes), draw(layouts)), (bins, draw(int_dtypes), draw(layouts)),
             (values, draw(st.sampled_from(DTYPES)), draw(layouts))]
    specs = [draw(array_specs) if draw(st.integers(0, 5)) == 0 else spec for spec in specs]
    out = (rows, cols, draw(st.sampled_from(OUT_DTYPES)), draw(st.sampled_from(["contiguous"] * 3 + ["strided", "reversed", "readonly"])))
    return (*specs, draw(out_specs) if draw(st.integers(0, 5)) == 0 else out)


def _out(arena, spec, dtype=None):
    rows, cols, out_dtype, layout = spec
    return arena.array([SENTINEL] * (rows * cols), dtype or out_dtype, layout, output=True, shape=(rows, cols))


@st.composite
def packed_row_inputs(draw):
    """Arguments of kernels.gather_packed_rows: mostly a packing index of a small corpus
    (so calls reach the kernel), with entries of every array sometimes damaged."""
    from xbatch.packing.index import pack_shard

    lengths = draw(st.lists(st.integers(0, 7), max_size=6))
    seq_len = draw(st.integers(1, 9))
    index = pack_shard(np.array(lengths, np.int64), seq_len=seq_len, eod_token_id=1,
                       long_documents=draw(st.sampled_from(["split", "truncate"])))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    token_values = draw(st.lists(st.one_of(st.integers(0, 50), st.integers(0, 50), INTS),
                                 min_size=int(offsets[-1]), max_size=int(offsets[-1])))
    tokens = (token_values, draw(st.sampled_from(["<i4", "<i4", "u2", "<i8", "u8", "i1", ">i4", "<f4"])),
              draw(st.sampled_from(["contiguous", "contiguous", "strided", "readonly"])))
    arrays = [offsets[:-1].copy(), offsets[1:].copy(), index.piece_document.copy(),
              index.piece_start.astype(np.int64), index.piece_length.astype(np.int64), index.row_offsets.copy()]
    for _ in range(draw(st.integers(0, 2))):  # damage: any entry of any array, any value
        which = draw(st.integers(0, len(arrays) - 1))
        if arrays[which].size:
            arrays[which][draw(st.integers(0, arrays[which].size - 1))] = draw(INTS) % 2**63 * draw(
                st.sampled_from([1, -1]))
    num_rows = max(index.num_rows, 1)
    rows = draw(st.lists(st.one_of(st.integers(0, num_rows - 1), st.integers(0, num_rows - 1), INTS), max_size=4))
    options = {"seq_len": draw(st.one_of(st.just(seq_len), st.just(seq_len), INTS)),
               "eod_token_id": draw(st.one_of(st.just(1), INTS)), "pad_token_id": draw(st.one_of(st.just(0), INTS)),
               "shift": draw(st.sampled_from(["inputs", "targets", "both"])),
               "first_document": draw(st.one_of(st.just(0), st.just(0), INTS))}
    return (tokens, arrays[0], arrays[1], arrays[2:], rows, draw(st.booleans())), options


def kernel_tests(runner: Runner, examples: int):
    common = settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))

    @common
    @given(placement=placements(), alignment=st.one_of(st.just(1), st.integers(1, 4), INTS),
           padding=st.one_of(st.none(), INTS, st.just(2.5)), as_items=st.booleans(),
           overlap=st.one_of(st.none(), st.none(), alias))
    def scatter(placement, alignment, padding, as_items, overlap):
        lengths, bins, values, out = placement
        def run(arena):
            out_array = _out(arena, out)
            vals = arena.array(*values)
            if overlap is not None and out_array.size:
                vals = arena.view_of(out_array, *overlap)
            if as_items:  # one array (or list) per item, cut by the lengths where they are sane
                cuts = [max(0, min(int(n), 8)) for n in (lengths[0] if isinstance(lengths[0], list) else [])]
                starts = np.cumsum([0, *cuts])
                vals = [vals[a:b] for a, b in zip(starts[:-1], starts[1:])]
            kernels.scatter_rows(vals, arena.array(*lengths), arena.array(*bins), out_array,
                                 alignment=alignment, padding=padding)
            return out_array.copy()
        runner("scatter_rows", (placement, alignment, padding, as_items, overlap), run)

    @common
    @given(placement=placements(), alignment=st.one_of(st.integers(1, 4), INTS),
           same_out=st.integers(0, 9).map(lambda k: k == 0), overlap=st.one_of(st.none(), st.none(), alias))
    def pack(placement, alignment, same_out, overlap):
        lengths, bins, _, out = placement
        def run(arena):
            seg = _out(arena, out, "<i4")
            pos = seg if same_out else _out(arena, out, "<i4")
            lens = arena.array(*lengths)
            if overlap is not None and seg.size:
                lens = arena.view_of(seg, *overlap)
            kernels.pack_rows(lens, arena.array(*bins), seg, pos, alignment=alignment)
            return seg.copy(), pos.copy()
        runner("pack_rows", (placement, alignment, same_out, overlap), run)

    @common
    @given(rows=out_specs, fill=st.one_of(INTS, st.just(1.5)), out=st.sampled_from(["none", "fresh", "same", "other"]),
           left=st.booleans())
    def shifts(rows, fill, out, left):
        def run(arena):
            source = _out(arena, rows)
            source[...] = np.arange(source.size).reshape(source.shape) if source.flags.writeable else source
            target = {"none": None, "same": source, "fresh": _out(arena, rows),
                      "other": _out(arena, (rows[0], rows[1], "<i8", "contiguous"))}[out]
            shift = kernels.shift_left if left else kernels.shift_right
            result = shift(source, fill, out=target)
            return result.copy(), kernels.document_borders(source)
        runner("shifts/document_borders", (rows, fill, out, left), run)

    @common
    @given(seg=out_specs, values=st.lists(st.integers(0, 4), max_size=40), max_segments=SIZES)
    def attention(seg, values, max_segments):
        from xbatch.packing import attention_metadata

        def run(arena):
            array = _out(arena, seg)
            if array.flags.writeable and array.size:
                array[...] = np.resize(np.array(values or [0]), array.size).reshape(array.shape)
            return attention_metadata(array, max_segments=max_segments)
        runner("attention_metadata", (seg, values, max_segments), run)

    @common
    @given(capacities=st.one_of(st.lists(st.integers(1, 12), min_size=1, max_size=3),
                                st.lists(INTS, min_size=0, max_size=3)),
           num_bins=st.one_of(st.integers(1, 5), SIZES),
           alignments=st.one_of(st.none(), st.lists(INTS, min_size=1, max_size=3)),
           max_items=st.one_of(st.none(), SIZES), algorithm=st.sampled_from([*kernels.ALGORITHMS, "x"]),
           ops=st.lists(st.one_of(
               st.tuples(st.just("one"), st.one_of(INTS, st.lists(INTS, max_size=3).map(tuple),
                                                     st.just(2.5), st.just(True), st.just((1.5,)))),
               st.tuples(st.just("array"), array_specs),
               st.tuples(st.just("many"), st.lists(st.lists(INTS, min_size=1, max_size=3), max_size=12),
                         st.sampled_from(["<i8", ">i8", "<i4"])),
               st.tuples(st.just("reset"), st.none()),
           ), max_size=12))
    def packer(capacities, num_bins, alignments, max_items, algorithm, ops):
        def run(arena):
            p = kernels.BinPacker(capacities, num_bins=num_bins, alignments=alignments,
                                  max_items_per_bin=max_items, algorithm=algorithm)
            log = []
            for kind, arg in ops:
                if kind == "one":
                    log.append(outcome(lambda: p.place_one(arg)))
                elif kind == "array":
                    log.append(outcome(lambda: p.place_one(arena.array(*arg))))
                elif kind == "many":
                    items, dtype = arg
                    width = len(capacities) or 1
                    rows = [r[:width] + [0] * (width - len(r[:width])) for r in items]
                    lengths = np.array([[v % 2**64 for v in r] for r in rows], np.uint64).view(np.int64)
                    lengths = lengths.reshape(len(rows), width).astype(dtype)
                    out = np.zeros(len(rows), np.int64)
                    log.append(outcome(lambda: (p.place(lengths, out), out.tolist())))
                else:
                    p.reset()
                assert 0 <= p.num_used_bins <= num_bins
            if num_bins <= 1000:
                log.append((p.used.tolist(), p.counts.tolist()))
            return log
        runner("BinPacker", (capacities, num_bins, alignments, max_items, algorithm, ops), run)

    @common
    @given(indices=array_specs, max_index=st.one_of(st.integers(0, 40), st.sampled_from(EXTREME)),
           seed=st.one_of(st.integers(0, 9), INTS), rounds=st.one_of(st.just(4), INTS), with_out=st.booleans())
    def shuffle(indices, max_index, seed, rounds, with_out):
        def run(arena):
            array = arena.array(*indices)
            out = arena.array([0] * len(indices[0]), "<i8", "contiguous", output=True) if with_out else None
            return kernels.index_shuffle(array, max_index=max_index, seed=seed, rounds=rounds, out=out).copy()
        runner("index_shuffle", (indices, max_index, seed, rounds, with_out), run)

    @common
    @given(tokens=array_specs, starts=array_specs, ends=array_specs, out_size=st.one_of(st.none(), st.integers(0, 20)))
    def gather(tokens, starts, ends, out_size):
        def run(arena):
            out = None if out_size is None else arena.array([0] * out_size, "<i4", "contiguous", output=True)
            values, lengths = kernels.gather_ranges(arena.array(*tokens), arena.array(*starts), arena.array(*ends), out)
            return values.copy(), lengths
        runner("gather_ranges", (tokens, starts, ends, out_size), run)

    @common
    @given(capacity=st.one_of(st.integers(1, 12), SIZES), num_bins=st.one_of(st.integers(1, 4), SIZES),
           buffer_size=st.one_of(st.integers(0, 4), SIZES), buffer_wait=st.one_of(st.integers(0, 4), SIZES),
           bin_wait=st.one_of(st.integers(1, 4), SIZES), max_items=st.one_of(st.none(), st.integers(1, 3), SIZES),
           ops=st.lists(st.one_of(st.tuples(st.just("push"), array_specs), st.tuples(st.just("drain"), st.none())),
                        max_size=8))
    def rolling(capacity, num_bins, buffer_size, buffer_wait, bin_wait, max_items, ops):
        def run(arena):
            p = kernels.RollingPacker(capacity, num_bins=num_bins, buffer_size=buffer_size,
                                      buffer_wait=buffer_wait, bin_wait=bin_wait, max_items=max_items)
            log = []
            for kind, arg in ops:
                log.append(outcome(lambda: p.push(arena.array(*arg)) if kind == "push" else p.drain()))
                ids, counts = p.take_rows()
                log.append((ids.tolist(), counts.tolist(), p.held_ids().tolist()))
            return log
        runner("RollingPacker", (capacity, num_bins, buffer_size, buffer_wait, bin_wait, max_items, ops), run)

    @common
    @given(inputs=packed_row_inputs())
    def gather_rows(inputs):
        (tokens, starts, ends, index_arrays, rows, with_out), options = inputs

        def run(arena):
            out = None
            seq_len = options["seq_len"]
            # Never have the kernel allocate what the machine lacks (seq_len up to 2**31 - 1:
            # 48 GB a row, killed by the OOM killer): a large output comes as a too-small
            # ``out``, which the wrapper must refuse.
            huge = isinstance(seq_len, int) and len(rows) * max(seq_len, 0) > 2**20
            if with_out or huge:
                shape = (len(rows), seq_len) if isinstance(seq_len, int) else (0, 0)
                shape = shape if 0 <= shape[1] <= 64 else (0, 0)
                out = {name: arena.array([0] * (shape[0] * shape[1]), "<i4", "contiguous", output=True, shape=shape)
                       for name in kernels.PACKED_ROW_FIELDS}
            fields = kernels.gather_packed_rows(arena.array(*tokens), starts, ends, *index_arrays, rows, **options,
                                                out=out)
            return {name: value.copy() for name, value in fields.items()}
        runner("gather_packed_rows", inputs, run)

    return [scatter, pack, shifts, attention, packer] + [
        test for name, test in (("index_shuffle", shuffle), ("gather_ranges", gather), ("RollingPacker", rolling),
                                ("gather_packed_rows", gather_rows))
        if hasattr(kernels, name)  # kernels other issues add; fuzzed once they exist
    ]


def packer_tests(runner: Runner, examples: int):
    import grain

    from xbatch.packing import (
        BestFitPackIterDataset,
        FirstFitPackIterDataset,
        LLMPackIterDataset,
        pack_documents,
        window_documents,
    )

    common = settings(max_examples=examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
    def mostly(valid, hostile):  # valid arguments 4 times in 5, so calls reach the packing
        return st.integers(0, 4).flatmap(lambda k: hostile if k == 0 else valid)

    valid_docs = st.lists(st.tuples(st.lists(st.integers(0, 50), max_size=12),
                                    st.sampled_from(["<i4", "<i8", "list", "u1", ">i4", ">i8", "u8"])),
                          min_size=1, max_size=8)
    hostile_docs = st.lists(st.tuples(st.lists(st.one_of(st.integers(0, 50), st.sampled_from(EXTREME)), max_size=12),
                                      st.sampled_from(DTYPES + ["list"])), min_size=1, max_size=8)
    docs_strategy = mostly(valid_docs, hostile_docs)
    small = mostly(st.integers(1, 6), SIZES)

    def make_docs(docs):
        out = []
        for values, dtype in docs:
            if dtype == "list":
                out.append(values)
            else:
                out.append(np.array([v % 2**64 for v in values], np.uint64).view(np.int64).astype(dtype))
        return out

    @common
    @given(docs=docs_strategy, seq_len=mostly(st.integers(1, 20), st.sampled_from([2**31, 2**62, 0, -1])),
           bins=small, eod=mostly(st.integers(0, 9), INTS), pad=mostly(st.integers(0, 9), INTS),
           algorithm=st.sampled_from(["first_fit", "best_fit", "concat_then_split", "rolling_best_fit", "first_fit", "x"]),
           long_documents=st.sampled_from(["split", "truncate", "error"]), shift=st.sampled_from(["inputs", "targets"]),
           shuffle=st.booleans(), seed=mostly(st.integers(0, 9), INTS), chunked=st.booleans(),
           restore_at=st.integers(0, 6))
    def llm(docs, seq_len, bins, eod, pad, algorithm, long_documents, shift, shuffle, seed, chunked, restore_at):
        def run(arena):
            elements = make_docs(docs)
            if chunked:
                lengths = [len(d) for d in elements]
                try:
                    tokens = np.concatenate([np.asarray(d) for d in elements])
                except (ValueError, TypeError):
                    tokens = np.zeros(0, np.int32)
                elements = [{"tokens": tokens, "lengths": lengths}]
            args = dict(seq_len=seq_len, num_packing_bins=bins, eod_token_id=eod, pad_token_id=pad,
                        algorithm=algorithm, long_documents=long_documents, shift=shift,
                        shuffle_bins=shuffle, seed=seed)
            dataset = LLMPackIterDataset(grain.MapDataset.source(elements).to_iter_dataset(), **args)
            iterator = iter(dataset)
            rows, state = [], None
            for i, row in enumerate(iterator):
                if i == restore_at:
                    state = json.loads(json.dumps(iterator.get_state()))
                rows.append({k: v.copy() for k, v in row.items()})
                if len(rows) > 50:
                    break
            if state is not None and len(rows) <= 50:
                again = iter(dataset)
                again.set_state(state)
                rest = list(again)
                assert same(rest, rows[restore_at + 1 :]), "restore is not exact"
            if rows and algorithm in ("first_fit", "best_fit") and len(rows) <= 50:  # tokens conserved
                packed = "targets_segmentation" if shift == "inputs" else "inputs_segmentation"
                assert sum(int((r[packed] != 0).sum()) for r in rows) == iterator.stats.tokens
            bulk = outcome(lambda: pack_documents(np.concatenate([np.asarray(d) for d in make_docs(docs)]),
                                                  [len(d) for d in docs], seq_len=seq_len, eod_token_id=eod,
                                                  pad_token_id=pad, num_packing_bins=bins, algorithm=algorithm,
                                                  long_documents=long_documents, shift=shift).inputs.copy())
            windows = outcome(lambda: window_documents(np.concatenate([np.asarray(d) for d in make_docs(docs)]),
                                                       [len(d) for d in docs], seq_len=seq_len, eod_token_id=eod,
                                                       pad_token_id=pad).inputs.copy())
            return rows, bulk, windows
        runner("LLM packers", (docs, seq_len, bins, eod, pad, algorithm, long_documents, shift, shuffle, seed,
                               chunked, restore_at), run)

    @common
    @given(docs=docs_strategy, capacity=mostly(st.integers(1, 16), st.sampled_from([2**62, 2**63 - 1, 0])),
           bins=small, best=st.booleans(), shuffle=st.booleans(), seed=mostly(st.integers(0, 9), INTS),
           alignment=st.one_of(st.none(), st.integers(1, 3), INTS), max_items=st.one_of(st.none(), st.integers(-1, 3)),
           padding=st.one_of(st.none(), st.integers(0, 9), INTS))
    def drop_ins(docs, capacity, bins, best, shuffle, seed, alignment, max_items, padding):
        def run(arena):
            elements = [{"x": np.asarray(d)} for d in make_docs(docs)]
            packer = BestFitPackIterDataset if best else FirstFitPackIterDataset
            args = dict(length_struct={"x": capacity}, num_packing_bins=bins, shuffle_bins=shuffle, seed=seed,
                        pack_alignment_struct=None if alignment is None else {"x": alignment},
                        padding_struct=None if padding is None else {"x": padding},
                        max_sequences_per_bin=max_items)
            rows = []
            for row in packer(grain.MapDataset.source(elements).to_iter_dataset(), **args):
                rows.append({k: np.array(v) for k, v in row.items()})
                if len(rows) > 30:
                    break
            return rows
        runner("grain drop-ins", (docs, capacity, bins, best, shuffle, seed, alignment, max_items, padding), run)

    return [llm, drop_ins]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=["kernels", "packers"], required=True)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--log", default=None, help="the running example is written here first")
    parser.add_argument("--numpy-only", action="store_true", help="only the NumPy backend")
    args = parser.parse_args(argv)
    compiled = None if args.numpy_only else _backend.compiled_module()
    backends = [m for m in (compiled, _kernels_numpy) if m is not None]
    runner = Runner(backends, args.log, ALLOWED if args.target == "kernels" else ALLOWED_PACKERS)
    tests = kernel_tests(runner, 50) if args.target == "kernels" else packer_tests(runner, 10)
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        for test in tests:
            test()
    print(json.dumps({"target": args.target, "cases": runner.cases, "succeeded": runner.succeeded, "backends": [m.__name__ for m in backends],
                      "seconds": round(time.monotonic() - start, 1),
                      "kernels_file": getattr(compiled, "__file__", None)}))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: grain's threads are not ours to join


if __name__ == "__main__":
    main()
