"""decord reading: frame selection, colours, every failure mode as VideoError, frame shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from visctx.context import uniform_indices
from visctx.synth import PALETTE, write_mp4
from visctx.video import (VideoError, corpus_videos, extract_shard, frame_indices, read_frames,
                          read_video, shard_slice)

COLOURS = list(PALETTE.values())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames at 2 fps, 32x32, frame j a solid palette colour j % 6."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    frames = np.stack([np.full((32, 32, 3), COLOURS[j % 6], np.uint8) for j in range(12)])
    write_mp4(path, frames, fps=2)
    return path


def test_frame_indices_one_fps_from_two_fps():
    assert frame_indices(64, 2.0) == list(range(0, 64, 2))


def test_frame_indices_subsample_uniformly():
    idx = frame_indices(128, 2.0, fps=1.0, max_frames=8)  # 64 one-second timestamps
    assert idx == [2 * i for i in uniform_indices(64, 8)]
    assert frame_indices(100, 25.0, fps=1.0, max_frames=None) == [0, 25, 50, 75]


def test_frame_indices_forced_repeat_for_short_videos():
    idx = frame_indices(10, 2.0, fps=1.0, max_frames=8)  # 5 timestamps -> 8 by repetition
    assert len(idx) == 8 and idx == sorted(idx)
    assert set(idx) == {0, 2, 4, 6, 8}


def test_frame_indices_all_native_frames_and_rounding():
    assert frame_indices(6, 2.0, fps=None, max_frames=None) == list(range(6))
    assert frame_indices(6, 2.0, fps=0, max_frames=3) == [1, 3, 5]
    # 29.97 fps, 3.003 s: t = 0..3 -> round(t * 29.97) = 0, 30, 60, 90 -> clamped to the last frame
    assert frame_indices(90, 29.97, fps=1.0, max_frames=None) == [0, 30, 60, 89]


def test_read_frames_returns_the_right_colours_in_request_order(clip):
    idx = [7, 0, 3, 3]
    frames = read_frames(clip, idx, size=16)
    assert frames.shape == (4, 16, 16, 3) and frames.dtype == np.uint8
    for f, j in zip(frames, idx):
        np.testing.assert_allclose(f.reshape(-1, 3).mean(0), COLOURS[j % 6], atol=12)


def test_read_video_selects_one_frame_per_second(clip):
    frames, idx = read_video(clip, fps=1.0, max_frames=6, size=8)
    assert idx == [0, 2, 4, 6, 8, 10] and frames.shape == (6, 8, 8, 3)


def test_widths_decord_cannot_copy_still_decode(tmp_path, clip):
    """decord 0.6 fails on output widths 4, 6, 8, 12, 16, 24, 48, 72; video.py works around it."""
    frames = read_frames(clip, [1, 2], size=48)
    assert frames.shape == (2, 48, 48, 3)
    np.testing.assert_allclose(frames[0].reshape(-1, 3).mean(0), COLOURS[1], atol=12)
    native = tmp_path / "w48.mp4"
    write_mp4(native, np.stack([np.full((48, 48, 3), COLOURS[2], np.uint8)] * 4), fps=2)
    frames, idx = read_video(native, fps=1.0, max_frames=2, size=None)
    assert frames.shape == (2, 48, 48, 3) and idx == [0, 2]
    np.testing.assert_allclose(frames.reshape(-1, 3).mean(0), COLOURS[2], atol=12)


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated_end", "truncated_front",
                                  "corrupt_middle"])
def test_broken_files_raise_video_error_naming_the_file(tmp_path, clip, kind):
    path = tmp_path / f"{kind}.mp4"
    data = clip.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated_end":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_front":
        path.write_bytes(data[len(data) // 2:])
    elif kind == "corrupt_middle":  # opens fine, then decoding fails (DECORDError, not RuntimeError)
        junk = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
        path.write_bytes(data[:48] + junk + data[248:])
    with pytest.raises(VideoError, match=kind):
        read_frames(path, [0, 1], size=16)


def test_index_past_the_end_raises_video_error(clip):
    with pytest.raises(VideoError, match="clip.mp4.*12"):
        read_frames(clip, [0, 12])


def test_video_error_is_a_value_error():
    assert issubclass(VideoError, ValueError)


def test_shard_slice_is_contiguous_and_covers():
    items = list(range(10))
    parts = [shard_slice(items, 3, i) for i in range(3)]
    assert sum(parts, []) == items and [len(p) for p in parts] == [3, 3, 4]
    assert shard_slice(items[:2], 4, 0) == []
    with pytest.raises(ValueError, match="shard 3"):
        shard_slice(items, 3, 3)


def _train_record(i, video):
    return {"id": f"r{i}", "video": video, "conversations": [{"from": "human", "value": "<video>\nq"},
                                                            {"from": "gpt", "value": "a"}]}


def test_extract_shard_writes_frames_and_index(tmp_path, clip):
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    for name in ("x.mp4", "y.mp4", "z.mp4"):
        (root / "a" / name).write_bytes(clip.read_bytes())
    corpus = tmp_path / "train.json"
    corpus.write_text(json.dumps([_train_record(i, v) for i, v in
                                  enumerate(["a/z.mp4", "a/x.mp4", "a/x.mp4", "a/y.mp4"])]))
    assert corpus_videos(corpus) == ["a/x.mp4", "a/y.mp4", "a/z.mp4"]
    rows = []
    for shard in range(2):
        meta = extract_shard(corpus, root, shard, 2, tmp_path / f"s{shard}.npy", tmp_path / f"s{shard}.json",
                             fps=1.0, max_frames=8, size=16)
        arr = np.load(tmp_path / f"s{shard}.npy")
        assert arr.shape == (len(meta["videos"]), 8, 16, 16, 3) and arr.dtype == np.uint8
        assert json.loads((tmp_path / f"s{shard}.json").read_text()) == meta
        rows += meta["videos"]
    assert rows == ["a/x.mp4", "a/y.mp4", "a/z.mp4"] and meta["frames"] == 8 and meta["size"] == 16
    # forced sampling: 6 one-second frames repeated up to 8
    np.testing.assert_allclose(arr[0, 0].reshape(-1, 3).mean(0), COLOURS[0], atol=12)


def test_extract_shard_eval_format_and_errors(tmp_path, clip):
    corpus = tmp_path / "eval.json"
    corpus.write_text(json.dumps([{"id": "e0", "video": "c.mp4", "question": "q", "options": list("abcd"),
                                   "answer": 0}, {"id": "e1", "question": "q"}]))
    with pytest.raises(ValueError, match=r"eval.json: record 1 \(id='e1'\)"):
        corpus_videos(corpus)
    corpus.write_text(json.dumps([{"id": "e0", "video": "c.mp4", "question": "q", "options": list("abcd"),
                                   "answer": 0}]))
    meta = extract_shard(corpus, tmp_path, 0, 1, tmp_path / "f.npy", tmp_path / "f.json", max_frames=4, size=8)
    assert meta["videos"] == [] and meta["quarantined"][0]["video"] == "c.mp4"  # the missing video is left out
    assert np.load(tmp_path / "f.npy").shape == (0, 4, 8, 8, 3) and not list(tmp_path.glob("*.tmp"))
    (tmp_path / "c.mp4").write_bytes(clip.read_bytes())
    meta = extract_shard(corpus, tmp_path, 0, 1, tmp_path / "f.npy", tmp_path / "f.json", max_frames=4, size=8)
    assert meta["videos"] == ["c.mp4"] and np.load(tmp_path / "f.npy").shape == (1, 4, 8, 8, 3)
