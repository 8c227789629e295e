"""Bad input gets a clear error, and nothing is lost (issue 6, item 1).

Broken videos are quarantined (path + reason) while the rest of the shard is decoded exactly as in
a clean run; a split losing too many videos stops; readers skip quarantined videos but not
unexplained ones; arms evaluated on different video sets are refused; truncated ``.npy``,
``.safetensors`` and checkpoint files are errors naming the file, not garbage.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from visctx.synth import write_mp4
from visctx.files import load_npy
from visctx.video import extract_shard
from tiny_llm import tiny_llm

SIZE, MAX_FRAMES = 16, 32
GOOD = ["a.mp4", "b.mp4", "c.mp4"]
BAD = ["missing.mp4", "empty.mp4", "truncated.mp4", "corrupt_middle.mp4"]


def _noise_clip(path, n_frames, seed):
    """Noise frames at 1 fps (32x32): every frame is a large, distinct H.264 frame, so bytes
    overwritten in the middle of the file land in frame data rather than in padding."""
    frames = np.random.default_rng(seed).integers(0, 256, (n_frames, 32, 32, 3), dtype=np.uint8)
    write_mp4(path, frames, fps=1)


def _corpus(path, videos):
    path.write_text(json.dumps([{"id": f"e{i}", "video": v, "question": "q", "options": ["x", "y"], "answer": 0}
                                for i, v in enumerate(videos)]))
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Good 40 s clips next to every kind of broken file, and a 2 s clip (32 frames requested)."""
    root = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(GOOD):
        _noise_clip(root / name, 40, seed=i)
    data = (root / "a.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    mid, junk = len(data) // 2, np.random.default_rng(7).integers(0, 256, len(data) // 8, dtype=np.uint8).tobytes()
    (root / "corrupt_middle.mp4").write_bytes(data[:mid] + junk + data[mid + len(junk):])
    _noise_clip(root / "short.mp4", 2, seed=9)
    return root


def test_extract_shard_quarantines_bad_videos_and_keeps_the_good_rows_intact(tmp_path, videos):
    """decord's failures, as measured: a missing or empty file is caught before decord; a file cut
    in half loses the index (moov atom at the end) -> ``RuntimeError`` at open; bytes overwritten
    in the middle open fine and fail in ``get_batch`` with ``DECORDError`` ("Error sending
    packet") -- it does not decode garbage silently here. Each is quarantined with its path."""
    clean = extract_shard(_corpus(tmp_path / "clean.json", GOOD), videos, 0, 1, tmp_path / "clean.npy",
                          tmp_path / "clean.json.out", max_frames=MAX_FRAMES, size=SIZE)
    assert clean["quarantined"] == [] and clean["short"] == []
    corpus = _corpus(tmp_path / "mixed.json", GOOD + BAD + ["short.mp4"])
    meta = extract_shard(corpus, videos, 0, 1, tmp_path / "mixed.npy", tmp_path / "mixed.json.out",
                         max_frames=MAX_FRAMES, size=SIZE)
    assert json.loads((tmp_path / "mixed.json.out").read_text()) == meta
    assert meta["videos"] == ["a.mp4", "b.mp4", "c.mp4", "short.mp4"]  # sorted, bad ones left out
    mixed, ref = np.load(tmp_path / "mixed.npy"), np.load(tmp_path / "clean.npy")
    assert mixed.shape == (4, MAX_FRAMES, SIZE, SIZE, 3)
    np.testing.assert_array_equal(mixed[:3], ref)  # finished work is exactly what a clean run gives
    reasons = {q["video"]: q["reason"] for q in meta["quarantined"]}
    assert sorted(reasons) == sorted(BAD)
    for q in meta["quarantined"]:
        assert q["path"] == str(videos / q["video"]) and q["path"] in q["reason"]
    assert "no such video file" in reasons["missing.mp4"]
    assert "empty (0 bytes)" in reasons["empty.mp4"]
    assert "could not open" in reasons["truncated.mp4"] and "RuntimeError" in reasons["truncated.mp4"]
    assert "decoding frames" in reasons["corrupt_middle.mp4"] and "DECORDError" in reasons["corrupt_middle.mp4"]
    assert meta["short"] == [{"video": "short.mp4", "path": str(videos / "short.mp4"), "frames_available": 2,
                              "frames_requested": MAX_FRAMES}]
    assert len({mixed[3, i].tobytes() for i in range(MAX_FRAMES)}) == 2  # forced: 2 frames repeated
    assert not list(tmp_path.glob(".*.tmp"))


def _shard_json(path, videos, quarantined=(), short=()):
    path.write_text(json.dumps({"videos": list(videos), "frames": 8, "size": 16, "fps": 1.0,
                                "quarantined": [{"video": v, "path": f"/root/{v}", "reason": f"/root/{v}: broken"}
                                                for v in quarantined],
                                "short": [{"video": v, "path": f"/root/{v}", "frames_available": 2,
                                           "frames_requested": 8} for v in short]}))
    return str(path)


def test_split_report_fails_above_max_quarantined_naming_paths_and_reasons(tmp_path):
    from visctx.quarantine import split_report, write_report

    shards = [_shard_json(tmp_path / "s0.json", [f"v{i}" for i in range(18)], ["bad0"], ["v3"]),
              _shard_json(tmp_path / "s1.json", [f"w{i}" for i in range(10)], ["bad1", "bad2"])]
    with pytest.raises(ValueError, match=r"split 'train': 3 of 31 videos \(9\.7%\).*max_quarantined=0\.05"
                                         r"(?s:.*)/root/bad0: /root/bad0: broken"):
        split_report(shards, "train", str(tmp_path / "train.json"), max_quarantined=0.05)
    assert not (tmp_path / "train.json").exists()  # nothing downstream can start on this split
    out = split_report(shards, "train", str(tmp_path / "train.json"), max_quarantined=0.1)
    assert out == {"split": "train", "videos": 31, "extracted": 28, "quarantined": 3, "short": 1}
    ev = split_report([_shard_json(tmp_path / "e0.json", ["e1"])], "eval", str(tmp_path / "eval.json"))
    assert ev["quarantined"] == 0
    summary = write_report([str(tmp_path / "train.json"), str(tmp_path / "eval.json")],
                           str(tmp_path / "quarantine.json"), str(tmp_path / "quarantine.tsv"))
    assert summary == {"train": {"quarantined": 3, "short": 1}, "eval": {"quarantined": 0, "short": 0}}
    report = json.loads((tmp_path / "quarantine.json").read_text())["splits"]
    assert [q["video"] for q in report["train"]["quarantined"]] == ["bad0", "bad1", "bad2"]
    with open(tmp_path / "quarantine.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["split"], r["status"], r["path"]) for r in rows] == [
        ("train", "quarantined", "/root/bad0"), ("train", "quarantined", "/root/bad1"),
        ("train", "quarantined", "/root/bad2"), ("train", "short", "/root/v3")]
    assert rows[0]["reason"] == "/root/bad0: broken"


def test_quarantine_cli_exits_with_the_error(tmp_path, capsys):
    from visctx.cli import main

    shard = _shard_json(tmp_path / "s.json", ["v0"], ["bad0"])
    assert main(["quarantine-split", "--frames-jsons", shard, "--split", "eval", "--out-json",
                 str(tmp_path / "q.json")]) == 1
    assert "split 'eval': 1 of 2 videos" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Truncated arrays, model files and checkpoints


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return len(data)


def _features(d, keys, quarantined=(), F=4, G=27, D=4, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).normal(size=(len(keys), F, G, G, D)).astype(np.float16)
    np.save(d / "shard-000.npy", x)
    (d / "shard-000.json").write_text(json.dumps({
        "videos": list(keys), "frames": F, "grid": G, "dim": D,
        "quarantined": [{"video": v, "path": f"/v/{v}", "reason": f"/v/{v}: decord could not open the video"}
                        for v in quarantined], "short": []}))
    return x


def test_truncated_feature_shard_is_an_error_naming_the_file(tmp_path):
    from visctx.features import FeatureStore

    x = _features(tmp_path / "f", ["v0", "v1"], quarantined=["v2"])
    store = FeatureStore(tmp_path / "f")
    assert store.quarantined == {"v2": "/v/v2: decord could not open the video"}
    np.testing.assert_array_equal(store.get("v1"), x[1])
    full = _truncate(tmp_path / "f" / "shard-000.npy", 0.7)
    with pytest.raises(ValueError, match=rf"shard-000.npy: truncated: {int(full * 0.7)} bytes, expected {full}"):
        FeatureStore(tmp_path / "f")
    (tmp_path / "f" / "shard-000.npy").write_bytes(b"\x93NUMPY\x01")
    with pytest.raises(ValueError, match="shard-000.npy: not a valid .npy file"):
        FeatureStore(tmp_path / "f")
    _features(tmp_path / "f", ["v0"])
    (tmp_path / "f" / "shard-000.json").write_text('{"videos": ["v0"], "fra')
    with pytest.raises(ValueError, match="shard-000.json: not valid JSON"):
        FeatureStore(tmp_path / "f")


def test_truncated_frame_shard_is_an_error_before_encoding(tmp_path):
    from visctx.features import encode_shard

    np.save(tmp_path / "frames.npy", np.zeros((2, 3, 54, 54, 3), np.uint8))
    (tmp_path / "frames.json").write_text(json.dumps({"videos": ["a", "b"], "frames": 3, "size": 54, "fps": 1.0}))
    full = _truncate(tmp_path / "frames.npy")
    with pytest.raises(ValueError, match=rf"frames.npy: truncated: {full // 2} bytes, expected {full}"):
        encode_shard(tmp_path / "frames.npy", tmp_path / "frames.json", tmp_path / "no-tower",
                     tmp_path / "out.npy", tmp_path / "out.json")
    assert not (tmp_path / "out.npy").exists()


def test_encode_carries_the_quarantine_over_even_for_an_all_bad_shard(tmp_path):
    from visctx.features import FeatureStore, build_tiny_vision_tower, encode_shard

    tower = build_tiny_vision_tower(tmp_path / "tower", hidden_size=8, num_layers=1, num_heads=1,
                                    intermediate_size=16)
    frames = {"s0": (["v0"], ["bad0"], ["v0"]), "s1": ([], ["bad1"], [])}  # s1: every video quarantined
    for name, (keys, bad, short) in frames.items():
        np.save(tmp_path / f"{name}.npy", np.zeros((len(keys), 2, 54, 54, 3), np.uint8))
        _shard_json(tmp_path / f"{name}.json", keys, bad, short)
        meta = encode_shard(tmp_path / f"{name}.npy", tmp_path / f"{name}.json", tower,
                            tmp_path / "f" / f"shard-{name[1]:0>3}.npy", tmp_path / "f" / f"shard-{name[1]:0>3}.json")
        assert [q["video"] for q in meta["quarantined"]] == bad and [s["video"] for s in meta["short"]] == short
    store = FeatureStore(tmp_path / "f")
    assert store.keys() == ["v0"] and sorted(store.quarantined) == ["bad0", "bad1"]
    assert [s["video"] for s in store.short] == ["v0"] and store.get("v0").shape == (2, 27, 27, 8)


def test_load_npy_matches_np_load_and_reads_empty_shards(tmp_path):
    a = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy"), a)
    np.save(tmp_path / "e.npy", np.zeros((0, 3, 4), np.uint8))  # every video of a shard quarantined
    assert load_npy(tmp_path / "e.npy").shape == (0, 3, 4)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_npy(tmp_path / "nope.npy")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from visctx.model import VideoModel
    from visctx.pretrained import load_llm

    d = tmp_path_factory.mktemp("model")
    llm_dir = tiny_llm(d, "what colour ?", max_frames=4, hidden_size=16, num_layers=1, num_heads=2,
                       num_kv_heads=1, intermediate_size=32)
    llm, tok = load_llm(llm_dir)
    return VideoModel(llm, tok, vision_dim=4).save(d / "m")


@pytest.mark.parametrize("which", ["projector.safetensors", "llm/model.safetensors"])
def test_truncated_safetensors_in_a_model_dir_is_an_error_naming_the_file(tmp_path, model_dir, which):
    import shutil

    from visctx.model import VideoModel

    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    VideoModel.load(d)  # the intact copy loads
    full = _truncate(d / which, 0.6)
    with pytest.raises(ValueError, match=rf"{which}: truncated: {int(full * 0.6)} bytes, expected {full}"):
        VideoModel.load(d)
    (d / which).write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match=rf"{which}: not a valid safetensors file"):
        VideoModel.load(d)
    assert (model_dir / which).stat().st_size > full * 0.6  # the original is untouched


