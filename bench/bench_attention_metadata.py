"""Attention metadata throughput: rows/s of ``attention_metadata`` at 2,048 and 8,192 tokens.

asv runs the ``AttentionMetadata`` class; ``python bench/bench_attention_metadata.py``
prints the same cases side by side in one process. The batch is 64 rows of the LLM
packer (``pack_documents``, lognormal documents with a mean of about 90 tokens, so about
20 documents per 2,048-token row), ``max_segments`` the most documents in a row.

Implementations, all producing seq_lengths [B, M], seq_offsets [B, M + 1] and cu_seqlens:

* ``cython``, ``numpy``: :func:`xbatch.packing.attention_metadata` (validation included)
  on the compiled kernel and on its NumPy twin;
* ``numpy_loop``: what a user writes in NumPy: per row ``np.bincount`` for the lengths and
  ``np.flatnonzero`` of the id changes for the starts, then a ``cumsum``;
* ``jnp``: Transformer Engine's recipe (vmapped ``jnp.bincount`` and ``jnp.argwhere`` with
  a static size, then the compaction and ``cumsum`` for cu_seqlens), jitted, on JAX's CPU
  backend, from a NumPy batch to NumPy results (transfers included).

``--only packer`` (``PackerAttentionOutput`` in asv) measures what the packers'
``attention_metadata=True`` costs: tokens/s of packing a lognormal corpus (mean about 90
tokens) into 2,048-token rows with ``max_documents_per_row=32``, with and without the
option, on the streaming packer (ragged chunks of 4,096 documents, every row consumed)
and on ``pack_documents``, on both backends; medians, one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from xbatch import _backend, _kernels_numpy
from xbatch.compare import median_seconds

ROW_LENGTHS = (2048, 8192)
IMPLEMENTATIONS = ("cython", "numpy", "numpy_loop", "jnp")
NUM_ROWS = 64


def make_segmentation(row_length: int, num_rows: int = NUM_ROWS, seed: int = 0) -> np.ndarray:
    """int32[num_rows, row_length]: inputs_segmentation of LLM-packer rows."""
    from xbatch.packing import pack_documents

    rng = np.random.default_rng(seed)
    count = num_rows * row_length // 80
    lengths = np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=count), 1, row_length).astype(np.int64)
    tokens = rng.integers(1, 50_000, size=int(lengths.sum()), dtype=np.int32)
    batch = pack_documents(tokens, lengths, seq_len=row_length, eod_token_id=1, num_packing_bins=num_rows)
    return np.ascontiguousarray(batch.inputs_segmentation[:num_rows])


def numpy_loop(seg: np.ndarray, max_segments: int) -> tuple:
    rows = seg.shape[0]
    lengths = np.full((rows, max_segments), -1, dtype=np.int32)
    offsets = np.full((rows, max_segments + 1), -1, dtype=np.int32)
    for b in range(rows):
        row = seg[b]
        counts = np.bincount(row, minlength=max_segments + 1)[1:]
        n = int(np.count_nonzero(counts))
        starts = np.flatnonzero((row != 0) & (np.diff(row, prepend=0) != 0))
        lengths[b, :n] = counts[:n]
        offsets[b, :n] = starts
    used = lengths[lengths > 0]
    cu_seqlens = np.full(rows * max_segments + 1, used.sum(), dtype=np.int32)
    cu_seqlens[0] = 0
    cu_seqlens[1 : len(used) + 1] = np.cumsum(used)
    return lengths, offsets, cu_seqlens


def jnp_function(max_segments: int):
    """Transformer Engine's segment-ids-to-seqlens-and-offsets recipe, plus cu_seqlens."""
    import functools

    import jax
    import jax.numpy as jnp

    @jax.jit
    def metadata(seg):
        counts = jax.vmap(functools.partial(jnp.bincount, length=max_segments + 1))(seg)[:, 1:]
        lengths = jnp.where(counts > 0, counts, -1).astype(jnp.int32)
        previous = jnp.pad(seg[:, :-1], ((0, 0), (1, 0)))
        starts = (seg != 0) & (seg != previous)
        argwhere = functools.partial(jnp.argwhere, size=max_segments + 1, fill_value=-1)
        offsets = jax.vmap(argwhere)(starts)[..., 0].astype(jnp.int32)
        flat = counts.reshape(-1)
        kept = jnp.nonzero(flat > 0, size=flat.size, fill_value=flat.size)[0]
        compact = jnp.take(flat, kept, fill_value=0)
        cu_seqlens = jnp.concatenate([jnp.zeros(1, flat.dtype), jnp.cumsum(compact)]).astype(jnp.int32)
        return lengths, offsets, cu_seqlens

    return lambda seg: jax.device_get(metadata(seg))


