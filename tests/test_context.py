"""The visual-context operators pinned to the paper's definitions on hand-checked examples."""

import pytest
import torch

from visctx.config import Arm, frame_arm
from visctx.context import (pool_grid, pool_kernel, poolable_token_counts, sample_tokens, uniform_indices,
                            visual_context)


def test_uniform_indices_are_segment_centres():
    assert uniform_indices(32, 4) == [4, 12, 20, 28]
    assert uniform_indices(27, 1) == [13]
    assert uniform_indices(27, 3) == [4, 13, 22]
    assert uniform_indices(5, 5) == [0, 1, 2, 3, 4]
    assert uniform_indices(2, 4) == [0, 0, 1, 1]  # forced: repeats, stays sorted
    with pytest.raises(ValueError):
        uniform_indices(0, 3)


@pytest.mark.parametrize("k,M", [(2, 196), (3, 81), (4, 49), (5, 36), (6, 25), (7, 16), (9, 9), (14, 4), (27, 1)])
def test_pool_kernels_give_the_papers_token_counts(k, M):
    x = torch.randn(1, 27, 27, 8)
    assert pool_grid(x, k).shape == (1, M, 8)
    assert pool_kernel(M) == k


def test_poolable_counts_and_unproducible_counts():
    assert poolable_token_counts()[:3] == [729, 196, 81]
    for bad in (50, 64, 100, 0):
        with pytest.raises(ValueError):
            pool_kernel(bad)


def test_zero_padding_counts_in_the_mean_at_the_edge():
    # a 3x3 grid of ones pooled with k=2 is padded to 4x4: full cell 1, edge cells 1/2, corner 1/4
    x = torch.ones(1, 3, 3, 1)
    out = pool_grid(x, 2).reshape(2, 2)
    assert torch.allclose(out, torch.tensor([[1.0, 0.5], [0.5, 0.25]]))


def test_pool_matches_hand_computed_cell_mean():
    x = torch.arange(27 * 27, dtype=torch.float32).reshape(1, 27, 27, 1)
    out = pool_grid(x, 14).reshape(2, 2)
    assert out[0, 0] == x[0, :14, :14].mean()
    # last cell: 13x13 real values, 196 - 169 zeros in the denominator
    assert torch.isclose(out[1, 1], x[0, 14:, 14:].sum() / 196)


def test_token_sampling_takes_a_centred_uniform_subgrid_without_mixing():
    x = torch.arange(27 * 27, dtype=torch.float32).reshape(27, 27, 1)
    out = sample_tokens(x, 9).flatten().tolist()
    rows = cols = [4, 13, 22]
    assert out == [float(r * 27 + c) for r in rows for c in cols]
    assert sample_tokens(x, 1).item() == 13 * 27 + 13
    with pytest.raises(ValueError):
        sample_tokens(x, 10)


def test_frame_sampling_and_3d_pooling():
    # value of every patch = its frame index, so outputs read back which frames were used
    F = 8
    feats = torch.arange(F, dtype=torch.float32).reshape(F, 1, 1, 1).expand(F, 27, 27, 1).contiguous()
    sampled = visual_context(feats, Arm(T=2, M=1, token_op="sample"))
    assert sampled.flatten().tolist() == [2.0, 6.0]  # centres of two halves of 8 frames
    pooled = visual_context(feats, Arm(T=2, M=1, token_op="sample", pooled_from=4))
    # 4 frames sampled uniformly (1, 3, 5, 7), mean of each pair
    assert pooled.flatten().tolist() == [2.0, 6.0]
    pooled4 = visual_context(feats, Arm(T=2, M=1, token_op="sample", pooled_from=8))
    assert pooled4.flatten().tolist() == [1.5, 5.5]  # all 8 frames, groups of 4


def test_3d_pool_equals_temporal_then_spatial_mean():
    x = torch.randn(3, 8, 27, 27, 5)
    arm = Arm(T=4, M=9, token_op="pool", pooled_from=8)
    out = visual_context(x, arm)
    assert out.shape == (3, 4, 9, 5)
    manual = pool_grid(x.reshape(3, 4, 2, 27, 27, 5).mean(2), 9)
    assert torch.allclose(out, manual, atol=1e-6)


def test_frame_pool_that_pools_nothing_is_frame_sampling():
    assert frame_arm(32, 9, "pool", source=32) == Arm(32, 9, "pool")
    assert Arm(8, 9, "pool", pooled_from=8) == Arm(8, 9, "pool") and Arm(8, 9, "pool", 8).id == "T8-M9-pool"
    assert frame_arm(6, 9, "pool", source=32).pooled_from == 32
    assert frame_arm(6, 9, "sample", source=32).pooled_from == 0
    assert Arm.from_id("T6-M9-pool-from32") == Arm(6, 9, "pool", 32)
    with pytest.raises(ValueError, match="cannot give T=8"):
        Arm(8, 9, "pool", pooled_from=4)


def test_time_bins_cover_every_frame_and_overlap_when_T_does_not_divide():
    from visctx.context import time_bins

    assert time_bins(32, 8) == [(4 * i, 4 * i + 4) for i in range(8)]  # equal bins when T divides n
    bins = time_bins(32, 6)
    assert bins[0] == (0, 6) and bins[1] == (5, 11) and bins[-1] == (26, 32)  # 32/6 frames, overlapping
    assert sorted({f for a, b in bins for f in range(a, b)}) == list(range(32))
    assert time_bins(32, 24)[0] == (0, 2)  # T > n/2 still pools (floor(32/24) = 1 used to sample)


@pytest.mark.parametrize("T", [6, 12, 17, 24, 31])
def test_frame_pooling_pools_at_every_T(T):
    """T > S/2 used to give a kernel of 1, i.e. sampling: every T < S now pools its adaptive bins."""
    from visctx.context import time_bins

    x = torch.randn(32, 27, 27, 3)
    pooled = visual_context(x, Arm(T, 4, "pool", pooled_from=32))
    sampled = visual_context(x, Arm(T, 4, "pool"))
    assert pooled.shape == sampled.shape == (T, 4, 3) and not torch.allclose(pooled, sampled)
    spatial = pool_grid(x, 14)  # [32, 4, 3]: the same 3-D mean pool, bin by bin
    manual = torch.stack([spatial[a:b].mean(0) for a, b in time_bins(32, T)])
    assert torch.allclose(pooled, manual, atol=1e-6)


def test_batched_shapes():
    x = torch.randn(2, 32, 27, 27, 4)
    assert visual_context(x, Arm(4, 196, "pool")).shape == (2, 4, 196, 4)
    assert visual_context(x, Arm(4, 196, "sample")).shape == (2, 4, 196, 4)
    assert visual_context(x, Arm(32, 1, "pool")).shape == (2, 32, 1, 4)
