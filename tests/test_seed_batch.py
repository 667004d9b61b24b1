"""xlstm-jax's own batch tests (``tests/dataset/test_batch.py``), in this project's words.

The same cases and assertions as the seed system's test file, run against
:mod:`xbatch.batch`, so that code written against the seed keeps working.
"""

import jax
import jax.numpy as jnp
import pytest

from xbatch.batch import LLMBatch, LLMIndexedBatch


@pytest.mark.parametrize("batch_size", [4, 16])
@pytest.mark.parametrize("context_length", [32, 128])
def test_document_borders_follow_the_eod_tokens(batch_size, context_length):
    key = jax.random.PRNGKey(batch_size * context_length)
    eod_token_id = 0
    inputs = jax.random.randint(key, (batch_size, context_length), 0, 10)
    eod = inputs == eod_token_id
    segmentation = 1 + jnp.cumsum(eod, axis=1)
    position = jnp.broadcast_to(jnp.arange(context_length), inputs.shape)
    # Unshifted on purpose, as in the seed's test: a border wherever segmentation changes.
    batch = LLMBatch(inputs=inputs, targets=inputs, inputs_position=position, targets_position=position,
                     inputs_segmentation=segmentation, targets_segmentation=segmentation)
    borders = batch.get_document_borders()
    assert borders.shape == (batch_size, context_length), "borders have the inputs' shape"
    assert jnp.all(borders[:, 0]), "the first token is always a document border"
    assert jnp.all(borders[:, 1:] == eod[:, 1:]), "borders match the EOD mask"


@pytest.mark.parametrize("cls", [LLMBatch, LLMIndexedBatch])
def test_sample_has_jax_arrays_of_the_struct(cls):
    batch_size, context_length = 4, 8
    sample = cls.get_sample(batch_size=batch_size, max_length=context_length)
    struct = cls.get_dtype_struct(batch_size=batch_size, max_length=context_length)
    for sample_leaf, struct_leaf in zip(jax.tree.leaves(sample), jax.tree.leaves(struct)):
        assert isinstance(sample_leaf, jax.Array)
        assert isinstance(struct_leaf, jax.ShapeDtypeStruct)
        assert sample_leaf.shape == struct_leaf.shape
