"""Records (and their errors), per-batch visual context, the one-arm-per-batch sampler."""

import json

import numpy as np
import pytest
import torch

from visctx.config import Arm
from visctx.context import visual_context
from visctx.data import (ArmBatchSampler, arm_weights, load_context, load_eval_records, load_train_records, train_loader)
from visctx.features import FeatureStore
from visctx.model import IGNORE, PromptEncoder

F, G, D = 8, 27, 4


def write_features(d, keys, seed=0):
    """One feature shard in the SPEC format: float16 [n, F, G, G, D] + json."""
    d.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).normal(size=(len(keys), F, G, G, D)).astype(np.float16)
    np.save(d / "shard-000.npy", x)
    (d / "shard-000.json").write_text(json.dumps({"videos": keys, "frames": F, "grid": G, "dim": D}))
    return x


def rec(i, q="what colour is the ball ?", a="red"):
    return {"id": f"r{i}", "video": f"train/v{i}.mp4", "task_type": "color",
            "conversations": [{"from": "human", "value": f"<video>\n{q}"}, {"from": "gpt", "value": a}]}


def write(tmp_path, obj, name="c.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_train_records_single_and_multi_turn(tmp_path):
    multi = rec(1)
    multi["conversations"] += [{"from": "human", "value": "how many ?"}, {"from": "gpt", "value": "2"}]
    recs = load_train_records(write(tmp_path, [rec(0), multi]))
    assert [r.id for r in recs] == ["r0", "r1"]
    assert recs[0].turns == (("<video>\nwhat colour is the ball ?", "red"),)
    assert recs[1].turns[1] == ("how many ?", "2") and recs[1].task_type == "color"


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r.pop("video"), r"record 1 \(id 'r1'\): missing field 'video'"),
    (lambda r: r.update(conversations=[]), r"record 1 .*'conversations'"),
    (lambda r: r["conversations"].reverse(), r"record 1 .*'conversations'\[0\]"),
    (lambda r: r["conversations"][0].update(value="no placeholder"), r"record 1 .*<video>"),
    (lambda r: r.update(video=3), r"record 1 .*field 'video' has type int"),
])
def test_malformed_train_record_names_file_record_and_field(tmp_path, mutate, match):
    bad = rec(1)
    mutate(bad)
    with pytest.raises(ValueError, match=r"c\.json: " + match):
        load_train_records(write(tmp_path, [rec(0), bad]))


def test_malformed_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json: not valid JSON"):
        load_train_records(tmp_path / "x.json")
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_train_records(write(tmp_path, {"a": 1}))
    with pytest.raises(ValueError, match="not found"):
        load_eval_records(tmp_path / "missing.json")


def test_eval_records_and_their_errors(tmp_path):
    good = {"id": "e0", "video": "eval/v0.mp4", "question": "q ?", "options": ["a", "b", "c", "d"],
            "answer": 2, "task_type": "needle"}
    recs = load_eval_records(write(tmp_path, [good]))
    assert recs[0].options == ("a", "b", "c", "d") and recs[0].answer == 2
    for field, value, match in [("answer", 4, "'answer'=4"), ("answer", True, "'answer' has type bool"),
                                ("options", ["a"], "'options'"), ("question", None, "'question' has type")]:
        with pytest.raises(ValueError, match=rf"record 1 \(id 'e1'\).*{match}"):
            load_eval_records(write(tmp_path, [good, {**good, "id": "e1", field: value}]))


@pytest.mark.parametrize("arm", [Arm(2, 9, "pool"), Arm(3, 4, "sample"), Arm(2, 49, "pool", 4),
                                 Arm(2, 1, "sample", 6), Arm(3, 4, "pool", 8), Arm(16, 1, "pool")])
def test_load_context_equals_visual_context_on_all_frames(tmp_path, arm):
    keys = ["a.mp4", "b.mp4"]
    x = write_features(tmp_path / "f", keys)
    got = load_context(FeatureStore(tmp_path / "f"), keys, arm)
    want = visual_context(torch.from_numpy(x.astype(np.float32)), arm)
    assert got.dtype == torch.float32 and got.shape == (2, arm.T, arm.M, D)
    torch.testing.assert_close(got, want)


