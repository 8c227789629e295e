"""Where the answer looks: the object's tokens under each operator, and the attention report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visctx.attention import ItemAttention, answer_attention, strongest, summarise, target_tokens
from visctx.ceiling import frame_seconds
from visctx.config import Arm
from visctx.context import visual_context
from visctx.synth import make_corpus, objects, visible, vocabulary

ARMS = ["T32-M4-pool", "T1-M4-pool-from32", "T8-M4-pool-from32", "T4-M9-pool", "T16-M25-pool", "T1-M196-pool",
        "T1-M9-sample", "T8-M49-sample"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    make_corpus(d, n_train=1, n_eval=6, seed=3)
    specs = [v for v in json.loads((d / "videos.json").read_text())["videos"] if v["split"] == "eval"]
    return d, specs


def object_features(spec, task):
    """``[32, 27, 27, 1]``: 1 on the task's objects' cells in the frames that show them, else 0 (what
    a feature that sees only the object carries)."""
    f = np.zeros((32, 27, 27, 1), np.float32)
    for k, second in enumerate(frame_seconds(spec, 1.0, 32)):
        for o in objects(spec):
            if o["task"] == task and visible(o, second):
                r, c, side = *o["cell"], o["side"]
                f[k, r:r + side, c:c + side] = 1.0
    return torch.from_numpy(f)


@pytest.mark.parametrize("arm_id", ARMS)
def test_the_object_tokens_are_the_ones_the_arms_operator_fills(corpus, arm_id):
    """The ceiling's account of a context (which tokens hold which cells, in which frames) agrees
    with the operators themselves: features that are 1 on the object alone come out non-zero in
    exactly the target tokens, whether the arm samples or pools tokens, samples or pools frames."""
    arm = Arm.from_id(arm_id)
    seen = 0
    for spec in corpus[1]:
        for task in ("needle", "detail", "episodic", "order"):
            got = target_tokens(spec, task, arm)
            want = (visual_context(object_features(spec, task), arm)[..., 0] > 0).reshape(-1).numpy()
            assert got.shape == (arm.T * arm.M,) and (got == want).all(), (spec["video"], task)
            seen += int(got.any())
    assert seen > 0  # the check saw objects, not only empty contexts
    with pytest.raises(ValueError, match="no object of task 'colour'"):
        target_tokens(corpus[1][0], "colour", arm)


def test_the_needle_is_in_the_frames_that_show_it_alone(corpus):
    """At one token per frame region and a frame a second, the needle's tokens are its own region in
    exactly the seconds it shows (no other frame, no other region)."""
    spec = corpus[1][0]
    got = target_tokens(spec, "needle", Arm.from_id("T32-M4-pool")).reshape(32, 4)
    n = spec["needle"]
    (start, dur), = n["shows"]
    assert set(np.flatnonzero(got.any(1))) == set(range(start, min(start + dur, 32)))
    r, c, side = *n["cell"], n["side"]
    regions = {(i // 14) * 2 + j // 14 for i in range(r, r + side) for j in range(c, c + side)}
    assert set(np.flatnonzero(got.any(0))) == regions


def test_the_summary_reads_lift_and_hits_per_layer():
    items = [ItemAttention("a", [0.2, 0.05], 0.1, [True, False]), ItemAttention("b", [0.1, 0.05], 0.05, [False, False]),
             ItemAttention("c", [0.9, 0.1], 0.3, [True, True])]
    rows = summarise(items)
    assert [r["lift"] for r in rows] == pytest.approx([2.0, 0.5])  # medians of (2, 2, 3) and (0.5, 1, 1/3)
    assert rows[0]["mass"] == pytest.approx(0.4) and rows[0]["uniform"] == pytest.approx(0.15)
    assert [r["hit"] for r in rows] == pytest.approx([2 / 3, 1 / 3])
    assert strongest(rows)["layer"] == 0 and strongest(rows[1:])["layer"] == 1
    with pytest.raises(ValueError, match="no items"):
        summarise([])


def test_a_shared_visual_prefix_is_refused():
    from visctx.data import EvalRecord

    recs = [EvalRecord("q1", "v.mp4", "q", ("red", "blue"), 0, "needle"), EvalRecord("q2", "v.mp4", "q", ("red",), 0, "needle")]
    with pytest.raises(ValueError, match="one question per video"):
        answer_attention(None, recs, None, Arm.from_id("T4-M4-pool"), {}, "needle")


def test_a_models_attention_on_the_object_through_the_real_loading_and_batching(corpus, tmp_path):
    """A microscopic model on a store of object-only features: every question of the task is read
    (the ones whose object the arm holds), each layer's mass is a share, the uniform mass is the
    target's share of the tokens, and eager attention gives the model's own option scores."""
    from tiny_llm import tiny_llm

    from visctx.benchmarks import read_items
    from visctx.data import EvalRecord, choice_loader
    from visctx.features import open_store
    from visctx.model import VideoModel
    from visctx.pretrained import load_llm

    d, specs = corpus
    feats = tmp_path / "features"
    feats.mkdir()
    arr = np.stack([object_features(s, "needle").numpy() for s in specs]).astype(np.float16)
    np.save(feats / "shard-000.npy", arr)
    (feats / "shard-000.json").write_text(json.dumps({"videos": [s["video"] for s in specs], "frames": 32, "grid": 27,
                                                      "dim": 1}))
    store = open_store(feats)
    items = [it for it in read_items(d / "eval.json") if it.task_type == "needle"]
    recs = [EvalRecord(it.id, it.video, it.question, it.options, it.answer, it.task_type) for it in items]
    llm, tok = load_llm(tiny_llm(tmp_path, " ".join(vocabulary()), max_frames=32))
    torch.manual_seed(0)
    model = VideoModel(llm, tok, vision_dim=1)
    arm = Arm.from_id("T32-M4-pool")
    by_video = {s["video"]: s for s in specs}
    batch = next(iter(choice_loader(recs, store, model.encoder, arm, 4)))
    sdpa = model.eval().score_options(batch)["logprob"]
    got = answer_attention(model, recs, store, arm, by_video, "needle", batch_size=4)
    assert model.llm.config._attn_implementation == "eager"
    assert torch.allclose(model.score_options(batch)["logprob"], sdpa, atol=1e-5)
    held = [r for r in recs if target_tokens(by_video[r.video], "needle", arm).any()]
    assert [g.id for g in got] == [r.id for r in held] and got
    for g, r in zip(got, held):
        assert len(g.mass) == 2 and all(0 <= m <= 1 for m in g.mass)
        assert g.uniform == pytest.approx(target_tokens(by_video[r.video], "needle", arm).mean())
