"""xbatch.batch: the seed's examples, NumPy/JAX behaviour, pytrees, slicing, stacking, errors."""

import dataclasses
import pickle
import subprocess
import sys
import textwrap

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xbatch.batch import Batch, LLMBatch, LLMIndexedBatch, dataclass_kwonly, stack_rows

E = 99  # the end-of-document token of the seed's example

# The seed's packed row: documents [1, 2, 3], [4, 5] (and [6, 7], which goes to the next row).
SEED_ROW = dict(
    targets=[1, 2, 3, E, 4, 5, E, 0],
    inputs=[E, 1, 2, 3, E, 4, 5, E],
    targets_segmentation=[1, 1, 1, 1, 2, 2, 2, 0],
    inputs_segmentation=[1, 1, 1, 1, 2, 2, 2, 0],
    targets_position=[0, 1, 2, 3, 0, 1, 2, 0],
    inputs_position=[0, 1, 2, 3, 0, 1, 2, 0],
)
SEED_BORDERS = [1, 0, 0, 0, 1, 0, 0, 1]


def seed_batch(xp=np, rows=1) -> LLMBatch:
    return LLMBatch(**{k: xp.asarray([v] * rows, dtype=xp.int32) for k, v in SEED_ROW.items()})


def random_indexed_batch(batch_size=4, length=10, seed=0) -> LLMIndexedBatch:
    """Rows of 1..3 documents with padding at the end, int32."""
    rng = np.random.default_rng(seed)
    segmentation = np.sort(rng.integers(1, 4, size=(batch_size, length)), axis=1).astype(np.int32)
    segmentation[:, -2:] = 0
    tokens = rng.integers(0, 1000, size=(batch_size, length)).astype(np.int32)
    positions = rng.integers(0, length, size=(batch_size, length)).astype(np.int32)
    return LLMIndexedBatch(
        inputs=tokens,
        targets=tokens + 1,
        inputs_position=positions,
        inputs_segmentation=segmentation,
        targets_position=positions,
        targets_segmentation=segmentation,
        document_idx=np.arange(1, batch_size + 1, dtype=np.int32),
        sequence_idx=np.arange(batch_size, dtype=np.int32) % 2,
    )


def assert_same_batch(actual, expected) -> None:
    assert type(actual) is type(expected)
    for field in dataclasses.fields(expected):
        a, e = getattr(actual, field.name), getattr(expected, field.name)
        if e is None:
            assert a is None, field.name
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=field.name)


# --- the seed's examples ----------------------------------------------------------------


def test_seed_packed_row_borders(backend):
    borders = seed_batch().get_document_borders()
    assert isinstance(borders, np.ndarray) and borders.dtype == bool
    np.testing.assert_array_equal(borders, [np.array(SEED_BORDERS, dtype=bool)])


def test_seed_segmentation_example(backend):
    segmentation = np.array([[1, 1, 2, 2, 2, 3]], dtype=np.int32)
    batch = LLMBatch.from_inputs(np.zeros((1, 6), np.int32))
    batch = batch.replace(inputs_segmentation=segmentation)
    np.testing.assert_array_equal(batch.get_document_borders(), [[1, 0, 1, 0, 0, 1]])


def test_seed_example_is_in_the_docstring():
    for line in ("targets:              [1, 2, 3, E, 4, 5, E, 0]", "doc borders:          [1, 0, 0, 0, 1, 0, 0, 1]"):
        assert line in LLMBatch.__doc__


@pytest.mark.parametrize("under_jit", [False, True])
def test_jax_borders_match_seed(under_jit):
    get = LLMBatch.get_document_borders
    borders = (jax.jit(get) if under_jit else get)(seed_batch(jnp, rows=2))
    assert isinstance(borders, jax.Array) and borders.dtype == jnp.bool_
    np.testing.assert_array_equal(borders, [SEED_BORDERS] * 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=5, max_size=5), min_size=1, max_size=4))
def test_numpy_and_jax_borders_agree(segmentation_rows):
    segmentation = np.array(segmentation_rows, dtype=np.int32)
    batch = LLMBatch.from_inputs(np.zeros(segmentation.shape, np.int32)).replace(
        inputs_segmentation=segmentation
    )
    on_device = jax.tree.map(jnp.asarray, batch)
    expected = np.concatenate(
        [np.ones((len(segmentation), 1), bool), segmentation[:, 1:] != segmentation[:, :-1]], axis=1
    )
    np.testing.assert_array_equal(batch.get_document_borders(), expected)
    np.testing.assert_array_equal(on_device.get_document_borders(), expected)