def test_sampler_one_arm_per_batch_balanced_and_seeded():
    arms = [Arm(1, 1, "pool"), Arm(2, 4, "sample"), Arm(4, 9, "pool")]
    s = ArmBatchSampler(30, arms, batch_size=4, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 7
    for b in batches:
        assert len(b) == 4 and len({arm for _, arm in b}) == 1
    counts = [sum(b[0][1] == a for b in batches) for a in arms]
    assert max(counts) - min(counts) <= 1  # balanced rounds
    assert [len({i for i, _ in b}) for b in batches] == [4] * 7  # no repeats within a batch
    assert batches == list(ArmBatchSampler(30, arms, 4, seed=3))
    second = list(s)  # each pass is a new epoch (Lightning never calls set_epoch on a batch sampler)
    assert second != batches and sorted(i for b in second for i, _ in b) != [i for b in second for i, _ in b]
    s.set_epoch(0)
    assert list(s) == batches
    weighted = list(ArmBatchSampler(400, arms, 1, seed=0, weights=[0.8, 0.2, 0.0]))
    share = sum(b[0][1] == arms[0] for b in weighted) / len(weighted)
    assert 0.7 < share < 0.9 and all(b[0][1] != arms[2] for b in weighted)


def test_the_frames_mixture_gives_every_frame_count_one_share():
    """``frames``: three single-frame arms and one 32-frame arm, each T half the batches; the
    cost-weighted mixtures give the single frames more (what starved the base of time)."""
    arms = [Arm(1, 1, "pool"), Arm(1, 9, "pool"), Arm(1, 49, "sample"), Arm(32, 4, "pool")]
    w = arm_weights(arms, "frames")
    assert w == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert sum(arm_weights(arms, "sqrt")[:3]) > 0.75
    with pytest.raises(ValueError, match="arm_sampling='nope'.*frames"):
        arm_weights(arms, "nope")


def test_ranks_share_each_global_batch():
    """On 2 GPUs each rank keeps half of the same global batch: one arm per step, and together
    exactly the records one rank alone would see (with or without length grouping)."""
    arms = [Arm(1, 1, "pool"), Arm(2, 4, "sample")]
    lengths = list(np.random.default_rng(1).integers(3, 90, 30))
    for groups in (0, 2):
        kw = dict(batch_size=4, seed=3, start=2, lengths=lengths, length_groups=groups)
        alone = list(ArmBatchSampler(30, arms, **kw))
        ranks = [list(ArmBatchSampler(30, arms, rank=r, world=2, **kw)) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == len(alone)
        for b, b0, b1 in zip(alone, *ranks):
            assert len(b0) == len(b1) == 2 and sorted(b0 + b1) == sorted(b)
            assert {a for _, a in b0} == {a for _, a in b1} == {b[0][1]}
    with pytest.raises(ValueError, match="split evenly"):
        ArmBatchSampler(30, arms, batch_size=5, rank=0, world=2)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        ArmBatchSampler(30, arms, batch_size=4, rank=2, world=2)


ARMS3 = [Arm(1, 1, "pool"), Arm(2, 4, "sample"), Arm(4, 9, "pool")]


def _ids(batches):
    return [[(i, a.id) for i, a in b] for b in batches]


def test_sampler_without_length_groups_keeps_the_recorded_order():
    """The committed results were trained on these batches: recorded with the sampler as it was
    before length grouping existed (seed 5, 23 records, batch 4, two epochs)."""
    import hashlib

    def digest(**kw):
        s = ArmBatchSampler(23, ARMS3, 4, seed=5, **kw)
        return hashlib.sha256(json.dumps([b for e in range(2) for b in _ids(s.epoch_batches(e))]).encode()
                              ).hexdigest()[:16]

    lengths = list(range(23, 0, -1))
    for kw, want in [({}, "febd467c3905061d"), ({"weights": [0.5, 0.3, 0.2]}, "07bdee84c8dd9a2d"),
                     ({"drop_last": False}, "76bc37eb0af358e1")]:
        assert digest(**kw) == want, kw
        assert digest(**kw, lengths=lengths, length_groups=0) == want, kw
    assert _ids(ArmBatchSampler(23, ARMS3, 4, seed=5).epoch_batches(0))[:2] == [
        [(18, "T2-M4-sample"), (22, "T2-M4-sample"), (11, "T2-M4-sample"), (3, "T2-M4-sample")],
        [(9, "T4-M9-pool"), (6, "T4-M9-pool"), (7, "T4-M9-pool"), (17, "T4-M9-pool")]]


def _spread(batches, lengths):
    return float(np.mean([max(lengths[i] for i, _ in b) - min(lengths[i] for i, _ in b) for b in batches]))


@pytest.mark.parametrize("drop_last", [True, False])
def test_length_groups_batch_similar_lengths_from_the_same_records(drop_last):
    n, bs = 203, 8
    lengths = [int(x) for x in np.random.default_rng(0).integers(5, 400, n)]
    for epoch in range(3):
        plain = ArmBatchSampler(n, ARMS3, bs, seed=2, drop_last=drop_last).epoch_batches(epoch)
        grouped = ArmBatchSampler(n, ARMS3, bs, seed=2, drop_last=drop_last, lengths=lengths,
                                  length_groups=5).epoch_batches(epoch)
        assert len(grouped) == len(plain) == (25 if drop_last else 26)
        # the same records (the same ones dropped), each position keeps its arm, one arm per batch
        assert sorted(i for b in grouped for i, _ in b) == sorted(i for b in plain for i, _ in b)
        assert [b[0][1] for b in grouped] == [b[0][1] for b in plain]
        assert all(len({a for _, a in b}) == 1 for b in grouped)
        assert sorted(map(len, grouped)) == sorted(map(len, plain))
        assert _spread(grouped, lengths) < 0.5 * _spread(plain, lengths)
        for b in grouped:  # sorted longest first within a mega-batch
            assert [lengths[i] for i, _ in b] == sorted((lengths[i] for i, _ in b), reverse=True)
    # one mega-batch holding the whole epoch: sorted, then the batches shuffled (long and short interleave)
    s = ArmBatchSampler(n, ARMS3, bs, seed=2, drop_last=drop_last, lengths=lengths, length_groups=100)
    tops = [lengths[b[0][0]] for b in s.epoch_batches(0)]
    assert tops != sorted(tops, reverse=True)
    unshuffled = ArmBatchSampler(n, ARMS3, bs, shuffle=False, drop_last=drop_last, lengths=lengths, length_groups=100)
    tops = [lengths[b[0][0]] for b in unshuffled.epoch_batches(0)]
    assert tops == sorted(tops, reverse=True)


def test_length_groups_are_seeded_and_reshuffled_every_epoch():
    """(Resuming at any batch with length_groups: tests/test_resume.py.)"""
    lengths = [int(x) for x in np.random.default_rng(4).integers(1, 60, 30)]
    for weights in (None, [0.7, 0.2, 0.1]):
        def sampler(seed=5):
            return ArmBatchSampler(30, ARMS3, 4, seed=seed, weights=weights, lengths=lengths, length_groups=2)

        s = sampler()
        full = [b for _ in range(3) for b in s]  # 3 epochs of 7 batches
        assert len(full) == 21 and full[:7] != full[7:14]  # every epoch reshuffled
        assert full == [b for s in [sampler()] for _ in range(3) for b in s]
        assert full != [b for s in [sampler(seed=6)] for _ in range(3) for b in s]


def test_length_groups_need_lengths():
    with pytest.raises(ValueError, match="length_groups=4.*lengths"):
        ArmBatchSampler(30, ARMS3, 4, length_groups=4)
    with pytest.raises(ValueError, match="length_groups=4: got 29 lengths for 30 records"):
        ArmBatchSampler(30, ARMS3, 4, lengths=[1] * 29, length_groups=4)
    with pytest.raises(ValueError, match="length_groups=-1"):
        ArmBatchSampler(30, ARMS3, 4, lengths=[1] * 30, length_groups=-1)
    ArmBatchSampler(30, ARMS3, 4, lengths=[1] * 29)  # lengths alone group nothing: not checked


def test_train_loader_batches(tmp_path):
    from visctx.pretrained import build_tokenizer

    records = [rec(i, a=["red", "dark blue"][i % 2]) for i in range(6)]
    path = write(tmp_path, records)
    write_features(tmp_path / "f", [r["video"] for r in records])
    enc = PromptEncoder(build_tokenizer([path], 8))
    arms = [Arm(2, 4, "sample"), Arm(4, 1, "pool")]
    loader = train_loader(load_train_records(path), FeatureStore(tmp_path / "f"), enc, arms, batch_size=3, seed=0)
    seen = set()
    for b in loader:
        B, T, M, _ = b["visual"].shape
        seen.add((T, M))
        assert B == 3 and b["vis_index"].shape == (3, T * M)
        assert ((b["labels"] != IGNORE).sum(1) >= 1).all()
    assert seen == {(2, 4), (4, 1)}
    orphan = load_train_records(write(tmp_path, [rec(99)], "o.json"))
    with pytest.raises(KeyError, match="no cached features.*train/v99.mp4"):
        train_loader(orphan, FeatureStore(tmp_path / "f"), enc, arms, 3)


def test_context_cache_returns_the_same_context_and_respects_its_cap(tmp_path):
    from visctx.data import ContextCache

    keys = ["a.mp4", "b.mp4", "c.mp4"]
    write_features(tmp_path / "f", keys)
    store = FeatureStore(tmp_path / "f")
    arm = Arm(2, 9, "pool")
    one = load_context(store, ["a.mp4"], arm)[0]
    cache = ContextCache(store, max_bytes=2 * one.nbytes)
    got = cache.get(["a.mp4", "b.mp4", "a.mp4"], arm)
    torch.testing.assert_close(got, load_context(store, ["a.mp4", "b.mp4", "a.mp4"], arm))
    cache.get(["c.mp4"], arm)
    assert cache.bytes <= 2 * one.nbytes and len(cache._items) == 2
    torch.testing.assert_close(cache.get(["a.mp4", "c.mp4"], Arm(2, 9, "sample")),
                               load_context(store, ["a.mp4", "c.mp4"], Arm(2, 9, "sample")))


def test_feature_stats_are_per_dimension_mean_and_std(tmp_path):
    from visctx.data import feature_stats

    x = write_features(tmp_path / "f", ["a.mp4", "b.mp4"]).astype(np.float64)
    mean, std = feature_stats(FeatureStore(tmp_path / "f"), frame_stride=1)
    flat = x.reshape(-1, D)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), atol=1e-5)
    np.testing.assert_allclose(std.numpy(), flat.std(0), atol=1e-4)


