"""The visual-context operators pinned to the paper's definitions on hand-checked examples."""

import pytest
import torch

from visctx.config import Arm, frame_arm
from visctx.context import (mask_indices, pool_grid, pool_kernel, poolable_token_counts, sample_tokens,
                            uniform_indices, visual_context)


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


# -- random masking (LongViViT, paper-notes §5) ----------------------------------------------------


def positions_grid(F=4, G=27):
    """Features whose value is the patch's raster position (and the frame in a second channel)."""
    pos = torch.arange(G * G, dtype=torch.float32).reshape(1, G, G, 1).expand(F, G, G, 1)
    frame = torch.arange(F, dtype=torch.float32).reshape(F, 1, 1, 1).expand(F, G, G, 1)
    return torch.cat([pos, frame], -1)


@pytest.mark.parametrize("op", ["mask", "tube"])
def test_masking_keeps_exactly_m_distinct_grid_tokens_per_frame_in_raster_order(op):
    out = visual_context(positions_grid(), Arm(4, 49, op), seeds=7, train=True)
    assert out.shape == (4, 49, 2)
    for t in range(4):
        kept = out[t, :, 0]
        assert len(set(kept.tolist())) == 49 and kept.tolist() == sorted(kept.tolist())
        assert kept.min() >= 0 and kept.max() < 729 and (kept == kept.round()).all()  # real tokens, unmixed
        assert (out[t, :, 1] == t).all()  # frame t's own tokens
    rows = {tuple(out[t, :, 0].tolist()) for t in range(4)}
    assert len(rows) == (1 if op == "tube" else 4)  # a tube: the same positions in every frame


def test_mask_is_a_pure_function_of_video_and_arm():
    from visctx.context import mask_seed, mask_seeds

    x = positions_grid()
    arm = Arm(4, 16, "mask")
    seeds = mask_seeds(["a.mp4", "b.mp4"], arm)
    assert seeds == [mask_seed("a.mp4", arm.id), mask_seed("b.mp4", arm.id)] and seeds[0] != seeds[1]
    assert mask_seed("a.mp4", arm.id) == 1442204338  # CRC-32: the same in every process and on every machine
    assert mask_seeds(["a.mp4"], Arm(4, 16, "pool")) is None
    # and the draw from it (torch's CPU generator): a change here changes every masked arm's results
    assert mask_indices(1442204338, 2, 729, 4, tube=False).tolist() == [[138, 166, 229, 297], [49, 133, 561, 725]]
    a1, b = visual_context(torch.stack([x, x]), arm, seeds, train=True)
    a2 = visual_context(x, arm, seeds[0], train=True)
    assert torch.equal(a1, a2) and not torch.equal(a1, b)  # same video and arm: same mask; another video: another
    other_arm = visual_context(x, Arm(4, 16, "tube"), mask_seed("a.mp4", "T4-M16-tube"), train=True)
    assert not torch.equal(other_arm[0], a1[0])
    with pytest.raises(ValueError, match="pass one seed per video"):
        visual_context(x, arm, train=True)
    with pytest.raises(ValueError, match="3 mask seeds for 2 videos"):
        visual_context(torch.stack([x, x]), arm, [1, 2, 3], train=True)


@pytest.mark.parametrize("op", ["masktrain", "tubetrain"])
def test_train_only_masking_is_evaluated_on_the_grid_pooled_to_m(op):
    x = torch.randn(2, 8, 27, 27, 3)
    arm = Arm(4, 49, op)
    evaluated = visual_context(x, arm)  # evaluation: no seeds needed
    assert torch.equal(evaluated, visual_context(x, Arm(4, 49, "pool")))
    trained = visual_context(x, arm, [1, 2], train=True)
    kin = Arm(4, 49, op.removesuffix("train"))  # the same draw as the arm masked at evaluation too
    assert torch.equal(trained, visual_context(x, kin, [1, 2], train=True))
    assert not torch.allclose(trained, evaluated)


def test_masking_at_evaluation_too_masks_as_in_training():
    x = torch.randn(8, 27, 27, 3)
    arm = Arm(4, 25, "mask")
    assert torch.equal(visual_context(x, arm, 3, train=False), visual_context(x, arm, 3, train=True))


def test_masking_with_frame_pooling_masks_the_time_pooled_frames():
    x = torch.randn(8, 27, 27, 3)
    out = visual_context(x, Arm(2, 9, "tube", pooled_from=8), 5, train=True)
    pooled = x.reshape(2, 4, 27, 27, 3).mean(1).reshape(2, 729, 3)
    idx = mask_indices(5, 2, 729, 9, tube=True)
    torch.testing.assert_close(out, pooled.gather(1, idx.unsqueeze(-1).expand(-1, -1, 3)))


def test_masking_arms_ids_and_token_counts():
    for arm_id in ("T32-M49-mask", "T32-M49-tube", "T8-M49-masktrain-from32", "T1-M50-mask", "T1-M729-tube",
                   "T8-M196-pool-vst4w784", "T8-M49-mask-from16-vst7w49", "T4-M9-sample-vst2w2"):
        assert Arm.from_id(arm_id).id == arm_id
    assert Arm.from_id("T8-M196-pool-vst4w784") == Arm(8, 196, "pool", summary=4, summary_window=784)
    for bad in ("T8-M49-pool-vst1w0", "T8-M49-pool-vst4", "T8-M49-pool-vst4w"):
        with pytest.raises(ValueError, match="not an arm id"):
            Arm.from_id(bad)
    Arm(1, 50, "mask")  # any M of the grid when evaluation masks too
    with pytest.raises(ValueError):
        Arm(1, 50, "masktrain")  # evaluated pooled to M: a poolable M
    with pytest.raises(ValueError, match="M <= 729"):
        Arm(1, 730, "tube")
    for r, w in ((4, 2), (1, 8), (4, 0)):
        with pytest.raises(ValueError, match="summary tokens"):
            Arm(8, 49, "pool", summary=r, summary_window=w)


def test_summary_arms_count_what_the_text_after_the_video_keeps():
    arm = Arm(8, 196, "pool", summary=4, summary_window=392)  # 4 windows of 392 raw tokens, 98 summaries each
    assert arm.tokens == 1568 and arm.summaries == arm.kept_tokens == 392
    assert Arm(3, 5, "mask", summary=4, summary_window=6).summaries == 2 + 2 + 1  # windows 6, 6, 3: ceil(6/4) + ceil(6/4) + ceil(3/4)
    assert Arm(8, 49).kept_tokens == 392 and Arm(8, 49).summaries == 0
    assert Arm(8, 49).to_dict() == {"T": 8, "M": 49, "token_op": "pool", "pooled_from": 0, "frame_op": "sample",
                                    "id": "T8-M49-pool", "tokens": 392}  # the record it always had
    assert arm.to_dict()["kept_tokens"] == 392 and arm.to_dict()["summary"] == 4


def test_every_method_spends_the_same_window():
    from visctx.config import method_arm

    arms = {m: method_arm(m, 8, 49) for m in ("sample", "pool", "mask", "tube", "masktrain", "summary")}
    assert {a.kept_tokens for a in arms.values()} == {392}
    assert arms["summary"].id == "T8-M196-pool-vst4w196" and arms["summary"].tokens == 4 * 392
    assert method_arm("summary", 8, 49, ratio=4, window=784).kept_tokens == 392  # four frames a window
    assert method_arm("summary", 4, 9, ratio=9).id == "T4-M81-pool-vst9w81"