# --- from_inputs ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int16, np.float32])
def test_from_inputs_shifts_right_with_zero_of_the_dtype(backend, dtype):
    tokens = np.array([[5, 6, 7], [8, 9, 10]], dtype=dtype)
    batch = LLMBatch.from_inputs(tokens)
    assert isinstance(batch.inputs, np.ndarray) and batch.inputs.dtype == dtype
    np.testing.assert_array_equal(batch.inputs, [[0, 5, 6], [0, 8, 9]])
    np.testing.assert_array_equal(batch.targets, tokens)
    for name in ("inputs_position", "targets_position"):
        assert getattr(batch, name).dtype == np.int32
        np.testing.assert_array_equal(getattr(batch, name), [[0, 1, 2]] * 2)
    for name in ("inputs_segmentation", "targets_segmentation"):
        assert getattr(batch, name).dtype == np.int32
        np.testing.assert_array_equal(getattr(batch, name), np.ones((2, 3)))
    np.testing.assert_array_equal(batch.get_document_borders(), [[1, 0, 0]] * 2)


def test_from_inputs_fields_are_writeable_and_separate():
    batch = LLMBatch.from_inputs(np.zeros((2, 3), np.int32))
    batch.inputs_position[0, 0] = 7  # a broadcast view would refuse this
    batch.inputs_segmentation[0, 0] = 7
    assert batch.inputs_position[1, 0] == 0 and batch.targets_position[0, 0] == 0
    assert batch.targets_segmentation[0, 0] == 1


def test_from_inputs_with_targets_keeps_inputs():
    inputs, targets = np.array([[1, 2]]), np.array([[3, 4]])
    batch = LLMBatch.from_inputs(inputs, targets)
    assert batch.inputs is inputs and batch.targets is targets


def test_from_inputs_with_feature_axes():
    embeddings = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    batch = LLMBatch.from_inputs(embeddings)
    np.testing.assert_array_equal(batch.inputs[0, 0], np.zeros(4))
    np.testing.assert_array_equal(batch.inputs[0, 1:], embeddings[0, :2])
    assert batch.inputs_position.shape == (1, 3)


@pytest.mark.parametrize("under_jit", [False, True])
def test_from_inputs_on_jax(under_jit):
    make = jax.jit(LLMBatch.from_inputs) if under_jit else LLMBatch.from_inputs
    batch = make(jnp.array([[5, 6, 7]], dtype=jnp.int32))
    assert isinstance(batch, LLMBatch)
    for field in ("inputs", "targets", "inputs_position", "inputs_segmentation"):
        assert isinstance(getattr(batch, field), jax.Array), field
    np.testing.assert_array_equal(batch.inputs, [[0, 5, 6]])
    np.testing.assert_array_equal(batch.targets_position, [[0, 1, 2]])


def test_indexed_from_inputs():
    batch = LLMIndexedBatch.from_inputs(
        np.array([[1, 2], [3, 4]]), np.array([1, 0], np.int32), np.array([0, 0], np.int32)
    )
    assert isinstance(batch, LLMIndexedBatch)
    np.testing.assert_array_equal(batch.inputs, [[0, 1], [0, 3]])
    np.testing.assert_array_equal(batch.document_idx, [1, 0])


@pytest.mark.parametrize("inputs, got", [(np.array([1, 2, 3]), r"shape \(3,\)"), ([[1, 2]], "list")])
def test_from_inputs_needs_a_length_axis(inputs, got):
    with pytest.raises(ValueError, match=f"inputs: expected .* got {got}"):
        LLMBatch.from_inputs(inputs)


# --- NumPy stays NumPy ------------------------------------------------------------------


def test_numpy_fields_stay_numpy():
    batch = random_indexed_batch()
    results = [
        batch[1:],
        batch[:, 2:5],
        LLMBatch.from_inputs(np.ones((2, 3), np.int32)),
        stack_rows([{k: v[0] for k, v in vars(batch).items() if v is not None}] * 2),
    ]
    for result in results:
        for value in jax.tree.leaves(result):
            assert isinstance(value, np.ndarray)
        assert isinstance(result.get_document_borders(), np.ndarray)


