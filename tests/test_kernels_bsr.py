"""BSR format: exact round trip, padding, validation errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from taco_jax.kernels import bsr as bsr_lib


def _masked(shape, block_shape, sparsity, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    mask = bsr_lib.random_block_mask(shape, block_shape, sparsity, seed=seed)
    w = rng.standard_normal(shape).astype(dtype)
    return w * bsr_lib.expand_block_mask(mask, block_shape), mask


@pytest.mark.parametrize("shape,block_shape,sparsity", [
    ((64, 128), (16, 16), 0.5),
    ((96, 32), (32, 16), 0.0),   # fully dense, rectangular blocks
    ((768, 3072), (64, 64), 0.9),
    ((48, 80), (16, 16), 1.0),   # all zero
    ((8, 8), (8, 8), 0.0),       # a single block
])
def test_round_trip_exact(shape, block_shape, sparsity):
    w, mask = _masked(shape, block_shape, sparsity)
    b = bsr_lib.bsr_from_dense(w, block_shape)
    np.testing.assert_array_equal(bsr_lib.bsr_to_dense(b), w)
    assert b.nnz_blocks == mask.sum()
    assert b.block_density == pytest.approx(mask.mean())
    p = bsr_lib.pad_bsr(b)
    np.testing.assert_array_equal(bsr_lib.padded_to_dense(p), w)
    assert p.max_row_blocks == max(1, b.max_row_blocks)


def test_layout_grouped_by_block_row():
    w = np.zeros((4, 6), np.float32)
    w[0, 4] = 1.0  # block (0, 2)
    w[0, 0] = 2.0  # block (0, 0)
    w[3, 3] = 3.0  # block (1, 1)
    b = bsr_lib.bsr_from_dense(w, (2, 2))
    np.testing.assert_array_equal(b.indptr, [0, 2, 3])
    np.testing.assert_array_equal(b.indices, [0, 2, 1])
    np.testing.assert_array_equal(b.data[1], [[1, 0], [0, 0]])
    assert b.max_row_blocks == 2


def test_explicit_mask_keeps_zero_blocks_and_bf16():
    w = np.zeros((4, 4), jnp.bfloat16)
    w[0, 0] = 1.5
    mask = np.array([[True, True], [False, False]])
    b = bsr_lib.bsr_from_dense(w, (2, 2), block_mask=mask)
    assert b.nnz_blocks == 2 and b.data.dtype == jnp.bfloat16
    np.testing.assert_array_equal(bsr_lib.bsr_to_dense(b), w)


def test_padded_repeats_last_index_and_empty_rows():
    w = np.zeros((6, 6), np.float32)
    w[0, 0] = w[0, 4] = w[4, 2] = 1.0  # rows: {0, 2}, {}, {1}
    p = bsr_lib.pad_bsr(bsr_lib.bsr_from_dense(w, (2, 2)))
    np.testing.assert_array_equal(p.counts, [2, 0, 1])
    np.testing.assert_array_equal(p.indices, [[0, 2], [0, 0], [1, 1]])
    assert not p.data[1].any() and not p.data[2, 1].any()
    with pytest.raises(ValueError, match="max_row_blocks must be an int >= 2"):
        bsr_lib.pad_bsr(bsr_lib.bsr_from_dense(w, (2, 2)), max_row_blocks=1)


def test_pytree_through_jit():
    w, _ = _masked((32, 64), (16, 16), 0.5)
    b = bsr_lib.to_device(bsr_lib.bsr_from_dense(w, (16, 16)))
    out = jax.jit(lambda m: m.data.sum() + m.indices.sum())(b)
    assert np.isfinite(out)
    assert jax.tree_util.tree_structure(b).num_leaves == 3
    b.validate()  # concrete device arrays validate too


@pytest.mark.parametrize("bad,match", [
    (dict(block_shape=(16, 0)), r"block_shape must be positive"),
    (dict(block_shape=(16,)), r"block_shape must be a pair of ints"),
    (dict(shape=(30, 64)), r"must be divisible by block_shape"),
    (dict(indptr=np.array([0, 1], np.int32)), r"indptr must have shape \(3,\)"),
    (dict(indptr=np.array([0, 5, 4], np.int32)), r"non-decreasing"),
    (dict(indptr=np.array([1, 2, 4], np.int32)), r"must start at 0"),
    (dict(indices=np.array([0, 9, 1, 2], np.int32)), r"must lie in \[0, 4\).*got 9"),
    (dict(indices=np.array([1, 0, 1, 2], np.int32)), r"block-row 0 must be strictly increasing"),
    (dict(indices=np.array([0, 1, 1, 2], np.int64)), r"indices must be int32, got int64"),
    (dict(max_row_blocks=3), r"max_row_blocks=3 but the longest block-row has 2"),
    (dict(data=np.zeros((4, 16, 8), np.float32)), r"data must have shape \(nnz_blocks, 16, 16\)"),
])
def test_validation_errors(bad, match):
    w = np.zeros((32, 64), np.float32)
    w[0, 0] = w[0, 16] = w[16, 16] = w[16, 32] = 1.0
    good = bsr_lib.bsr_from_dense(w, (16, 16))
    with pytest.raises(ValueError, match=match):
        bsr_lib.validate_bsr(dataclasses.replace(good, **bad))


def test_from_dense_errors():
    with pytest.raises(ValueError, match=r"must be divisible by block_shape \(16, 16\)"):
        bsr_lib.bsr_from_dense(np.ones((30, 32)), (16, 16))
    with pytest.raises(ValueError, match="2-D"):
        bsr_lib.bsr_from_dense(np.ones((4, 4, 4)), (2, 2))
    with pytest.raises(ValueError, match=r"block_mask must have shape \(2, 2\)"):
        bsr_lib.bsr_from_dense(np.ones((4, 4)), (2, 2), block_mask=np.ones((1, 2), bool))
    with pytest.raises(ValueError, match=r"drops block \(0, 1\)"):
        bsr_lib.bsr_from_dense(np.ones((4, 4)), (2, 2),
                               block_mask=np.array([[True, False], [True, True]]))
    with pytest.raises(ValueError, match="sparsity must be in"):
        bsr_lib.random_block_mask((4, 4), (2, 2), 1.5)
