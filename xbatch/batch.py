"""Batch dataclasses for LLM training: JAX pytrees whose fields may stay NumPy on the host.

:class:`Batch`, :class:`LLMBatch` and :class:`LLMIndexedBatch` are frozen, keyword-only
dataclasses registered as JAX pytrees (without flax): every field is a child, so
``jax.jit``, ``jax.tree.map`` and ``jax.device_put`` take and return them, and a
``_document_borders`` of ``None`` is an empty subtree. They pickle.

Fields hold NumPy arrays (on the host, in the input pipeline) or JAX arrays (on device,
also traced under ``jit``). Every method answers in the kind of array it was given:
NumPy fields are built, sliced and bordered with NumPy and :mod:`xbatch.kernels`, and
never touch a JAX device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from . import kernels
from ._checks import positive_int

__all__ = ["Batch", "LLMBatch", "LLMIndexedBatch", "dataclass_kwonly", "stack_rows"]

T = TypeVar("T")


def _unflatten(cls: type[T], names: tuple[str, ...], children: Sequence[Any]) -> T:
    # Bypasses __init__: JAX unflattens with placeholder leaves (object(), None, tracers
    # of another shape under vmap) that validation must not see.
    instance = object.__new__(cls)
    for name, value in zip(names, children):
        object.__setattr__(instance, name, value)
    return instance


def _register_pytree(cls: type[T]) -> type[T]:
    names = tuple(field.name for field in dataclasses.fields(cls))
    keys = tuple(jax.tree_util.GetAttrKey(name) for name in names)

    def flatten_with_keys(batch):
        return [(key, getattr(batch, name)) for key, name in zip(keys, names)], None

    def flatten(batch):
        return [getattr(batch, name) for name in names], None

    def unflatten(_, children):
        return _unflatten(cls, names, children)

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def dataclass_kwonly(cls: type[T]) -> type[T]:
    """Makes ``cls`` a frozen, keyword-only dataclass registered as a JAX pytree.

    The counterpart of ``functools.partial(flax.struct.dataclass, kw_only=True)``: every
    field is a pytree child. Equality is identity (``eq=False``), since comparing array
    fields has no single truth value.
    """
    return _register_pytree(dataclasses.dataclass(frozen=True, kw_only=True, eq=False)(cls))


def _shape(value: Any) -> tuple[int, ...] | None:
    """The shape of an array, tracer or ``jax.ShapeDtypeStruct``; None for anything else."""
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def _require_shape(name: str, value: Any, expected: tuple[int, ...], what: str) -> None:
    shape = _shape(value)
    if shape is not None and shape != expected:
        raise ValueError(f"{name}: expected shape {expected} ({what}), got {shape}")


def _require_integer(name: str, value: Any) -> None:
    dtype = getattr(value, "dtype", None)
    if dtype is not None and (dtype == bool or not np.issubdtype(np.dtype(dtype), np.integer)):
        raise TypeError(f"{name}: expected an integer dtype, got {dtype}")


def _take(value: Any, key: Any) -> Any:
    """``value[key]``, with a tuple key cut to ``value.ndim`` axes; None stays None."""
    if value is None:
        return None
    if isinstance(key, tuple):
        key = key[: np.ndim(value)]
    return value[key]


def _xp(array: Any):
    """The array module for ``array``: jax.numpy for JAX arrays and tracers, else NumPy."""
    return jnp if isinstance(array, jax.Array) else np


@dataclass_kwonly
class Batch:
    """Batch of training data: ``inputs`` and ``targets`` with the same leading (batch) axis.

    ``batch[key]`` indexes every array field with ``key`` (see :meth:`__getitem__`).
    """

    inputs: jax.Array
    """The input data, [batch, ...]."""
    targets: jax.Array
    """The target data, [batch, ...]."""

    def __post_init__(self) -> None:
        # Cheap, and lenient for values without a shape: construction must also work on
        # tracers and on jax.ShapeDtypeStruct fields.
        inputs_shape = _shape(self.inputs)
        if inputs_shape:
            targets_shape = _shape(self.targets)
            if targets_shape is not None and targets_shape[:1] != inputs_shape[:1]:
                raise ValueError(
                    f"targets: expected batch size {inputs_shape[0]} (that of inputs), "
                    f"got shape {targets_shape}"
                )

    def _fields_to_slice(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def __getitem__(self, key: Any):
        """A batch of the same class with ``field[key]`` for every array field.

        A tuple key is cut to each field's number of axes, so ``batch[:, a:b]`` cuts
        [batch, length] fields to tokens ``a:b`` and keeps [batch] fields (such as
        ``document_idx``) whole. The result is not validated again: ``batch[0]`` is a
        single row of the same class.
        """
        values = self._fields_to_slice()
        return _unflatten(type(self), tuple(values), [_take(v, key) for v in values.values()])

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (and validated), like flax's ``replace``."""
        return dataclasses.replace(self, **changes)