def test_check_checkpoint_detects_truncated_and_empty_files(tmp_path):
    from visctx.model import check_checkpoint

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}, "global_step": 7, "loops": {"x": [1, 2]}}, ckpt)
    assert check_checkpoint(ckpt) == 7
    _truncate(ckpt)
    with pytest.raises(ValueError, match="last.ckpt: unreadable checkpoint, truncated"):
        check_checkpoint(ckpt)
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match=r"last.ckpt: checkpoint is empty \(0 bytes\)"):
        check_checkpoint(ckpt)
    with pytest.raises(ValueError, match="nope.ckpt: no such checkpoint"):
        check_checkpoint(tmp_path / "nope.ckpt")


# ---------------------------------------------------------------------------------------------
# Readers drop quarantined videos (the same ones for every arm) and refuse unexplained ones


def _train_records(videos):
    from visctx.data import TrainRecord

    return [TrainRecord(f"r{i}", v, (("<video>\nwhat colour ?", "red"),)) for i, v in enumerate(videos)]


def test_train_loader_skips_quarantined_videos_and_refuses_unexplained_ones(tmp_path, capsys):
    from visctx.config import Arm
    from visctx.data import train_loader
    from visctx.features import FeatureStore
    from visctx.model import PromptEncoder
    from visctx.pretrained import build_tokenizer

    _features(tmp_path / "f", ["v0", "v1"], quarantined=["bad"])
    store = FeatureStore(tmp_path / "f")
    corpus = tmp_path / "c.json"
    corpus.write_text(json.dumps([{"id": "x", "video": "v", "conversations": [
        {"from": "human", "value": "<video>\nwhat colour ?"}, {"from": "gpt", "value": "red"}]}]))
    enc = PromptEncoder(build_tokenizer([corpus], 4))
    records = _train_records(["v0", "bad", "v1", "bad", "v0"])
    loader = train_loader(records, store, enc, [Arm(1, 1, "pool")], batch_size=1, source="train.json")
    assert len(loader.dataset) == 3 and {r.video for r in loader.dataset.records} == {"v0", "v1"}
    assert next(iter(loader))["visual"].shape == (1, 1, 1, 4)
    assert "train.json: skipping 2 records of 1 quarantined videos (e.g. 'bad'" in capsys.readouterr().err
    with pytest.raises(KeyError, match="train.json: 1 videos have no cached features and were not quarantined"
                                       ".*'stray'"):
        train_loader(_train_records(["v0", "stray"]), store, enc, [Arm(1, 1, "pool")], 1, source="train.json")