def test_numpy_batches_never_touch_a_jax_device():
    # A fresh process: JAX initializes its backends on first device use, and never after.
    script = textwrap.dedent(
        """
        import pickle
        import numpy as np
        from jax._src import xla_bridge
        from xbatch.batch import LLMBatch, LLMIndexedBatch, stack_rows

        batch = LLMIndexedBatch.from_inputs(
            np.arange(12, dtype=np.int32).reshape(3, 4), np.ones(3, np.int32), np.zeros(3, np.int32)
        )
        sliced = batch[:, 1:3][1:]
        sliced.get_document_borders()
        LLMBatch.get_dtype_struct(2, 4)
        pickle.loads(pickle.dumps(sliced))
        stack_rows([{k: v[0] for k, v in vars(batch).items() if v is not None}] * 2)
        assert not xla_bridge.backends_are_initialized(), "a JAX backend was initialized"
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_kernels_do_not_import_batch_or_jax():
    script = "import sys, xbatch.kernels; assert not {'xbatch.batch', 'jax'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", script], check=True)


# --- pytrees ----------------------------------------------------------------------------


def test_pytree_leaves_and_empty_borders():
    batch = random_indexed_batch()
    leaves, treedef = jax.tree.flatten(batch)
    assert len(leaves) == 8  # the None borders are an empty subtree
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(batch)[0]]
    assert paths[0] == ".inputs" and paths[-1] == ".sequence_idx"
    assert_same_batch(jax.tree.unflatten(treedef, leaves), batch)
    assert len(jax.tree.leaves(batch[:, 1:])) == 9  # slicing stores the borders


def test_tree_map_keeps_the_class():
    batch = random_indexed_batch()
    doubled = jax.tree.map(lambda x: x * 2, batch)
    assert isinstance(doubled, LLMIndexedBatch)
    np.testing.assert_array_equal(doubled.document_idx, batch.document_idx * 2)


def test_unflatten_accepts_placeholder_leaves():
    treedef = jax.tree.structure(random_indexed_batch())
    placeholder = object()
    rebuilt = jax.tree.unflatten(treedef, [placeholder] * treedef.num_leaves)
    assert rebuilt.inputs is placeholder and rebuilt._document_borders is None


@pytest.mark.parametrize("cls", [LLMBatch, LLMIndexedBatch])
def test_jit_round_trip(cls):
    batch = random_indexed_batch()
    if cls is LLMBatch:
        batch = LLMBatch(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(LLMBatch)})
    out = jax.jit(lambda b: b)(batch)
    assert_same_batch(out, batch)
    assert isinstance(out.inputs, jax.Array)


def test_jit_slices_and_borders():
    batch = random_indexed_batch()

    @jax.jit
    def cut(b):
        return b[:, 3:7], b[:, 3:7].get_document_borders()

    sliced, borders = cut(batch)
    assert_same_batch(sliced, batch[:, 3:7])
    np.testing.assert_array_equal(borders, batch.get_document_borders()[:, 3:7])


def test_construction_under_jit_with_tracers():
    @jax.jit
    def build(tokens, document_idx):
        return LLMIndexedBatch.from_inputs(tokens, document_idx, document_idx * 0)

    batch = build(jnp.ones((2, 3), jnp.int32), jnp.array([1, 2], jnp.int32))
    assert isinstance(batch, LLMIndexedBatch)
    np.testing.assert_array_equal(batch.sequence_idx, [0, 0])


def test_device_put_with_named_sharding():
    batch = random_indexed_batch()
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    placed = jax.device_put(batch, sharding)
    assert_same_batch(placed, batch)
    assert placed.inputs.sharding == sharding and placed.document_idx.sharding == sharding
    assert isinstance(jax.device_put(batch), LLMIndexedBatch)


@pytest.mark.parametrize("on_device", [False, True])
def test_pickle(on_device):
    batch = random_indexed_batch()[:, 2:]
    if on_device:
        batch = jax.device_put(batch)
    restored = pickle.loads(pickle.dumps(batch))
    assert_same_batch(restored, batch)
    np.testing.assert_array_equal(restored.get_document_borders(), batch.get_document_borders())


def test_batches_are_frozen_and_keyword_only():
    batch = seed_batch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.inputs = batch.targets
    with pytest.raises(TypeError):
        Batch(np.zeros(2), np.zeros(2))


def test_dataclass_kwonly_makes_pytrees():
    @dataclass_kwonly
    class WeightedBatch(Batch):
        weights: jax.Array

    batch = WeightedBatch(inputs=np.zeros((2, 3)), targets=np.ones((2, 3)), weights=np.ones(2))
    out = jax.jit(lambda b: jax.tree.map(lambda x: x + 1, b))(batch)
    assert isinstance(out, WeightedBatch)
    np.testing.assert_array_equal(out.weights, [2, 2])


# --- slicing ----------------------------------------------------------------------------


def test_slicing_base_batch():
    batch = Batch(inputs=np.arange(6).reshape(3, 2), targets=np.arange(3))
    sliced = batch[1:]
    assert isinstance(sliced, Batch)
    np.testing.assert_array_equal(sliced.inputs, [[2, 3], [4, 5]])
    np.testing.assert_array_equal(batch[:, 1].targets, [0, 1, 2])  # (B,) fields cut along B only


@pytest.mark.parametrize(
    "key",
    [
        slice(1, 3),
        np.array([3, 0]),
        np.array([True, False, True, False]),
        (slice(None), slice(3, 7)),
        (slice(1, None), slice(2, 9)),
        (slice(None), slice(None, None, 2)),
        (np.array([2, 1]), slice(4, None)),
    ],
    ids=["rows", "row-indices", "row-mask", "tokens", "rows-and-tokens", "token-step", "indices-and-tokens"],
)
def test_slicing_indexed_batch(backend, key):
    batch = random_indexed_batch()
    sliced = batch[key]
    assert isinstance(sliced, LLMIndexedBatch)
    row_key = key[0] if isinstance(key, tuple) else key
    for name in ("inputs", "targets", "inputs_position", "inputs_segmentation", "targets_position", "targets_segmentation"):
        np.testing.assert_array_equal(getattr(sliced, name), getattr(batch, name)[key], err_msg=name)
    for name in ("document_idx", "sequence_idx"):
        np.testing.assert_array_equal(getattr(sliced, name), getattr(batch, name)[row_key], err_msg=name)
    np.testing.assert_array_equal(sliced.get_document_borders(), batch.get_document_borders()[key])


def test_token_slice_keeps_borders_of_the_whole_row(backend):
    # A cut mid-document is no border: recomputed on the slice alone, token 5 would be one.
    np.testing.assert_array_equal(seed_batch()[:, 5:8].get_document_borders(), [[0, 0, 1]])


def test_slice_of_a_slice(backend):
    batch = random_indexed_batch(batch_size=5, length=12)
    twice = batch[1:, 2:10][::2, 3:]
    once = batch[1::2, 5:10]
    assert_same_batch(twice, once.replace(_document_borders=batch.get_document_borders()[1::2, 5:10]))


def test_integer_index_gives_one_row():
    batch = random_indexed_batch()
    row = batch[2]
    assert isinstance(row, LLMIndexedBatch)
    assert row.inputs.shape == (10,) and row.document_idx.shape == ()
    assert row.document_idx == 3


def test_slicing_jax_fields_gives_jax():
    sliced = jax.device_put(seed_batch(rows=2))[:, 5:]
    assert isinstance(sliced.inputs, jax.Array) and isinstance(sliced.get_document_borders(), jax.Array)
    np.testing.assert_array_equal(sliced.get_document_borders(), [[0, 0, 1]] * 2)


# --- dtype structs and samples -----------------------------------------------------------


@pytest.mark.parametrize("cls", [LLMBatch, LLMIndexedBatch])
def test_dtype_struct(cls):
    struct = cls.get_dtype_struct(3, 16)
    assert type(struct) is cls and struct._document_borders is None
    for field in dataclasses.fields(struct):
        value = getattr(struct, field.name)
        if field.name == "_document_borders":
            continue
        assert isinstance(value, jax.ShapeDtypeStruct) and value.dtype == jnp.int32
        assert value.shape == ((3,) if field.name in ("document_idx", "sequence_idx") else (3, 16))


@pytest.mark.parametrize("cls", [LLMBatch, LLMIndexedBatch])
def test_sample_is_zeros_of_the_struct(cls):
    sample, struct = cls.get_sample(2, 5), cls.get_dtype_struct(2, 5)
    assert type(sample) is cls
    for value, expected in zip(jax.tree.leaves(sample), jax.tree.leaves(struct), strict=True):
        assert isinstance(value, jax.Array) and not value.any()  # as the seed system returns it
        assert value.shape == expected.shape and value.dtype == expected.dtype
    jax.eval_shape(lambda b: b.get_document_borders(), struct)  # structs trace like arrays


@pytest.mark.parametrize("args, name", [((0, 4), "batch_size"), ((2, -1), "max_length"), ((2.0, 4), "batch_size")])
def test_dtype_struct_rejects_bad_sizes(args, name):
    with pytest.raises(ValueError, match=name):
        LLMIndexedBatch.get_dtype_struct(*args)


# --- stack_rows -------------------------------------------------------------------------


def rows_of(batch: LLMBatch) -> list[dict]:
    return [{k: v[i] for k, v in vars(batch).items() if v is not None} for i in range(len(batch.inputs))]


@pytest.mark.parametrize("indexed", [False, True])
def test_stack_rows_picks_the_class(indexed):
    batch = random_indexed_batch()
    rows = rows_of(batch)
    if not indexed:
        for row in rows:
            del row["document_idx"], row["sequence_idx"]
    stacked = stack_rows(rows)
    assert type(stacked) is (LLMIndexedBatch if indexed else LLMBatch)
    for field in dataclasses.fields(stacked):
        if field.name != "_document_borders":
            np.testing.assert_array_equal(getattr(stacked, field.name), getattr(batch, field.name))


def test_stack_rows_as_grain_batch_fn():
    batch = random_indexed_batch(batch_size=5)
    dataset = grain.MapDataset.source(rows_of(batch)).batch(2, batch_fn=stack_rows)
    batches = list(dataset.to_iter_dataset())
    assert [type(b) for b in batches] == [LLMIndexedBatch] * 3
    np.testing.assert_array_equal(batches[1].document_idx, [3, 4])
    np.testing.assert_array_equal(batches[2].inputs, batch.inputs[4:])


def test_grain_default_batching_stacks_batch_rows():
    batch = random_indexed_batch()[:, :6]
    rows = [batch[i] for i in range(4)]
    stacked = next(iter(grain.MapDataset.source(rows).batch(4)))
    assert_same_batch(stacked, batch)


def test_stack_rows_missing_key():
    rows = rows_of(random_indexed_batch())
    del rows[2]["targets_position"]
    with pytest.raises(ValueError, match=r"rows\[2\].*missing \['targets_position'\]"):
        stack_rows(rows)


def test_stack_rows_unknown_key():
    rows = rows_of(random_indexed_batch())
    rows[0]["loss_mask"] = rows[0]["inputs"]
    with pytest.raises(ValueError, match=r"unknown \['loss_mask'\]"):
        stack_rows(rows)


def test_stack_rows_mismatched_lengths():
    rows = rows_of(random_indexed_batch())
    rows[1]["inputs"] = rows[1]["inputs"][:5]
    with pytest.raises(ValueError, match=r"'inputs'.*\(5,\), \(10,\)"):
        stack_rows(rows)


def test_stack_rows_empty():
    with pytest.raises(ValueError, match="rows"):
        stack_rows([])


def test_stack_rows_explicit_class_needs_its_keys():
    rows = rows_of(seed_batch())
    with pytest.raises(ValueError, match=r"missing \['document_idx', 'sequence_idx'\]"):
        stack_rows(rows, cls=LLMIndexedBatch)


# --- bad construction -------------------------------------------------------------------


def llm_fields(**changes):
    fields = {k: np.asarray([v], dtype=np.int32) for k, v in SEED_ROW.items()}
    return {**fields, **changes}


def test_missing_field_is_named():
    fields = llm_fields()
    del fields["inputs_segmentation"]
    with pytest.raises(TypeError, match="inputs_segmentation"):
        LLMBatch(**fields)


@pytest.mark.parametrize(
    "name", ["inputs", "targets", "inputs_position", "targets_position", "targets_segmentation", "_document_borders"]
)
def test_mismatched_shape_is_named(name):
    with pytest.raises(ValueError, match=f"^{name}: expected shape"):
        LLMBatch(**llm_fields(**{name: np.zeros((1, 7), np.int32)}))


def test_segmentation_must_be_two_dimensional():
    fields = {k: v[0] for k, v in llm_fields().items()}
    with pytest.raises(ValueError, match="inputs_segmentation"):
        LLMBatch(**fields)


@pytest.mark.parametrize("name", ["inputs_segmentation", "targets_segmentation", "inputs_position"])
@pytest.mark.parametrize("dtype", [np.float32, bool])
def test_non_integer_segmentation_is_named(name, dtype):
    with pytest.raises(TypeError, match=f"{name}: expected an integer dtype"):
        LLMBatch(**llm_fields(**{name: np.ones((1, 8), dtype)}))


@pytest.mark.parametrize("name", ["document_idx", "sequence_idx"])
def test_bad_indices_are_named(name):
    good = {"document_idx": np.ones(1, np.int32), "sequence_idx": np.zeros(1, np.int32)}
    with pytest.raises(ValueError, match=f"{name}: expected shape \\(1,\\)"):
        LLMIndexedBatch(**llm_fields(), **{**good, name: np.ones((1, 8), np.int32)})
    with pytest.raises(TypeError, match=name):
        LLMIndexedBatch(**llm_fields(), **{**good, name: np.ones(1, np.float32)})


def test_base_batch_sizes_must_agree():
    with pytest.raises(ValueError, match="targets: expected batch size 2"):
        Batch(inputs=np.zeros((2, 3)), targets=np.zeros((3, 3)))


def test_replace_validates():
    with pytest.raises(ValueError, match="targets"):
        seed_batch().replace(targets=np.zeros((1, 3), np.int32))