def _default_llm_fields(inputs: Any, targets: Any | None) -> dict[str, Any]:
    """Fields of an unpacked batch: one document per row, positions 0..L-1."""
    shape = _shape(inputs)
    if shape is None or len(shape) < 2:
        got = f"shape {shape}" if shape is not None else type(inputs).__name__
        raise ValueError(f"inputs: expected an array of shape (batch, length, ...), got {got}")
    xp = _xp(inputs)
    if targets is None:
        targets = inputs
        if xp is np and inputs.ndim == 2:
            inputs = kernels.shift_right(inputs, 0)
        else:
            inputs = xp.concatenate([xp.zeros_like(inputs[:, :1]), inputs[:, :-1]], axis=1)
    batch_size, length = shape[:2]

    # NumPy fields are separate writeable arrays: no broadcast views, no aliases.
    def positions():
        return xp.tile(xp.arange(length, dtype=np.int32), (batch_size, 1))

    def segmentation():
        return xp.ones((batch_size, length), dtype=np.int32)

    return dict(
        inputs=inputs,
        targets=targets,
        inputs_position=positions(),
        inputs_segmentation=segmentation(),
        targets_position=positions(),
        targets_segmentation=segmentation(),
    )


def _llm_dtype_struct_fields(batch_size: int, max_length: int) -> dict[str, jax.ShapeDtypeStruct]:
    shape = (positive_int("batch_size", batch_size), positive_int("max_length", max_length))
    struct = jax.ShapeDtypeStruct(shape, np.int32)
    names = (
        "inputs", "targets", "inputs_position", "inputs_segmentation",
        "targets_position", "targets_segmentation",
    )
    return {name: struct for name in names}