def test_padding_report_shows_what_length_groups_save(tmp_path):
    """`visctx padding`: an epoch's padding per arm; grouping by text length removes most of it."""
    from tiny_llm import tiny_llm
    from visctx.data import padding

    words = "what is it ? a b c d e f g h"
    llm = tiny_llm(tmp_path, words, max_frames=4)
    rng = np.random.default_rng(0)
    recs = [{"id": str(i), "video": f"v{i}.mp4", "conversations": [
        {"from": "human", "value": "<video>\nwhat is it ?"},
        {"from": "gpt", "value": " ".join(rng.choice(list("abcdefgh"), size=int(rng.integers(1, 12))))}]}
        for i in range(96)]
    (tmp_path / "train.json").write_text(json.dumps(recs))
    out = padding(str(tmp_path / "train.json"), str(llm), [Arm(2, 4, "pool"), Arm(1, 9, "sample"), Arm(4, 9, "pool")],
                  batch_size=8, length_groups=[0, 4])
    assert out["records"] == 96 and out["text_tokens"]["max"] > out["text_tokens"]["min"]
    for arm in ("T2-M4-pool", "T1-M9-sample"):
        plain, grouped = out["arms"][arm]["length_groups=0"], out["arms"][arm]["length_groups=4"]
        assert 0 <= grouped < plain / 2 and plain < 1
    # a longer visual block dilutes the same text padding
    assert out["arms"]["T4-M9-pool"]["length_groups=0"] < out["arms"]["T1-M9-sample"]["length_groups=0"]


