"""The synthetic corpus: determinism, heavy-tailed graded facts, and that the mp4 keeps them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from visctx import synth
from visctx.video import read_video


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    synth.make_corpus(root, n_train=6, n_eval=6, seed=3)
    for split in ("train", "eval"):
        for shard in range(2):
            synth.render_shard(root / "videos.json", root / "videos", split, shard, 2,
                               root / f"manifest-{split}-{shard}.json")
    return root


def _load(root, name):
    return json.loads((root / name).read_text())


def _specs(root):
    return {v["video"]: v for v in _load(root, "videos.json")["videos"]}


def test_same_seed_same_corpus_different_seed_differs(tmp_path):
    for d, seed in (("a", 1), ("b", 1), ("c", 2)):
        synth.make_corpus(tmp_path / d, n_train=5, n_eval=3, seed=seed)
    for name in ("train.json", "eval.json", "videos.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_a_larger_corpus_extends_a_smaller_one(tmp_path):
    synth.make_corpus(tmp_path / "s", n_train=3, n_eval=2, seed=0)
    synth.make_corpus(tmp_path / "l", n_train=5, n_eval=4, seed=0)
    small, large = _load(tmp_path / "s", "train.json"), _load(tmp_path / "l", "train.json")
    assert large[:len(small)] == small


def test_same_spec_renders_identical_video(tmp_path, corpus):
    data = synth.load_videos_json(corpus / "videos.json")
    spec = data["videos"][0]
    synth.write_mp4(tmp_path / "again.mp4", synth.render_frames(spec), spec["fps"])
    first = corpus / "videos" / spec["video"]
    a, _ = read_video(first)
    b, _ = read_video(tmp_path / "again.mp4")
    np.testing.assert_array_equal(a, b)
    assert hashlib.md5(first.read_bytes()).digest() == hashlib.md5((tmp_path / "again.mp4").read_bytes()).digest()


def test_every_colour_survives_the_mp4_round_trip(corpus):
    """decord at 1 fps and the encoder's size: every object's colour reads back from its cells."""
    specs = _specs(corpus)
    for key, spec in specs.items():
        frames, _ = read_video(corpus / "videos" / key, fps=1.0, size=54)
        assert frames.shape[0] == spec["seconds"]
        got = synth.oracle_colours(frames, spec)
        assert got == [t["colour"] for t in synth.objects(spec)], key


def test_sizes_and_durations_are_heavy_tailed():
    sides, durs = [], []
    for i in range(300):
        for t in synth.objects(synth.scene_spec(f"v{i}", np.random.default_rng(i))):
            sides.append(t["side"])
            durs += [d for _, d in t["shows"]] if t["task"] != "detail" else []
    sides, durs = np.array(sides), np.array(durs)
    assert set(sides) == set(range(1, 9)) and set(durs) == set(range(1, 9))  # every scale occurs
    counts = np.bincount(sides)[1:]
    assert (np.diff(counts[:6]) < 0).all() and counts[0] > 4 * counts[-1]  # many small, few large
    assert (durs == 1).mean() > 0.3 and (durs >= 6).mean() > 0.03


def test_every_object_lies_in_its_tasks_zone():
    """The layout names each square's role (the needle and the pair's squares look alike): every
    object inside its task's zone, the zones disjoint, every zone used at every side."""
    zones = synth.zones(27)
    cover = np.zeros((27, 27), int)
    for r0, r1, c0, c1 in zones.values():
        cover[r0:r1, c0:c1] += 1
    assert cover.max() == 1 and (cover == 0).sum() == 2 * 9  # disjoint; the gutter column of two bands
    seen = set()
    for i in range(200):
        for t in synth.objects(synth.scene_spec(f"v{i}", np.random.default_rng(i))):
            r0, r1, c0, c1 = zones[t["task"]]
            r, c, side = *t["cell"], t["side"]
            assert r0 <= r and r + side <= r1 and c0 <= c and c + side <= c1, (i, t)
            seen.add((t["task"], side))
    assert {s for task, s in seen if task == "order"} == set(range(1, 9))


def test_scene_geometry_and_timing():
    for i in range(100):
        spec = synth.scene_spec(f"v{i}", np.random.default_rng(100 + i))
        things = synth.objects(spec)
        taken = np.zeros((27, 27), int)
        for t in things:
            for s, d in t["shows"]:
                assert 0 <= s and d >= 1 and s + d <= spec["seconds"]
            if not (t["task"] == "episodic" and t["which"] > 0):  # the episodes share one place
                r, c, side = *t["cell"], t["side"]
                assert not taken[max(0, r - 1):r + side + 1, max(0, c - 1):c + side + 1].any()  # 1-cell gap
                taken[r:r + side, c:c + side] = 1
        shows = spec["count"]["shows"]
        assert len(shows) == spec["count"]["n"] and all(b[0] >= a[0] + a[1] + 1 for a, b in zip(shows, shows[1:]))
        a, b = spec["order"]
        assert a["shows"][0][0] + a["shows"][0][1] < b["shows"][0][0] + 1  # A ends before B starts
        eps = spec["episodic"]["episodes"]
        assert all(y["shows"][0][0] >= x["shows"][0][0] + x["shows"][0][1] for x, y in zip(eps, eps[1:]))
        assert len({e["colour"] for e in eps}) == 3