class AttentionMetadata:
    """asv: attention_metadata on 64 packed rows of 2,048 or 8,192 tokens."""

    params = (list(ROW_LENGTHS), list(IMPLEMENTATIONS))
    param_names = ["row_length", "implementation"]

    def setup(self, row_length: int, implementation: str) -> None:
        self.seg = make_segmentation(row_length)
        self.max_segments = int(self.seg.max())
        if implementation in ("cython", "numpy"):
            from xbatch.packing import attention_metadata

            module = _backend.compiled_module() if implementation == "cython" else _kernels_numpy
            if module is None:
                raise NotImplementedError("the compiled extension is not built")

            def run(seg, max_segments):
                saved = _backend.impl
                _backend.impl = module
                try:
                    return attention_metadata(seg, max_segments=max_segments)
                finally:
                    _backend.impl = saved

            self.function = run
        elif implementation == "numpy_loop":
            self.function = numpy_loop
        else:
            try:
                jitted = jnp_function(self.max_segments)
            except ImportError as exc:
                raise NotImplementedError("jax is not installed") from exc
            jitted(self.seg)  # compile outside the timing
            self.function = lambda seg, _: jitted(seg)

    def time_metadata(self, row_length: int, implementation: str) -> None:
        self.function(self.seg, self.max_segments)


def rows_per_second(case: AttentionMetadata, row_length: int, implementation: str, repeats: int) -> float:
    case.setup(row_length, implementation)
    seconds = median_seconds(lambda: case.time_metadata(row_length, implementation), repeats)
    return NUM_ROWS / seconds


def kernel_rates(repeats: int = 21) -> None:
    """Prints rows/s per row length and implementation (median of ``repeats`` runs)."""
    case = AttentionMetadata()
    rates: dict[tuple[int, str], float] = {}
    for row_length in ROW_LENGTHS:
        for implementation in IMPLEMENTATIONS:
            try:
                rates[row_length, implementation] = rows_per_second(case, row_length, implementation, repeats)
            except NotImplementedError as exc:
                print(f"skipped {implementation}: {exc}", file=sys.stderr)
    print(f"attention_metadata, {NUM_ROWS} packed rows per call, rows/s (median of {repeats})")
    print(f"{'tokens':>6} " + " ".join(f"{name:>12}" for name in IMPLEMENTATIONS)
          + f" {'cython/loop':>12} {'cython/jnp':>11} {'numpy/loop':>11}")
    for row_length in ROW_LENGTHS:
        cells = " ".join(
            f"{rates[row_length, name]:>12,.0f}" if (row_length, name) in rates else f"{'-':>12}"
            for name in IMPLEMENTATIONS
        )
        ratios = []
        for top, bottom, width in (("cython", "numpy_loop", 11), ("cython", "jnp", 10), ("numpy", "numpy_loop", 10)):
            if (row_length, top) in rates and (row_length, bottom) in rates:
                ratios.append(f"{rates[row_length, top] / rates[row_length, bottom]:>{width}.1f}x")
            else:
                ratios.append(f"{'-':>{width + 1}}")
        print(f"{row_length:>6} {cells} {' '.join(ratios)}")



PACKER_SEQ_LEN = 2048
PACKER_CAP = 32
PACKER_PATHS = ("stream", "bulk")


