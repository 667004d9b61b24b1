"""One JAX process of the multi-host tests (tests/test_multihost.py starts several).

Usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR SCENARIO
Exit code 77 means the platform could not start JAX's distributed runtime.

Scenarios:
  train   iterate the rows source to the end, saving a checkpoint after CHECKPOINT_STEP
          batches; restore it into a fresh iterator and compare; run the stream source.
  resume  restore the checkpoint of a run with another process count; iterate to the end.
Process 0 writes what every process saw, gathered, to OUT_DIR/<scenario>-<count>.npz.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

CHECKPOINT_STEP = 3
SCHEDULE = "0:4 40:8"  # in examples (rows): 4 per batch, 8 from the step that reached 40
NUM_DOCUMENTS, SEQ_LEN, SEED = 300, 16, 5


def corpus():
    """Documents whose tokens all equal their 1-based id, so every row names its documents."""
    lengths = np.random.default_rng(SEED).integers(1, 24, NUM_DOCUMENTS)
    tokens = np.repeat(np.arange(1, NUM_DOCUMENTS + 1, dtype=np.int32), lengths)
    return tokens, lengths


def rows_source():
    import grain

    from xbatch.packing import pack_documents

    tokens, lengths = corpus()
    # Padding and EOD are both 0 (token ids are in [0, 2**31)); document ids start at 1.
    batch = pack_documents(tokens, lengths, seq_len=SEQ_LEN, eod_token_id=0, pad_token_id=0)
    fields = {"targets": batch.targets, "inputs_segmentation": batch.inputs_segmentation}
    num_rows = batch.targets.shape[0]
    # Padding rows (all -1) after the packed rows make the schedule consume every row:
    # 40 rows of 4 per batch, then batches of 8.
    padded = 40 + -(-(num_rows - 40) // 8) * 8

    class Rows:
        def __len__(self):
            return padded

        def __getitem__(self, index):
            if index >= num_rows:
                return {key: np.full(SEQ_LEN, -1, np.int32) for key in fields}
            return {key: value[index] for key, value in fields.items()}

    return grain.MapDataset.source(Rows()).shuffle(seed=SEED)


def gathered(batch):
    from jax.experimental import multihost_utils

    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in batch.items()}


def main():
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    out_dir, scenario = sys.argv[4], sys.argv[5]
    try:
        jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=30)
    except Exception as error:  # the platform cannot start the runtime: the test skips
        print(f"jax.distributed.initialize failed: {error!r}", file=sys.stderr)
        sys.exit(77)
    import grain

    from xbatch.grain_batch_rampup import consumed_rampup_schedule
    from xbatch.multihost import GlobalBatchIterator

    schedule = consumed_rampup_schedule(SCHEDULE, unit="examples")
    ckpt = os.path.join(out_dir, "checkpoint")
    result = {"process_count": np.int64(jax.process_count()), "device_count": np.int64(jax.device_count())}
    iterator = GlobalBatchIterator(rows_source(), schedule, prefetch=1)
    if scenario == "resume":
        iterator.restore_state(ckpt)
    result["first_step"] = np.int64(iterator.step)
    result["first_global_size"] = np.int64(iterator.global_batch_size())
    targets, local_ok = [], True
    for batch in iterator:
        # This process's share of the global batch is exactly the rows it contributed.
        share = iterator.local_batch_size(iterator.step - 1)
        own = sorted((s.index[0].start or 0, np.asarray(s.data)) for s in batch["targets"].addressable_shards)
        begin = iterator.process_index * share
        local_ok &= own[0][0] == begin and np.array_equal(np.concatenate([d for _, d in own]),
                                                          gathered(batch)["targets"][begin:begin + share])
        targets.append(gathered(batch)["targets"])
        if scenario == "train" and iterator.step == CHECKPOINT_STEP:
            iterator.save_state(ckpt)
    iterator.close()
    result["local_shares_ok"] = np.bool_(local_ok)
    result["sizes"] = np.array([t.shape[0] for t in targets])
    result["targets"] = np.concatenate(targets)

    if scenario == "train":
        restored = GlobalBatchIterator(rows_source(), schedule)
        restored.restore_state(ckpt)
        again = np.concatenate([gathered(b)["targets"] for b in restored])
        result["restored_equal"] = np.bool_(np.array_equal(again, np.concatenate(targets[CHECKPOINT_STEP:])))

        # Stream source: each process's own shard, 2 elements per process per step.
        def shard():
            ds = grain.MapDataset.range(1000)[jax.process_index()::jax.process_count()]
            return ds.map(lambda i: {"x": np.full(3, i, np.int64)}).to_iter_dataset()

        stream = GlobalBatchIterator(shard(), 2 * jax.process_count())
        stream_batches = [gathered(next(stream))["x"][:, 0] for _ in range(2)]
        state = stream.get_state()
        later = [gathered(next(stream))["x"][:, 0] for _ in range(3)]
        fresh = GlobalBatchIterator(shard(), 2 * jax.process_count())
        fresh.set_state(state)
        result["stream_restored_equal"] = np.bool_(
            all(np.array_equal(gathered(next(fresh))["x"][:, 0], b) for b in later))
        result["stream"] = np.stack(stream_batches + later)
    if jax.process_index() == 0:
        np.savez(os.path.join(out_dir, f"{scenario}-{jax.process_count()}.npz"), **result)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