def test_eval_records_are_valid_multiple_choice(corpus):
    specs = _specs(corpus)
    records = _load(corpus, "eval.json")
    assert len(records) == 6 * len(synth.TASKS)
    for rec in records:
        spec = specs[rec["video"]]
        opts = rec["options"]
        assert len(opts) == 4 == len(set(opts))
        assert opts[rec["answer"]] == synth.answer(spec, rec["task_type"])
        assert all(o in synth.answer_space(rec["task_type"], spec) for o in opts)
        if rec["task_type"] == "order":  # the other colour of the pair is always offered
            assert spec["order"][1]["colour"] in opts
        if rec["task_type"] == "episodic":  # the question names c2; the answer is c1
            c2 = spec["episodic"]["episodes"][1]["colour"]
            assert c2 in rec["question"] and c2 not in opts


def test_train_records_and_vocabulary(corpus):
    specs = _specs(corpus)
    records = _load(corpus, "train.json")
    assert len(records) == 6 * len(synth.TASKS)
    vocab = set(synth.vocabulary())
    for rec in records:
        human, gpt = rec["conversations"]
        assert human["value"].startswith("<video>\n")
        assert gpt["from"] == "gpt" and gpt["value"] == synth.answer(specs[rec["video"]], rec["task_type"])
        assert set(human["value"].removeprefix("<video>\n").split()) <= vocab and gpt["value"] in vocab
    last_words = {q.split()[-1] for q in synth.QUESTIONS.values()}
    assert len(last_words) == len(synth.QUESTIONS)  # a type-specific last token


def test_train_and_eval_are_different_videos(corpus):
    train = {r["video"] for r in _load(corpus, "train.json")}
    evals = {r["video"] for r in _load(corpus, "eval.json")}
    assert train and evals and not train & evals
    specs = _specs(corpus)
    strip = lambda s: json.dumps({k: v for k, v in s.items() if k not in ("video", "split")}, sort_keys=True)
    assert not {strip(specs[k]) for k in train} & {strip(specs[k]) for k in evals}


def test_render_shard_manifests_cover_the_split(corpus):
    keys = []
    for shard in range(2):
        m = _load(corpus, f"manifest-train-{shard}.json")
        assert m["split"] == "train" and m["shard"] == shard
        keys += m["videos"]
    assert keys == sorted(k for k in _specs(corpus) if k.startswith("train/"))
    assert not list((corpus / "videos").rglob("*.tmp"))


def test_failed_write_leaves_no_file(tmp_path):
    bad = np.zeros((2, 7, 7), np.uint8)  # not RGB frames
    with pytest.raises(Exception):
        synth.write_mp4(tmp_path / "x.mp4", bad, 2)
    assert list(tmp_path.iterdir()) == []


def test_bad_geometry_is_refused(tmp_path):
    with pytest.raises(ValueError, match="even multiple of grid"):
        synth.make_corpus(tmp_path, 1, 1, seed=0, size=100)
    with pytest.raises(ValueError, match="do not fit"):
        synth.make_corpus(tmp_path, 1, 1, seed=0, seconds=6)
    with pytest.raises(ValueError, match="max_side=20"):
        synth.make_corpus(tmp_path, 1, 1, seed=0, max_side=20)


def test_yuv420p_is_exact_bt601_with_block_mean_chroma():
    """The planes the encoder gets: BT.601 limited range in integers, chroma from each 2x2 block's
    mean (hand-computed values), the layout PyAV's yuv420p frames take."""
    frames = np.zeros((1, 2, 4, 3), np.uint8)
    frames[0, :, :2] = (255, 255, 255)       # left block white
    frames[0, 0, 2:] = (255, 0, 0)           # right block: half red, half black
    planes = synth.rgb_to_yuv420p(frames)
    assert planes.shape == (1, 3, 4)
    y, u, v = planes[0, :2], planes[0, 2, :2], planes[0, 2, 2:]
    assert y.tolist() == [[235, 235, 82, 82], [235, 235, 16, 16]]
    # right block mean RGB (127.5, 0, 0): U = 128 - 38 * 127.5 / 256 = 109.07, V = 128 + 112 * 127.5 / 256 = 183.78
    assert u.tolist() == [128, 109] and v.tolist() == [128, 184]
    import av
    frame = av.VideoFrame.from_ndarray(planes[0], format="yuv420p")
    assert (frame.width, frame.height) == (4, 2)
    with pytest.raises(ValueError, match="even frame size"):
        synth.rgb_to_yuv420p(np.zeros((1, 3, 4, 3), np.uint8))