def test_evaluation_items_of_quarantined_videos_are_dropped(tmp_path):
    from visctx.evaluate import _open

    _features(tmp_path / "f", ["v0", "v1"], quarantined=["bad"])
    ev = _corpus(tmp_path / "eval.json", ["v0", "bad", "v1"])
    items, store = _open(str(ev), str(tmp_path / "f"))
    assert [it.video for it in items] == ["v0", "v1"]
    _corpus(ev, ["v0", "gone"])
    with pytest.raises(KeyError, match="eval.json.*1 videos have no cached features.*'gone'"):
        _open(str(ev), str(tmp_path / "f"))


def test_collect_refuses_arms_evaluated_on_different_video_sets(tmp_path):
    from visctx.collect import collect
    from visctx.data import videos_sha

    assert videos_sha(["b", "a", "a"]) == videos_sha(["a", "b"]) != videos_sha(["a"])
    studies = {"tokens": {"frames": 1, "tokens": [1], "methods": ["pool"]}}
    arm = "T1-M1-pool"

    def write(name, arm_id, sha):
        p = tmp_path / name
        p.write_text(json.dumps({"arm": arm_id, "seed": 0, "benchmark": "synthetic", "n": 2, "loss": 1.0, "accuracy": 0.5,
                                 "videos_sha": sha}))
        return str(p)

    sha_all, sha_fewer = videos_sha(["v0", "v1"]), videos_sha(["v0"])
    evals = [write("a.json", arm, sha_all), write("b.json", "T1-M4-pool", sha_fewer)]
    with pytest.raises(ValueError, match=rf"arms {arm} and T1-M4-pool .*different video sets "
                                         rf"\(videos_sha {sha_all} vs {sha_fewer}\)"):
        collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))
    assert not (tmp_path / "arms.csv").exists()
    evals[1] = write("b.json", "T1-M4-pool", sha_all)
    assert collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))["arms"] == 2