@dataclass_kwonly
class LLMBatch(Batch):
    """Batch for LLM training: tokens with their positions and segmentations, [batch, length].

    Documents are packed into rows of ``length`` tokens, each followed by an
    end-of-document token ``E``; token 0 pads. Segmentations number the documents of a
    row from 1 (0 marks padding); positions count tokens within each document from 0.
    Example: documents ``[1, 2, 3]``, ``[4, 5]``, ``[6, 7]`` packed into rows of 8 tokens
    (``[6, 7, E]`` does not fit and goes to the next row), inputs shifted right::

        targets:              [1, 2, 3, E, 4, 5, E, 0]
        inputs:               [E, 1, 2, 3, E, 4, 5, E]   # a row always starts with E
        targets_segmentation: [1, 1, 1, 1, 2, 2, 2, 0]
        inputs_segmentation:  [1, 1, 1, 1, 2, 2, 2, 0]
        targets_position:     [0, 1, 2, 3, 0, 1, 2, 0]
        inputs_position:      [0, 1, 2, 3, 0, 1, 2, 0]
        doc borders:          [1, 0, 0, 0, 1, 0, 0, 1]

    The two segmentations are identical here; they differ for prediction with several
    prefix tokens.
    """

    inputs_position: jax.Array
    """Positions of the input tokens within their documents, int32 [batch, length]."""
    inputs_segmentation: jax.Array
    """Segment (document) ids of the input tokens, 1-based, 0 for padding; int32 [batch, length]."""
    targets_position: jax.Array
    """Positions of the target tokens within their documents, int32 [batch, length]."""
    targets_segmentation: jax.Array
    """Segment (document) ids of the target tokens, 1-based, 0 for padding; int32 [batch, length]."""
    _document_borders: jax.Array | None = None
    """Overrides the document borders computed from ``inputs_segmentation``, bool [batch, length].

    Set by slicing, which computes borders before it cuts; otherwise leave it ``None``
    and call :meth:`get_document_borders`.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("inputs_segmentation", "targets_segmentation", "inputs_position", "targets_position"):
            _require_integer(name, getattr(self, name))
        shape = _shape(self.inputs_segmentation)
        if shape is None:
            return
        if len(shape) != 2:
            raise ValueError(f"inputs_segmentation: expected shape (batch, length), got {shape}")
        for name in ("inputs", "targets"):
            value_shape = _shape(getattr(self, name))
            if value_shape is not None and value_shape[:2] != shape:
                raise ValueError(
                    f"{name}: expected shape {shape} (batch, length) or {shape} + feature axes "
                    f"like inputs_segmentation, got {value_shape}"
                )
        for name in ("inputs_position", "targets_position", "targets_segmentation", "_document_borders"):
            _require_shape(name, getattr(self, name), shape, "that of inputs_segmentation")

    def _fields_to_slice(self) -> dict[str, Any]:
        # Borders depend on the token before the cut: compute them on the whole rows.
        return {**super()._fields_to_slice(), "_document_borders": self.get_document_borders()}

    def get_document_borders(self) -> jax.Array:
        """Document borders of the inputs, bool [batch, length].

        ``borders[:, 0]`` is True and ``borders[:, i]`` is True where
        ``inputs_segmentation[:, i] != inputs_segmentation[:, i - 1]``: there a recurrent
        model resets its state. ``[1, 1, 2, 2, 2, 3] -> [1, 0, 1, 0, 0, 1]``. Padding after
        the last document starts a border too: ``[1, 1, 1, 1, 2, 2, 2, 0] ->
        [1, 0, 0, 0, 1, 0, 0, 1]``. Returns ``_document_borders`` when set (a sliced
        batch). NumPy segmentation gives a NumPy array, JAX gives JAX.
        """
        if self._document_borders is not None:
            return self._document_borders
        segmentation = self.inputs_segmentation
        if isinstance(segmentation, jax.Array):
            first = jnp.ones(segmentation.shape[:1] + (1,), dtype=bool)
            return jnp.concatenate([first, segmentation[:, 1:] != segmentation[:, :-1]], axis=1)
        return kernels.document_borders(segmentation)

    @staticmethod
    def from_inputs(inputs: jax.Array, targets: jax.Array | None = None) -> LLMBatch:
        """An LLMBatch of one document per row: positions ``0..L-1``, segmentations 1.

        Args:
          inputs: tokens, [batch, length, ...] (NumPy stays NumPy, JAX stays JAX).
          targets: the target tokens. If None, the targets are ``inputs`` and the inputs
            are ``inputs`` shifted right by one token, with a 0 of their dtype in front.

        Returns:
          An LLMBatch with int32 positions and segmentations, [batch, length].
        """
        return LLMBatch(**_default_llm_fields(inputs, targets))

    @staticmethod
    def get_dtype_struct(batch_size: int, max_length: int) -> LLMBatch:
        """An LLMBatch of ``jax.ShapeDtypeStruct`` fields, int32 [batch_size, max_length]."""
        return LLMBatch(**_llm_dtype_struct_fields(batch_size, max_length))

    @classmethod
    def get_sample(cls, batch_size: int, max_length: int):
        """A real batch of zeros, ``jax.Array`` on the default device, with the structure of
        :meth:`get_dtype_struct`, as the seed system returns it.

        Compiling with ``jax.debug.*`` in the model needs real arrays, not structs. (Batches
        built from NumPy arrays stay NumPy; this constructor makes device arrays.)
        """
        structure = cls.get_dtype_struct(batch_size, max_length)
        return jax.tree.map(lambda struct: jnp.zeros(struct.shape, struct.dtype), structure)


@dataclass_kwonly
class LLMIndexedBatch(LLMBatch):
    """An :class:`LLMBatch` that knows which document and piece each row holds.

    Long documents are cut into row-sized pieces; ``document_idx`` and ``sequence_idx``
    put the pieces back in order. ``document_idx == 0`` marks a padding row.
    """

    document_idx: jax.Array
    """Document index of each row, int32 [batch]; 0 marks a padding row."""
    sequence_idx: jax.Array
    """Index of each row's piece within its document, int32 [batch]."""

    def __post_init__(self) -> None:
        super().__post_init__()
        shape = _shape(self.inputs_segmentation)
        for name in ("document_idx", "sequence_idx"):
            value = getattr(self, name)
            _require_integer(name, value)
            if shape is not None:
                _require_shape(name, value, shape[:1], "one per row of inputs_segmentation")

    @staticmethod
    def from_inputs(
        inputs: jax.Array,
        document_idx: jax.Array,
        sequence_idx: jax.Array,
        targets: jax.Array | None = None,
    ) -> LLMIndexedBatch:
        """As :meth:`LLMBatch.from_inputs`, with each row's ``document_idx`` and ``sequence_idx`` ([batch])."""
        return LLMIndexedBatch(
            **_default_llm_fields(inputs, targets), document_idx=document_idx, sequence_idx=sequence_idx
        )

    @staticmethod
    def get_dtype_struct(batch_size: int, max_length: int) -> LLMIndexedBatch:
        """As :meth:`LLMBatch.get_dtype_struct`, with int32 [batch_size] indices."""
        fields = _llm_dtype_struct_fields(batch_size, max_length)
        index = jax.ShapeDtypeStruct((batch_size,), np.int32)
        return LLMIndexedBatch(**fields, document_idx=index, sequence_idx=index)