def make_corpus(num_tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, lengths): lognormal documents, mean about 90 tokens."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=num_tokens // 90), 1, 20_000).astype(np.int64)
    return rng.integers(2, 50_000, size=int(lengths.sum()), dtype=np.int32), lengths


class PackerAttentionOutput:
    """asv: packing with and without ``attention_metadata=True`` (same cap), tokens/s."""

    params = (list(PACKER_PATHS), [False, True])
    param_names = ["path", "attention_metadata"]
    num_tokens = 2_000_000

    def setup(self, path: str, attention_metadata: bool) -> None:
        self.tokens, self.lengths = make_corpus(self.num_tokens)
        options = dict(seq_len=PACKER_SEQ_LEN, num_packing_bins=64, eod_token_id=1,
                       max_documents_per_row=PACKER_CAP, attention_metadata=attention_metadata)
        if path == "bulk":
            from xbatch.packing import pack_documents

            self.run = lambda: pack_documents(self.tokens, self.lengths, **options)
            return
        import grain

        from xbatch.compare import _in_process_read_options
        from xbatch.packing import LLMPackIterDataset

        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        chunks = [{"tokens": self.tokens[offsets[a]:offsets[min(a + 4096, len(self.lengths))]],
                   "lengths": self.lengths[a:a + 4096]} for a in range(0, len(self.lengths), 4096)]
        dataset = LLMPackIterDataset(grain.MapDataset.source(chunks).to_iter_dataset(_in_process_read_options()),
                                     **options)

        def run() -> None:
            for _ in dataset:
                pass

        self.run = run

    def time_pack(self, path: str, attention_metadata: bool) -> None:
        self.run()


def packer_rates(repeats: int = 7, cpu_time: bool = False) -> None:
    """Prints tokens/s with and without the packers' attention metadata, per backend and
    path. The two runs alternate, so that a change in the machine's load hits both."""
    clock = time.process_time if cpu_time else time.perf_counter
    print(f"packing {PackerAttentionOutput.num_tokens:,} tokens into {PACKER_SEQ_LEN}-token rows, "
          f"max_documents_per_row={PACKER_CAP}, M tokens per {'CPU-' if cpu_time else ''}s "
          f"(median of {repeats}, one process; cost = time with / time without)")
    print(f"{'backend':>8} {'path':>7} {'without':>9} {'with':>9} {'cost':>7}")
    saved = _backend.impl
    try:
        for backend in ("cython", "numpy"):
            module = _backend.compiled_module() if backend == "cython" else _kernels_numpy
            if module is None:
                print("skipped cython: the compiled extension is not built", file=sys.stderr)
                continue
            _backend.impl = module
            for path in PACKER_PATHS:
                cases = []
                for metadata in (False, True):
                    case = PackerAttentionOutput()
                    case.setup(path, metadata)
                    case.run()  # warm-up: the pool's buffers, first-touched pages
                    cases.append(case)
                times: list[list[float]] = [[], []]
                for _ in range(repeats):
                    for case, spent in zip(cases, times):
                        start = clock()
                        case.run()
                        spent.append(clock() - start)
                without, with_ = (statistics.median(spent) for spent in times)
                rates = [PackerAttentionOutput.num_tokens / seconds / 1e6 for seconds in (without, with_)]
                print(f"{backend:>8} {path:>7} {rates[0]:>9.1f} {rates[1]:>9.1f} {with_ / without:>6.2f}x")
    finally:
        _backend.impl = saved


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("kernel", "packer"), help="one of the two benchmarks")
    parser.add_argument("--repeats", type=int, default=None, help="runs per median (default 21 kernel, 7 packer)")
    parser.add_argument("--cpu-time", action="store_true", help="packer: CPU time of this process, not wall time")
    args = parser.parse_args(argv)
    if args.only != "packer":
        kernel_rates(args.repeats or 21)
    if args.only != "kernel":
        packer_rates(args.repeats or 7, cpu_time=args.cpu_time)


if __name__ == "__main__":
    main()