def test_grouping_by_video_puts_each_videos_records_in_one_batch():
    from visctx.config import Arm
    from visctx.data import ArmBatchSampler

    videos = [f"v{i // 4}" for i in range(48)]  # 12 videos x 4 records
    arms = [Arm(1, 4), Arm(2, 4)]
    s = ArmBatchSampler(48, arms, 8, seed=3, videos=videos)
    for epoch in (0, 1):
        batches = s.epoch_batches(epoch)
        assert len(batches) == 6
        assert sorted(i for b in batches for i, _ in b) == list(range(48))  # every record once an epoch
        for b in batches:
            assert len({videos[i] for i, _ in b}) == 2 and len({a for _, a in b}) == 1
    assert s.epoch_batches(0) != s.epoch_batches(1)  # reshuffled every epoch
    assert ArmBatchSampler(48, arms, 8, seed=3, videos=videos).epoch_batches(1) == s.epoch_batches(1)
    with pytest.raises(ValueError, match="cannot be combined"):
        ArmBatchSampler(48, arms, 8, videos=videos, lengths=[1] * 48, length_groups=2)


@pytest.mark.parametrize("arm", [Arm(2, 9, "mask"), Arm(3, 4, "tubetrain", 6)], ids=lambda a: a.id)
def test_masked_contexts_are_cut_per_video_and_cached_per_mode(tmp_path, arm):
    """Each video masked by its own (video, arm) seed, in training; a *train arm is evaluated pooled,
    and the cache keeps the two apart."""
    from visctx.context import mask_seeds
    from visctx.data import ContextCache

    keys = ["a.mp4", "b.mp4"]
    x = torch.from_numpy(write_features(tmp_path / "f", keys).astype(np.float32))
    store = FeatureStore(tmp_path / "f")
    trained = load_context(store, keys, arm, train=True)
    torch.testing.assert_close(trained, visual_context(x, arm, mask_seeds(keys, arm), train=True))
    torch.testing.assert_close(load_context(store, keys[1:], arm, train=True), trained[1:])  # per video, not per batch
    evaluated = load_context(store, keys, arm)
    cache = ContextCache(store)
    torch.testing.assert_close(cache.get(keys, arm, train=True), trained)
    torch.testing.assert_close(cache.get(keys, arm), evaluated)
    if arm.token_op == "tubetrain":
        torch.testing.assert_close(evaluated, visual_context(x, Arm(3, 4, "pool", 6)))
        assert len(cache._items) == 4
    else:
        torch.testing.assert_close(evaluated, trained)
        assert len(cache._items) == 2