def stack_rows(rows: Sequence[Mapping[str, Any]], cls: type[LLMBatch] | None = None) -> LLMBatch:
    """Stacks per-row dicts, as packers yield them, into one batch of NumPy arrays.

    Usable as the ``batch_fn`` of grain's batching and of the batch ramp-up.

    Args:
      rows: one mapping per row with keys ``inputs``, ``targets``, ``inputs_position``,
        ``inputs_segmentation``, ``targets_position``, ``targets_segmentation`` ([length]
        each) and, for an :class:`LLMIndexedBatch`, ``document_idx`` and ``sequence_idx``
        (scalars).
      cls: the batch class; by default :class:`LLMIndexedBatch` if the first row has a
        ``document_idx``, else :class:`LLMBatch`.

    Returns:
      A ``cls`` with [len(rows), ...] fields.
    """
    if len(rows) == 0:
        raise ValueError("rows: expected at least one row, got none")
    if cls is None:
        cls = LLMIndexedBatch if "document_idx" in rows[0] else LLMBatch
    names = [field.name for field in dataclasses.fields(cls) if field.name != "_document_borders"]
    stacked = {}
    for index, row in enumerate(rows):
        missing = [name for name in names if name not in row]
        unknown = [key for key in row if key not in names]
        if missing or unknown:
            raise ValueError(
                f"rows[{index}]: expected the keys of {cls.__name__} {names}, "
                f"missing {missing}, unknown {unknown}"
            )
    for name in names:
        values = [np.asarray(row[name]) for row in rows]
        try:
            stacked[name] = np.stack(values)
        except ValueError as exc:
            shapes = sorted({value.shape for value in values})
            raise ValueError(f"rows: {name!r} has different shapes across rows: {shapes}") from exc
    return cls(**stacked)