def test_curves_name_a_missing_or_malformed_training_log(tmp_path):
    from visctx.collect import curves

    model = tmp_path / "arms/seed0/T1-M4-pool/model"
    model.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"T1-M4-pool/train/metrics\.csv"):
        curves([str(model)], str(tmp_path / "c.csv"))
    (model.parent / "train").mkdir()
    (model.parent / "train/metrics.csv").write_text("epoch,step,loss\n0,9,1.0\n")
    with pytest.raises(ValueError, match=r"metrics\.csv: expected columns step and train/loss"):
        curves([str(model)], str(tmp_path / "c.csv"))
    (model.parent / "train/metrics.csv").write_text("epoch,step,train/loss\n0,9,1.5\n0,19,1.25\n0,19,1.25\n")
    with pytest.raises(ValueError, match=r"metrics\.csv: step 19 logged twice"):
        curves([str(model)], str(tmp_path / "c.csv"))
    (model.parent / "train/metrics.csv").write_text("epoch,step,train/loss\n0,9,1.5\n0,19,1.25\n")
    base = tmp_path / "base/seed0/model"
    (base.parent / "train").mkdir(parents=True)
    (base.parent / "train/metrics.csv").write_text("epoch,step,train/loss\n0,9,2.0\n")
    assert curves([str(model), str(base)], str(tmp_path / "c.csv")) == {"runs": 2, "rows": 3}
    assert (tmp_path / "c.csv").read_text().splitlines() == [
        "run,seed,step,loss", "T1-M4-pool,0,10,1.5", "T1-M4-pool,0,20,1.25", "base,0,10,2.0"]