def test_training_draws_a_fresh_mask_each_pass_and_evaluation_keeps_one(tmp_path):
    """A masking arm's items carry their epoch; each pass masks a video anew (uncached), the
    collator's context is the draw's, and evaluation's mask stays the per-(video, arm) one."""
    from visctx.context import mask_seeds
    from visctx.data import ContextCache

    arm, plain = Arm(2, 9, "mask"), Arm(2, 9, "pool")
    sampler = ArmBatchSampler(6, [arm, plain], 3, seed=0)
    for epoch in (0, 1):
        for b in sampler.epoch_batches(epoch):
            assert all(it[1:] == ((arm, epoch) if it[1] == arm else (plain,)) for it in b)
    keys = ["a.mp4", "b.mp4"]
    x = torch.from_numpy(write_features(tmp_path / "f", keys).astype(np.float32))
    store = FeatureStore(tmp_path / "f")
    cache = ContextCache(store)
    first, second = cache.get(keys, arm, train=True, draw=0), cache.get(keys, arm, train=True, draw=1)
    torch.testing.assert_close(first, visual_context(x, arm, mask_seeds(keys, arm, 0), train=True))
    assert not torch.equal(first, second) and len(cache._items) == 0
    torch.testing.assert_close(cache.get(keys, arm, train=True, draw=0), first)  # a pure function of the draw
    assert not torch.equal(cache.get(keys, arm), first)  # evaluation: the draw-free seed
    torch.testing.assert_close(cache.get(keys, arm), visual_context(x, arm, mask_seeds(keys, arm)))


def test_frames_of_a_masking_arm_carry_their_videos_seeds():
    from visctx.context import mask_seeds
    from visctx.data import add_context

    class Frames:
        kind = "frame"

    arm = Arm(2, 9, "tube")
    batch = add_context({}, torch.zeros(2, 2, 4, 4, 3, dtype=torch.uint8), Frames(), arm, ["a.mp4", "b.mp4"])
    assert batch["mask_seeds"] == mask_seeds(["a.mp4", "b.mp4"], arm) and batch["arm"] == arm.id
    assert "mask_seeds" not in add_context({}, torch.zeros(1), Frames(), Arm(2, 9, "pool"), ["a.mp4"])
    drawn = add_context({}, torch.zeros(1), Frames(), arm, ["a.mp4"], draw=3)["mask_seeds"]
    assert drawn == mask_seeds(["a.mp4"], arm, 3) != mask_seeds(["a.mp4"], arm)
    with pytest.raises(ValueError, match="needs the videos"):
        add_context({}, torch.zeros(1), Frames(), arm)
