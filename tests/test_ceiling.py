"""The information ceiling pinned on hand-built scenes: what each arm's exact context can recover."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from visctx import ceiling as C
from visctx import synth
from visctx.config import Arm

SEC = list(range(32))  # 1 fps, 32 frames: extracted frame i shows second i
TAU = 0.25


def scene(**over):
    """A scene whose objects are all off-screen (shown never) unless given."""
    never = {"colour": "red", "cell": [0, 0], "side": 1, "shows": []}
    spec = {"video": "v", "seconds": 32, "fps": 2, "size": 108, "grid": 27, "noise": 0,
            "background": {"grey": 100, "texture_seed": 0},
            "needle": dict(never, cell=[0, 0]), "count": dict(never, colour="white", cell=[0, 3], n=1),
            "order": [dict(never, cell=[0, 6]), dict(never, colour="blue", cell=[0, 9])],
            "detail": dict(never, cell=[0, 12]),
            "episodic": {"cell": [0, 15], "side": 1, "episodes": [dict(colour=c, shows=[]) for c in
                                                                 ("green", "blue", "red")]}}
    for k, v in over.items():
        spec[k] = v
    return spec


CHROMA = 0.1  # config/config.yaml's ceiling.chroma_noise


def seen(spec, arm_id):
    """The share rule (every object: share >= TAU and the largest)."""
    return C._seen_by_key(spec, Arm.from_id(arm_id), SEC, TAU)


def read(spec, arm_id):
    """The chroma rule (coloured objects) with the share rule for the white blinker: the study's."""
    return C._seen_by_key(spec, Arm.from_id(arm_id), SEC, TAU, CHROMA)


def test_a_token_names_the_colour_its_chroma_points_to():
    """Any share of a colour shifts a token's chroma off the grey background's zero; colours that
    share a token mix, and the reader sees the mixture's hue."""
    lone = scene(detail={"colour": "red", "cell": [22, 20], "side": 1, "shows": [[0, 32]]})
    assert len(seen(lone, "T1-M1-pool")["detail"]) == 0  # 1/729 of the token: far under a quarter
    assert list(read(lone, "T1-M1-pool")["detail"]) == [0]  # but 0.16 levels of chroma, none else
    # a second colour in the token: the larger share names the hue (4 red cells, 1 green)
    small_green = {"colour": "green", "cell": [20, 2], "side": 1, "shows": [[0, 32]]}
    two = read(scene(detail=dict(lone["detail"], side=2), needle=small_green), "T1-M1-pool")
    assert list(two["detail"]) == [0] and len(two["needle"]) == 0
    both = read(scene(detail=dict(lone["detail"], side=3), needle=dict(small_green, side=3)), "T1-M1-pool")
    assert len(both["detail"]) == 0 and len(both["needle"]) == 0  # red + green in equal shares read as yellow
    cyan = read(scene(detail=dict(lone["detail"], side=3), needle=dict(small_green, colour="cyan", side=3)),
                "T1-M1-pool")
    assert len(cyan["detail"]) == 0 and len(cyan["needle"]) == 0  # opposite hues cancel
    # the chroma must rise above the noise: a colour too diluted for it is not read
    faint = C._seen_by_key(lone, Arm.from_id("T1-M1-pool"), SEC, TAU, 0.2)
    assert len(faint["detail"]) == 0
    # the white blinker has no chroma: the share rule decides, and it does not tint a coloured token
    blink = {"colour": "white", "cell": [20, 2], "side": 8, "n": 1, "shows": [[0, 32]]}
    r = read(scene(detail=lone["detail"], count=blink), "T1-M1-pool")
    assert list(r["detail"]) == [0] and len(r["count"]) == 0  # 64/729 < 1/4


def test_a_sampled_patch_beside_an_object_reads_its_chroma_across_columns():
    """Decoding blurs chroma across columns: the patch left or right of an object holds 1/8 of its
    chroma (above the noise), the patch above or below holds none."""
    pts = [4, 13, 22]  # uniform_indices(27, 3)
    right = scene(detail={"colour": "red", "cell": [22, 21], "side": 1, "shows": [[0, 32]]})  # patch (22, 22) beside it
    below = scene(detail={"colour": "red", "cell": [21, 22], "side": 1, "shows": [[0, 32]]})  # (22, 22) under it
    assert 22 in pts
    assert list(read(right, "T1-M9-sample")["detail"]) == [0] and len(seen(right, "T1-M9-sample")["detail"]) == 0
    assert len(read(below, "T1-M9-sample")["detail"]) == 0
    detail = [t for t in synth.objects(right) if t["task"] == "detail"]
    sh = C.shares(detail, [[0]], np.eye(27 * 27).reshape(-1, 27, 27), C.CHROMA_LEAK)[0, 0].reshape(27, 27)
    assert sh[22, 20] == sh[22, 22] == C.CHROMA_LEAK and sh[22, 21] == 1 - 2 * C.CHROMA_LEAK
    assert sh[21, 21] == sh[23, 21] == 0 and sh.sum() == pytest.approx(1.0)


