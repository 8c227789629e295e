"""Determinism: one arm of the default study end to end (synthetic corpus -> mp4 -> frames ->
features -> tiny LLM -> shared base -> the arm's fine-tune -> evaluation), run twice with the same
seed, once here and once in a fresh interpreter with another hash seed, gives identical bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from visctx.config import Arm
from visctx.synth import TASKS

ARMS = [Arm(2, 9, "pool"), Arm(4, 4, "pool")]  # the base's mixture; the arm studied is ARMS[0]
SPLITS = ("train", "eval")


def pipeline(root: str | Path, seed: int = 0) -> None:
    """The study's stages, as its rules call them, at the smallest sizes that still run each."""
    from visctx.evaluate import evaluate
    from visctx.features import build_tiny_vision_tower, encode_shard
    from visctx.pretrained import build_tiny_llm
    from visctx.synth import make_corpus, render_shard
    from visctx.train import train
    from visctx.video import extract_shard

    r = Path(root)
    make_corpus(r / "corpus", n_train=6, n_eval=3, seed=seed, seconds=12, fps=2, size=108, max_side=6)
    build_tiny_vision_tower(r / "vision", image_size=54, patch_size=2, hidden_size=16, num_layers=1, num_heads=1,
                            intermediate_size=32, seed=seed)
    for split in SPLITS:
        render_shard(r / "corpus/videos.json", r / "videos", split, 0, 1, r / f"videos/{split}.json")
        extract_shard(r / f"corpus/{split}.json", r / "videos", 0, 1, r / f"frames/{split}/shard-000.npy",
                      r / f"frames/{split}/shard-000.json", fps=1.0, max_frames=8, size=54)
        encode_shard(r / f"frames/{split}/shard-000.npy", r / f"frames/{split}/shard-000.json", r / "vision",
                     r / f"features/{split}/shard-000.npy", r / f"features/{split}/shard-000.json", batch_size=16)
    build_tiny_llm(str(r / "llm"), [str(r / "corpus/train.json"), str(r / "corpus/eval.json")], max_frames=8,
                   hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32, seed=seed)
    common = dict(train_json=str(r / "corpus/train.json"), features_dir=str(r / "features/train"), batch_size=4,
                  lr=3e-3, warmup_steps=1, seed=seed, threads=1, progress_bar=False, ckpt_every=2)
    train(str(r / "base"), init=str(r / "llm"), arms=ARMS, steps=6, log_dir=str(r / "logs/base"), **common)
    arm = ARMS[0]
    train(str(r / f"arms/{arm.id}/model"), init=str(r / "base"), arms=[arm], steps=4,
          log_dir=str(r / f"arms/{arm.id}/train"), **common)
    evaluate(str(r / f"arms/{arm.id}/model"), str(r / "corpus/eval.json"), str(r / "features/eval"), arm,
             str(r / f"arms/{arm.id}/eval/synthetic.json"), batch_size=8)


def outputs(root: Path) -> dict[str, object]:
    """Every product compared: file bytes, tensors, and the JSONs without their paths (the roots
    differ); wall times live in ``*.timing.json`` sidecars, not in the results."""
    arm = ARMS[0].id
    out: dict[str, object] = {}
    for p in sorted(root.glob("videos/*/*.mp4")) + sorted(root.glob("frames/*/*.npy")) + \
            sorted(root.glob("features/*/*.npy")) + sorted(root.glob("corpus/*.json")):
        out[str(p.relative_to(root))] = p.read_bytes()
    for model in ("base", f"arms/{arm}/model"):
        for f in ("projector.safetensors", "llm/model.safetensors"):
            for k, v in load_file(str(root / model / f)).items():
                out[f"{model}/{f}:{k}"] = v
        summary = json.loads((root / model / "train_summary.json").read_text())
        out[f"{model}/train_summary"] = {k: v for k, v in summary.items() if k != "init"}  # a path: differs
    ev = json.loads((root / f"arms/{arm}/eval/synthetic.json").read_text())
    out["eval"] = {k: v for k, v in ev.items() if k != "model_dir"}  # no timings: those are sidecars
    return out


def test_one_arm_end_to_end_is_identical_across_runs(tmp_path):
    here, there = tmp_path / "a", tmp_path / "b"
    pipeline(here)
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONHASHSEED="12345",  # set and dict orders differ; the products must not
               PYTHONPATH=os.pathsep.join(filter(None, [str(tests.parent / "src"), str(tests),
                                                        os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", f"from test_determinism import pipeline; pipeline({str(there)!r})"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = outputs(here), outputs(there)
    assert a.keys() == b.keys()
    assert sum(k.endswith(".mp4") for k in a) == 9 and sum(k.endswith(".npy") for k in a) == 4
    differ = [k for k in a if not (torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k])]
    assert not differ, differ
    ev = a["eval"]
    assert ev["n"] == 3 * len(TASKS) and np.isfinite(ev["loss"]) and a[f"arms/{ARMS[0].id}/model/train_summary"]["steps"] == 4