def test_chroma_is_the_encoders_and_decoding_blurs_it_across_columns_only(tmp_path):
    """The rule's chroma is the corpus encoder's (synth.rgb_to_yuv420p); read back by decord at the
    tower's size, every cell's chroma is what the rule's shares predict (CHROMA_LEAK beside an
    object, nothing above or below it), and pooled tokens that hold no object's chroma stay under
    the noise level the study uses."""
    from visctx.video import read_video

    for name, rgb in synth.PALETTE.items():
        planes = synth.rgb_to_yuv420p(np.full((1, 2, 2, 3), rgb, np.uint8))[0]
        u, v = planes[2, 0] - 128.0, planes[2, 1] - 128.0
        assert C.chroma(rgb) == pytest.approx([u, v], abs=1.0), name
    assert C.chroma((100, 100, 100)) == pytest.approx([0, 0], abs=1e-9) and not C.chroma(synth.WHITE).any()
    spec = scene(noise=24, needle={"colour": "red", "cell": [2, 3], "side": 2, "shows": [[0, 32]]},
                 detail={"colour": "cyan", "cell": [20, 20], "side": 1, "shows": [[0, 32]]},
                 order=[{"colour": "blue", "cell": [12, 5], "side": 4, "shows": [[0, 16]]},
                        {"colour": "yellow", "cell": [12, 18], "side": 3, "shows": [[16, 16]]}],
                 count={"colour": "white", "cell": [2, 20], "side": 3, "n": 1, "shows": [[0, 32]]})
    synth.write_mp4(tmp_path / "v.mp4", synth.render_frames(spec), spec["fps"])
    frames, _ = read_video(tmp_path / "v.mp4", fps=1.0, max_frames=32, size=54)
    rgb = frames.astype(float).reshape(32, 27, 2, 27, 2, 3).mean((2, 4))
    uv = np.stack([(-38 * rgb[..., 0] - 74 * rgb[..., 1] + 112 * rgb[..., 2]) / 256,
                   (112 * rgb[..., 0] - 94 * rgb[..., 1] - 18 * rgb[..., 2]) / 256], -1)
    things = [t for t in synth.objects(spec) if t["colour"] != "white"]
    chi = np.stack([C.chroma(synth.PALETTE[t["colour"]]) for t in things])
    for second in (4, 20):
        sh = C.shares(things, [[second]], np.eye(27 * 27).reshape(-1, 27, 27), C.CHROMA_LEAK)[:, 0]
        want = (sh.T @ chi).reshape(27, 27, 2)
        err = np.linalg.norm(uv[second] - want, axis=-1)
        assert np.percentile(err, 99) < 2.0 and np.median(err) < 0.1, second  # within a level or two
        # a 1-cell object keeps 3/4 of its chroma; the cells beside it 1/8, those above and below none
        cyan = C.chroma(synth.PALETTE["cyan"])
        d = uv[second, 20, 19:22] @ cyan / (cyan @ cyan)
        assert d == pytest.approx([C.CHROMA_LEAK, 1 - 2 * C.CHROMA_LEAK, C.CHROMA_LEAK], abs=0.03)
        above = np.linalg.norm(uv[second, [19, 21], 20], axis=-1)
        assert (above < 0.5).all()
        for k in (9, 14):  # object-free pooled tokens (zeros of the padding count)
            side = -(-27 // k)
            pad = np.zeros((side * k, side * k, 2))
            pad[:27, :27] = uv[second]
            tok = np.linalg.norm(pad.reshape(side, k, side, k, 2).mean((1, 3)), axis=-1)
            free = np.zeros((side * k, side * k))
            free[:27, :27] = sh.sum(0).reshape(27, 27)
            empty = free.reshape(side, k, side, k).sum((1, 3)) == 0
            assert empty.any() and (tok[empty] < CHROMA).all(), (second, k)


def test_pooled_token_carries_an_object_holding_a_quarter_of_it():
    # a 1-cell detail at (4, 4): a quarter of a 2x2 cell (M = 196), a ninth of a 3x3 cell (M = 81)
    spec = scene(detail={"colour": "red", "cell": [4, 4], "side": 1, "shows": [[0, 32]]})
    assert len(seen(spec, "T1-M196-pool")["detail"]) == 1
    assert len(seen(spec, "T1-M81-pool")["detail"]) == 0
    # 2x2 at (3, 3): 4 of the 9 patches of cell (1, 1) of the 3x3 pool -> 0.44 >= 0.25
    spec = scene(detail={"colour": "red", "cell": [3, 3], "side": 2, "shows": [[0, 32]]})
    assert len(seen(spec, "T1-M81-pool")["detail"]) == 1
    # the zero padding counts: at M = 4 (k = 14) a 6x6 object in the far corner cell (13 real rows)
    spec = scene(detail={"colour": "red", "cell": [21, 21], "side": 6, "shows": [[0, 32]]})
    assert len(seen(spec, "T1-M4-pool")["detail"]) == 0  # 36 / 196 < 0.25 although 36 / 169 would pass


def test_a_sampled_token_sees_exactly_the_patch_it_keeps():
    pts = [4, 13, 22]  # uniform_indices(27, 3): the 3x3 sub-grid of M = 9
    hit = scene(detail={"colour": "red", "cell": [13, 22], "side": 1, "shows": [[0, 32]]})
    miss = scene(detail={"colour": "red", "cell": [14, 22], "side": 1, "shows": [[0, 32]]})
    assert pts == [int((i + 0.5) * 27 / 3) for i in range(3)]
    assert len(seen(hit, "T1-M9-sample")["detail"]) == 1 and len(seen(miss, "T1-M9-sample")["detail"]) == 0
    loss, acc = C.item_ceiling("detail", miss, seen(miss, "T1-M9-sample"), ["red", "blue", "green", "cyan"], 0)
    assert loss == pytest.approx(math.log(6)) and acc == 0.25


def test_frame_sampling_can_miss_what_frame_pooling_dilutes():
    big = {"colour": "cyan", "cell": [0, 0], "side": 12, "shows": [[10, 1]]}  # one second, 144 of a 14x14 cell
    spec = scene(needle=big)
    assert len(seen(spec, "T1-M4-pool")["needle"]) == 0  # frame 16 only
    assert list(seen(spec, "T8-M4-pool")["needle"]) == [2]  # frames 2, 6, 10, ...: the third bin
    assert len(seen(spec, "T8-M4-pool-from32")["needle"]) == 0  # 1 of 4 frames x 144/196 = 0.18 < 0.25
    long = scene(needle=dict(big, shows=[[8, 4]]))  # four seconds fill the bin [8, 12)
    assert list(seen(long, "T8-M4-pool-from32")["needle"]) == [2]
    assert C.item_ceiling("needle", long, seen(long, "T8-M4-pool-from32"), ["cyan", "red", "blue", "green"], 0) == (0, 1)


def test_counting_reads_runs_of_bins_a_lower_bound_on_the_count():
    blinker = {"colour": "white", "cell": [0, 0], "side": 12, "n": 3, "shows": [[3, 1], [10, 2], [20, 1]]}
    spec = scene(count=blinker)
    opts = ["1", "2", "3", "4"]
    assert C._runs(seen(spec, "T32-M4-pool")["count"]) == 3
    assert C.item_ceiling("count", spec, seen(spec, "T32-M4-pool"), opts, 2) == (pytest.approx(math.log(2)), 0.5)
    # at T = 1 nothing: uniform over 1..4
    assert C.item_ceiling("count", spec, seen(spec, "T1-M4-pool"), opts, 2) == (pytest.approx(math.log(4)), 0.25)
    spec4 = scene(count=dict(blinker, n=4, shows=[[3, 1], [10, 2], [20, 1], [28, 1]]))
    assert C.item_ceiling("count", spec4, seen(spec4, "T32-M4-pool"), opts, 3) == (0.0, 1.0)


def test_order_needs_both_in_order_and_half_knows_half():
    a = {"colour": "red", "cell": [0, 0], "side": 12, "shows": [[2, 3]]}
    b = {"colour": "blue", "cell": [14, 14], "side": 12, "shows": [[20, 3]]}
    opts = ["blue", "red", "green", "cyan"]  # the answer is red (index 1); blue is the pair's other colour
    both = scene(order=[a, b])
    assert C.item_ceiling("order", both, seen(both, "T32-M4-pool"), opts, 1) == (0.0, 1.0)
    only_a = scene(order=[a, dict(b, side=1)])
    assert C.item_ceiling("order", only_a, seen(only_a, "T32-M4-pool"), opts, 1) == (pytest.approx(math.log(2)), 1.0)
    only_b = scene(order=[dict(a, side=1), b])
    assert C.item_ceiling("order", only_b, seen(only_b, "T32-M4-pool"), opts, 1) == (pytest.approx(math.log(10)), 0.0)
    # one bin holds both (T = 1 pooled from 32): seen, but not which came first
    ab = scene(order=[dict(a, shows=[[0, 16]]), dict(b, shows=[[16, 16]])])
    assert C.item_ceiling("order", ab, seen(ab, "T1-M4-pool-from32"), opts, 1) == (pytest.approx(math.log(2)), 0.5)


def test_episodic_needs_the_episode_before_the_named_one():
    place = {"cell": [0, 0], "side": 12, "episodes": [{"colour": "green", "shows": [[2, 4]]},
                                                      {"colour": "blue", "shows": [[8, 4]]},
                                                      {"colour": "red", "shows": [[14, 4]]}]}
    spec = scene(episodic=place)
    opts = ["green", "red", "cyan", "yellow"]
    assert C.item_ceiling("episodic", spec, seen(spec, "T32-M4-pool"), opts, 0) == (0.0, 1.0)
    assert C.item_ceiling("episodic", spec, seen(spec, "T1-M4-pool"), opts, 0) == (pytest.approx(math.log(5)), 0.25)


def test_a_token_carries_only_its_largest_object():
    # two statics in one 14x14 cell: 64 vs 81 patches of 196 -- only the larger is carried there
    spec = scene(detail={"colour": "red", "cell": [0, 0], "side": 8, "shows": [[0, 32]]},
                 needle={"colour": "blue", "cell": [0, 9], "side": 4, "shows": [[0, 32]]})
    s = seen(spec, "T1-M4-pool")
    assert len(s["detail"]) == 1 and len(s["needle"]) == 0


def cands(spec, arm_id, task):
    return C._evidence(spec, Arm.from_id(arm_id), SEC, TAU, CHROMA)[2][task]


def test_a_token_knows_its_zones_and_the_leak_reaches_one_column_further():
    """At M = 4 (14-cell pools) every token spans the order band and another zone; at M = 9 the
    9-cell pools fall on the bands, so the needle's tokens hold no other coloured zone (the
    count's white blinker confuses no colour)."""
    four = C.token_roles(C.context(Arm.from_id("T1-M4-pool"), SEC)[1])
    assert 0.5 < four["needle"][0] < 1 and 0 < four["order"][0] < 0.5  # top left: mostly the needle's zone
    assert four["needle"][3] == -1 and four["detail"][3] > 0.5  # bottom right: not the needle's at all
    assert four["detail"][2] == 0.0  # bottom left: the detail's zone only by the leak of the column beside it
    nine = C.token_roles(C.context(Arm.from_id("T1-M9-pool"), SEC)[1])
    assert nine["needle"][0] == 1.0 and nine["order"][3] == 1.0 and nine["order"][0] == -1


def test_a_colour_in_a_token_spanning_two_zones_could_be_either_question_s():
    """The needle and an order colour in the one top-left token of a 2 x 2 pool: the position-known
    rule reads the needle for sure; the reader sees two colours in a mixed token and, without base
    rates (an empty Reader), spreads its belief over them and the colours it did not see."""
    needle = {"colour": "red", "cell": [2, 2], "side": 4, "shows": [[4, 6]]}
    pair = [{"colour": "blue", "cell": [10, 2], "side": 3, "shows": [[20, 4]]},
            {"colour": "green", "cell": [12, 20], "side": 1, "shows": []}]
    spec = scene(needle=needle, order=pair)
    opts = ["green", "red", "blue", "cyan"]
    assert C.item_ceiling("needle", spec, read(spec, "T32-M4-pool"), opts, 1) == (0.0, 1.0)
    c = cands(spec, "T32-M4-pool", "needle")
    assert set(c) == {"red", "blue"} and c["red"][1] == "major" and c["red"][0].tolist() == list(range(4, 10))
    sig, order = C.signature("needle", spec, c, 32)
    assert sig == (("major", "some"), ("major", "some"))  # colours left out: the two look alike
    loss, acc = C.read_item(C.Reader().posterior("needle", sig, 2), order, list(synth.PALETTE), opts, 1)
    assert loss == pytest.approx(math.log(3))  # 1/3 each: red, blue, or one of the four unseen
    assert acc == 0.5  # red and blue tie above the unseen
    # on a 3 x 3 pool the needle's token is its zone alone: pure, and the order colour is not in it
    c9 = cands(spec, "T32-M9-pool", "needle")
    assert set(c9) == {"red"} and c9["red"][1] == "pure"


def test_the_reader_learns_whose_colour_it_is_from_the_training_scenes():
    """Base rates decide a mixed token: where the training scenes' needle question was answered by
    the first of two look-alike candidates 9 times in 10, the posterior says so (smoothed), the
    loss is its -ln and the best option is the candidate."""
    r = C.Reader()
    sig = (("major", "some"),)
    for answer in ["red"] * 9 + ["blue"]:
        r.learn("needle", sig, ["red"], answer)
    post = r.posterior("needle", sig, 1)
    prior = np.array([9.5, 1.5]) / 11  # the coarse signature's (the same scenes), add-1/2
    assert post == pytest.approx((np.array([9, 1]) + C.BACKOFF * prior) / (10 + C.BACKOFF))
    assert r.posterior("order", sig, 1) == pytest.approx([0.5, 0.5])  # per question type
    loss, acc = C.read_item(post, ["red"], list(synth.PALETTE), ["blue", "red", "green", "cyan"], 1)
    assert loss == pytest.approx(-math.log(post[0])) and acc == 1.0
    loss, acc = C.read_item(post, ["red"], list(synth.PALETTE), ["blue", "red", "green", "cyan"], 0)
    assert loss == pytest.approx(-math.log(post[1] / 5)) and acc == 0.0
    # a signature seen once leans on the odds of its coarse one (the same without the time class)
    rare = (("major", "all"),)
    assert C.coarse("order", rare) == C.coarse("order", sig) == (("major",),)
    r.learn("needle", rare, ["red"], "blue")
    lean = r.posterior("needle", rare, 1)
    prior = np.array([9.5, 2.5]) / 12
    assert lean == pytest.approx((np.array([0, 1]) + C.BACKOFF * prior) / (1 + C.BACKOFF)) and lean[0] > 0.5
    assert C.coarse("episodic", (True, (("pure", "some", "before"),))) == (True, (("pure", "before"),))
    # every colour a candidate: nothing is left for "none of them"
    loss, _ = C.read_item(np.array([0.5, 0.3, 0.2]), ["red", "blue"], ["red", "blue"], ["red", "blue"], 1)
    assert loss == pytest.approx(-math.log(0.3 / 0.8))


def test_the_readers_signature_keeps_time_where_the_question_is_about_time():
    """order: candidates in the order they first appear; episodic: each before, during or after the
    colour the question names (c2), the latest first; the still detail is carried in every bin."""
    a = {"colour": "red", "cell": [10, 0], "side": 3, "shows": [[2, 3]]}
    b = {"colour": "blue", "cell": [10, 20], "side": 3, "shows": [[20, 3]]}
    spec = scene(order=[a, b])
    sig, order = C.signature("order", spec, cands(spec, "T32-M9-pool", "order"), 32)
    assert order == ["red", "blue"] and sig == (("pure", "some"), ("pure", "some"))
    place = {"cell": [20, 0], "side": 3, "episodes": [{"colour": "green", "shows": [[2, 4]]},
                                                     {"colour": "blue", "shows": [[8, 4]]},
                                                     {"colour": "red", "shows": [[14, 4]]}]}
    ep = scene(episodic=place)
    sig, order = C.signature("episodic", ep, cands(ep, "T32-M9-pool", "episodic"), 32)
    assert order == ["red", "green"] and sig == (True, (("pure", "some", "after"), ("pure", "some", "before")))
    still = scene(detail={"colour": "cyan", "cell": [20, 20], "side": 2, "shows": [[0, 32]]})
    sig, _ = C.signature("detail", still, cands(still, "T32-M9-pool", "detail"), 32)
    assert sig == (("pure", "all"),)
    assert C.signature("detail", still, cands(still, "T1-M9-pool", "detail"), 1)[0] == (("pure", ""),)


def test_the_readers_ceiling_is_counted_on_the_training_split_and_kept_beside_the_known_one(tmp_path):
    synth.make_corpus(tmp_path, n_train=30, n_eval=20, seed=0)
    specs = synth.load_videos_json(tmp_path / "videos.json")["videos"]
    train = [v for v in specs if v["split"] == "train"]
    r = C.learn_reader(Arm.from_id("T8-M4-pool"), train, 1.0, 32, TAU, CHROMA)
    assert sum(sum(n.values()) for n in r.counts.values()) == 30 * len(C.READ_TASKS)
    studies = {"frames": {"tokens": 4, "token_method": "pool", "frames": [1, 8], "methods": ["sample"],
                          "pool_source": 32}}
    C.ceiling(str(tmp_path / "videos.json"), str(tmp_path / "eval.json"), studies, str(tmp_path / "c.csv"))
    t = pd.read_csv(tmp_path / "c.csv").set_index("arm")
    assert {"loss_known", "accuracy_known"} <= set(t.columns)
    # at M = 4 a token spans two zones: knowing every colour's question is worth something
    assert t.loc["T8-M4-pool", "loss_known"] < t.loc["T8-M4-pool", "loss"]


def test_the_reader_counts_each_scene_under_its_own_tokens_where_a_mask_draws_them_per_video(tmp_path):
    """learn_reader finds the tokens' roles once per arm where every video has the same tokens: its
    counts equal those of each scene read alone, for a fixed pool and for a per-video random mask."""
    synth.make_corpus(tmp_path, n_train=12, n_eval=2, seed=1)
    train = [v for v in synth.load_videos_json(tmp_path / "videos.json")["videos"] if v["split"] == "train"]
    for arm_id in ("T4-M9-pool", "T4-M9-mask"):
        arm = Arm.from_id(arm_id)
        alone = C.Reader()
        for spec in train:
            ev = C._evidence(spec, arm, C.frame_seconds(spec, 1.0, 32), TAU, CHROMA)[2]
            for task in C.READ_TASKS:
                sig, order = C.signature(task, spec, ev[task], arm.T)
                alone.learn(task, sig, order, synth.answer(spec, task))
        assert C.learn_reader(arm, train, 1.0, 32, TAU, CHROMA).counts == alone.counts, arm_id


def test_the_arms_ceiling_reads_each_video_as_it_would_alone(tmp_path, monkeypatch):
    """arm_ceiling shares the tokens' roles across an arm's videos (``_roles``): its table equals the
    one that finds them anew for every video, for a fixed pool and for a per-video random mask."""
    import json

    synth.make_corpus(tmp_path, n_train=2, n_eval=8, seed=2)
    specs = {v["video"]: v for v in synth.load_videos_json(tmp_path / "videos.json")["videos"]}
    items = json.loads((tmp_path / "eval.json").read_text())
    arms = [Arm.from_id(a) for a in ("T4-M9-pool", "T4-M9-mask")]
    shared = [C.arm_ceiling(a, specs, items, 1.0, 32, TAU, CHROMA) for a in arms]
    monkeypatch.setattr(C, "_roles", lambda W, grid, memo: C.token_roles(W))
    for arm, table in zip(arms, shared):
        pd.testing.assert_frame_equal(table, C.arm_ceiling(arm, specs, items, 1.0, 32, TAU, CHROMA), obj=arm.id)


def test_the_ceiling_table_is_an_arms_table(tmp_path):
    synth.make_corpus(tmp_path, n_train=1, n_eval=40, seed=0)
    studies = {"tokens": {"frames": 1, "tokens": [1, 4, 49, 196], "methods": ["sample", "pool"]},
               "frames": {"tokens": 4, "token_method": "pool", "frames": [1, 8, 32], "methods": ["sample", "pool"],
                          "pool_source": 32}}
    C.ceiling(str(tmp_path / "videos.json"), str(tmp_path / "eval.json"), studies, str(tmp_path / "c.csv"))
    t = pd.read_csv(tmp_path / "c.csv").set_index("arm")
    assert {"T", "M", "token_op", "frame_op", "pooled_from", "seed", "benchmark", "loss", "accuracy", "loss_needle",
            "acc_episodic"} <= set(t.columns) | {t.index.name}
    assert ((t["loss"] >= 0) & (t["loss"] <= math.log(6))).all() and (t["n"] == 200).all()
    assert t.loc["T1-M1-pool", "loss"] > t.loc["T1-M49-pool", "loss"] > t.loc["T1-M196-pool", "loss"]
    assert t.loc["T1-M4-pool", "loss"] > t.loc["T32-M4-pool", "loss"]  # more frames, more seen
    items = json.loads((tmp_path / "eval.json").read_text())
    assert len(items) == 200


def test_a_masked_token_sees_the_patch_its_mask_keeps_in_its_frame():
    """mask / tube: the ceiling reads the very patches the evaluation's mask keeps (visctx.context.
    mask_indices with the video's seed), frame by frame; *train arms are evaluated pooled; summary
    tokens are bounded by their raw stream."""
    from visctx.context import mask_indices, mask_seed

    arm = Arm.from_id("T4-M9-mask")
    idx = mask_indices(mask_seed("v", arm.id), 4, 27 * 27, 9, tube=False).numpy()
    r, c = divmod(int(idx[2, 0]), 27)  # a patch frame 2's mask keeps
    spec = scene(detail={"colour": "red", "cell": [r, c], "side": 1, "shows": [[0, 32]]})
    bins = seen(spec, arm.id)["detail"]
    assert 2 in bins  # carried where the mask keeps it ...
    assert all((r * 27 + c) in {int(i) for i in idx[t]} for t in bins)  # ... and only there
    tube = Arm.from_id("T4-M9-tube")
    rows = mask_indices(mask_seed("v", tube.id), 4, 27 * 27, 9, tube=True).numpy()
    assert (rows == rows[0]).all()
    r, c = divmod(int(rows[0, 0]), 27)
    spec = scene(detail={"colour": "red", "cell": [r, c], "side": 1, "shows": [[0, 32]]})
    assert list(seen(spec, tube.id)["detail"]) == [0, 1, 2, 3]  # a tube keeps it in every frame
    big = scene(detail={"colour": "red", "cell": [0, 0], "side": 9, "shows": [[0, 32]]})
    assert C._seen_by_key(big, Arm.from_id("T4-M9-masktrain"), SEC, TAU)["detail"].tolist() == \
        seen(big, "T4-M9-pool")["detail"].tolist()
    assert seen(big, "T4-M36-pool-vst4w36")["detail"].tolist() == seen(big, "T4-M36-pool")["detail"].tolist()


def shown(spec, arm_id):
    return C._evidence(spec, Arm.from_id(arm_id), SEC, TAU)[1]


def test_the_bound_reads_frames_whatever_the_tokens_keep():
    """The detail off every sampled patch: the share rule says unseen, the bound says the frame
    shows it (a tower's attention may pass it into any token)."""
    miss = scene(detail={"colour": "red", "cell": [14, 22], "side": 1, "shows": [[0, 32]]})
    opts = ["red", "blue", "green", "cyan"]
    assert len(seen(miss, "T1-M9-sample")["detail"]) == 0 and list(shown(miss, "T1-M9-sample")["detail"]) == [0]
    assert C.bound_item("detail", shown(miss, "T1-M9-sample"), opts, pooled=False) == 1.0
    flash = scene(needle={"colour": "cyan", "cell": [0, 0], "side": 1, "shows": [[10, 1]]})
    assert C.bound_item("needle", shown(flash, "T1-M196-pool"), opts, pooled=False) == 0.25  # frame 16 only
    assert C.bound_item("needle", shown(flash, "T1-M4-pool-from32"), opts, pooled=True) == 1.0  # every frame, pooled
    # order: only B shown rules B out; episodic: c3 shown rules c3 out
    b_only = scene(order=[{"colour": "red", "cell": [0, 6], "side": 1, "shows": []},
                          {"colour": "blue", "cell": [0, 9], "side": 1, "shows": [[0, 32]]}])
    assert C.bound_item("order", shown(b_only, "T4-M4-pool"), ["red", "blue", "cyan", "green"], False) == 1 / 3
    ep = scene(episodic={"cell": [0, 15], "side": 1, "episodes": [
        {"colour": "green", "shows": [[0, 4]]}, {"colour": "blue", "shows": [[4, 4]]}, {"colour": "red", "shows": [[8, 4]]}]})
    assert C.bound_item("episodic", shown(ep, "T1-M4-pool"), opts, False) == 1 / 4  # frame 16: none shown
    assert C.bound_item("episodic", shown(ep, "T32-M4-pool"), opts, False) == 1.0


def test_the_count_bound_is_the_best_guess_from_the_runs():
    runs = [0, 0, 1, 1, 1, 2]
    truth = ["1", "2", "1", "1", "3", "2"]  # r = 0: a tie, the smallest wins; r = 1: "1"; r = 2: "2"
    assert C.count_bound(runs, truth).tolist() == [1, 0, 1, 1, 0, 1]
    # over pooled frames the blinker's showings add up in a bin: shown is known, as far as a bound goes
    blinker = scene(count={"colour": "white", "cell": [0, 0], "side": 2, "n": 2, "shows": [[3, 1], [10, 2]]})
    assert C.bound_item("count", shown(blinker, "T1-M4-pool-from32"), ["1", "2", "3", "4"], pooled=True) == 1.0
    assert C.bound_item("count", shown(blinker, "T8-M4-pool"), ["1", "2", "3", "4"], pooled=False) is None


def test_the_loss_bound_is_the_entropy_of_the_answers_the_frames_leave_open():
    """The model never sees the options: an unseen colour is one of 6; only B shown leaves 5;
    episodic names c2, and c3 shown leaves 4."""
    flash = scene(needle={"colour": "cyan", "cell": [0, 0], "side": 1, "shows": [[10, 1]]})
    assert C.loss_bound_item("needle", shown(flash, "T1-M196-pool"), flash, pooled=False) == pytest.approx(math.log(6))
    assert C.loss_bound_item("needle", shown(flash, "T1-M4-pool-from32"), flash, pooled=True) == 0.0
    b_only = scene(order=[{"colour": "red", "cell": [0, 6], "side": 1, "shows": []},
                          {"colour": "blue", "cell": [0, 9], "side": 1, "shows": [[0, 32]]}])
    assert C.loss_bound_item("order", shown(b_only, "T4-M4-pool"), b_only, False) == pytest.approx(math.log(5))
    ep = scene(episodic={"cell": [0, 15], "side": 1, "episodes": [
        {"colour": "green", "shows": [[0, 4]]}, {"colour": "blue", "shows": [[4, 4]]}, {"colour": "red", "shows": [[8, 4]]}]})
    assert C.loss_bound_item("episodic", shown(ep, "T1-M4-pool"), ep, False) == pytest.approx(math.log(5))  # none
    assert C.loss_bound_item("episodic", shown(ep, "T32-M4-pool"), ep, False) == 0.0
    c3 = {k: np.array([]) for k in ("episodic0", "episodic1")} | {"episodic2": np.array([3])}
    assert C.loss_bound_item("episodic", c3, ep, False) == pytest.approx(math.log(4))
    blinker = scene(count={"colour": "white", "cell": [0, 0], "side": 2, "n": 2, "shows": [[3, 1], [10, 2]]})
    assert C.loss_bound_item("count", shown(blinker, "T1-M4-pool-from32"), blinker, pooled=True) == 0.0
    assert C.loss_bound_item("count", shown(blinker, "T8-M4-pool"), blinker, pooled=False) is None


def test_the_count_loss_bound_is_the_entropy_of_n_given_the_runs():
    runs = [0, 0, 1, 1, 1, 2]
    truth = ["1", "2", "1", "1", "3", "2"]  # r = 0: 1/2 each; r = 1: "1" 2/3, "3" 1/3; r = 2: certain
    got = C.count_loss_bound(runs, truth)
    assert got == pytest.approx([math.log(2)] * 2 + [math.log(1.5)] * 2 + [math.log(3), 0.0])
    # no function of r does better on these items: the best constant per r is their frequency
    for q1 in (0.5, 0.6, 0.8):
        assert -(2 * math.log(q1) + math.log(1 - q1)) / 3 >= got[2:5].mean() - 1e-12


def test_the_bound_is_never_below_the_ceiling_and_the_check_flags_an_arm_above_either(tmp_path):
    synth.make_corpus(tmp_path, n_train=1, n_eval=40, seed=0)
    studies = {"tokens": {"frames": 1, "tokens": [1, 49], "methods": ["sample", "pool"]},
               "frames": {"tokens": 4, "token_method": "pool", "frames": [1, 8], "methods": ["sample", "pool"],
                          "pool_source": 32}}
    C.ceiling(str(tmp_path / "videos.json"), str(tmp_path / "eval.json"), studies, str(tmp_path / "c.csv"))
    c = pd.read_csv(tmp_path / "c.csv").set_index("arm")
    for task in ("needle", "detail", "order", "episodic"):  # seen by a token -> shown by a frame
        assert (c[f"bound_{task}"] >= c[f"acc_{task}"] - 1e-9).all(), task
    assert (c["bound_se"] >= 0).all() and (c["bound"] <= 1).all() and c.loc["T1-M1-sample", "bound_se"] > 0
    assert c.loc["T8-M4-pool-from32", "bound"] == 1.0  # every frame pooled in: all shown, nothing left to guess
    assert c.loc["T1-M1-pool", "bound_detail"] == 1.0 > c.loc["T1-M1-pool", "acc_detail"]  # the static detail
    for task in synth.TASKS:  # what a token carries a frame shows: the loss bound is under the ceiling's loss
        assert (c[f"bound_loss_{task}"] <= c[f"loss_{task}"] + 1e-9).all(), task
    assert c.loc["T8-M4-pool-from32", "bound_loss"] == 0.0 < c.loc["T1-M1-sample", "bound_loss"]
    assert c.loc["T1-M1-sample", "bound_loss_needle"] <= math.log(6) + 1e-12
    arms = c.reset_index()[["arm", "benchmark", "accuracy", "loss", *[f"acc_{t}" for t in synth.TASKS],
                            *[f"loss_{t}" for t in synth.TASKS]]]
    trained = pd.concat([arms.assign(seed=s) for s in (0, 1)])
    trained.loc[trained["arm"] == "T1-M1-sample", "acc_needle"] = 0.99  # an impossible arm: one frame rarely shows the flash
    trained.to_csv(tmp_path / "arms.csv", index=False)
    out = C.check(str(tmp_path / "arms.csv"), str(tmp_path / "c.csv"), str(tmp_path / "check"))
    df = pd.read_csv(tmp_path / "check/ceiling_check.csv")
    bad = df[~df["within"]]
    assert out["outside_bound"] == 1 and bad[["arm", "task"]].values.tolist() == [["T1-M1-sample", "needle"]]
    assert "T1-M1-sample | needle" in (tmp_path / "check/ceiling_check.md").read_text()
    # above the ceiling: by more than its own guessing's 2 SE (a ceiling of 1/4 on every count item is
    # a guess on each: 0.003 above it is not above it; the 0.99 needle is)
    above = df[~df["readable"]]
    assert above[["arm", "task"]].values.tolist() == [["T1-M1-sample", "needle"]]
    assert c.loc["T1-M1-sample", "accuracy_se_count"] > 0.01
    near = trained.copy()
    near.loc[near["arm"] == "T1-M1-sample", "acc_count"] = c.loc["T1-M1-sample", "acc_count"] + 0.003
    near.to_csv(tmp_path / "arms_near.csv", index=False)
    C.check(str(tmp_path / "arms_near.csv"), str(tmp_path / "c.csv"), str(tmp_path / "check_near"))
    assert pd.read_csv(tmp_path / "check_near/ceiling_check.csv").query("task == 'count'")["readable"].all()
    # the loss: the ceiling's own losses sit at or above the bound; an arm whose loss is far below it is flagged
    assert out["below_loss_bound"] == 0 and df["loss_within"].all() and (df["loss_gap"] >= -1e-9).all()
    noisy = trained.copy()
    noisy.loc[noisy["arm"] == "T1-M1-sample", "loss_needle"] = [0.20, 0.30]  # a needle read off one frame
    noisy.to_csv(tmp_path / "arms2.csv", index=False)
    out2 = C.check(str(tmp_path / "arms2.csv"), str(tmp_path / "c.csv"), str(tmp_path / "check2"))
    low = pd.read_csv(tmp_path / "check2/ceiling_check.csv").query("~loss_within")
    assert out2["below_loss_bound"] == 1 and low[["arm", "task"]].values.tolist() == [["T1-M1-sample", "needle"]]
    assert "Below the loss bound: 1 of" in (tmp_path / "check2/ceiling_check.md").read_text()
    c.drop(index="T1-M1-pool").reset_index().to_csv(tmp_path / "c2.csv", index=False)
    with pytest.raises(ValueError, match="T1-M1-pool"):
        C.check(str(tmp_path / "arms.csv"), str(tmp_path / "c2.csv"), str(tmp_path / "check"))


def test_the_workflows_table_and_figure_lists_are_the_reports():
    """analysis.smk lists the tables and figures without importing the plotting stack: the same
    names as visctx.report, or a table goes undeclared (Snakemake neither tracks nor reports it)."""
    import re
    from pathlib import Path

    from visctx import report as R

    text = (Path(__file__).resolve().parents[1] / "workflow/rules/analysis.smk").read_text()
    lists = {name: re.findall(r'"([a-z0-9_]+)"', re.search(rf"^{name} = \[(.*?)\]", text, re.S | re.M).group(1))
             for name in ("TABLES", "FIGURES")}
    assert lists == {"TABLES": list(R.TABLES), "FIGURES": list(R.FIGURES)}
