"""Exact resume: a training job interrupted at any step, even SIGKILLed through the CLI, ends with
the weights and losses of an uninterrupted run; a damaged checkpoint falls back to an older one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from test_train_eval import make_split
from visctx.config import Arm
from visctx.data import ArmBatchSampler
from visctx.pretrained import build_tiny_llm
from visctx.train import VideoLM, train

ARMS = [Arm(2, 4, "pool"), Arm(1, 9, "sample")]
ARGS = dict(batch_size=8, lr=3e-3, warmup_steps=2, seed=0, threads=1, progress_bar=False)  # 6 batches an epoch


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_split(root, "train", 48, np.random.default_rng(0))
    build_tiny_llm(root / "llm", [root / "train.json"], max_frames=4, hidden_size=16, num_layers=1, num_heads=2,
                   num_kv_heads=1, intermediate_size=32)
    return root


def run(root, name, steps, **kw):
    args = dict(ARGS, **kw)
    return train(str(root / name / "model"), str(root / "train.json"), str(root / "features/train"),
                 str(root / "llm"), ARMS, steps=steps, log_dir=str(root / name / "train"), **args)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {f"projector.{k}": v for k, v in load_file(str(model_dir / "projector.safetensors")).items()}
    out.update({f"llm.{k}": v for k, v in load_file(str(model_dir / "llm/model.safetensors")).items()})
    return out


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), \
        [k for k in wa if not torch.equal(wa[k], wb[k])]
    sa, sb = (json.loads((d / "train_summary.json").read_text()) for d in (a, b))
    for key in ("steps", "first_loss", "last_loss", "final_loss", "tokens", "pad_fraction"):
        assert sa[key] == sb[key], key  # the padding counts too: restored, not restarted at the resume
    assert sa["tokens"] > 0 and 0 <= sa["pad_fraction"] < 1


@pytest.fixture(scope="module")
def reference(root):
    """The uninterrupted runs the interrupted ones must reproduce."""
    return {steps: (run(root, f"full{steps}", steps, ckpt_every=3), root / f"full{steps}/model")
            for steps in (14, 300)}


@pytest.mark.parametrize("length_groups", [0, 2])
def test_sampler_started_at_step_k_yields_batches_k_onwards(length_groups):
    lengths = [int(x) for x in np.random.default_rng(4).integers(1, 60, 30)]
    for weights_ in (None, [0.7, 0.3]):
        def sampler(start=0):
            return ArmBatchSampler(30, ARMS, 4, seed=5, weights=weights_, start=start, lengths=lengths,
                                   length_groups=length_groups)

        full = [b for s in [sampler()] for _ in range(3) for b in s]  # 3 epochs of 7 batches
        assert len(full) == 21
        for k in range(len(full)):
            s = sampler(k)
            got = []
            while len(got) < len(full) - k:
                got += list(s)
            assert got == full[k:], k


def interrupt_at(monkeypatch, step):
    original = VideoLM.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == step:
            raise KeyboardInterrupt  # Lightning stops the run and keeps its checkpoints
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VideoLM, "training_step", crash)
    return original


@pytest.mark.parametrize("crash, ckpt_every", [(5, 3), (7, 6), (13, 4)])  # mid-epoch, on an epoch's end, twice
def test_interrupted_run_ends_as_an_uninterrupted_one(root, reference, monkeypatch, crash, ckpt_every):
    name = f"crash{crash}"
    original = interrupt_at(monkeypatch, crash)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(root, name, 14, ckpt_every=ckpt_every)
    monkeypatch.setattr(VideoLM, "training_step", original)
    s = run(root, name, 14, ckpt_every=ckpt_every)
    assert s["resumed"] and s["steps"] == 14
    assert_same_run(root / name / "model", reference[14][1])
    # the loss curve too: rows logged before the crash survive it (crash 13: the row of step 10 was
    # logged after checkpoint 8 and before checkpoint 12, from which the run resumes)
    assert curve(root / name / "model", root) == curve(reference[14][1], root)


def curve(model: Path, root: Path) -> list[tuple[int, float]]:
    from visctx.collect import curves

    run_dir = root / "curves/seed0" / model.parent.name  # the layout collect.curves reads
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model", "train"):
        if not (run_dir / name).exists():
            (run_dir / name).symlink_to(model.parent / name)
    out = run_dir / "curve.csv"
    curves([str(run_dir / "model")], str(out))
    table = pd.read_csv(out)
    assert len(table) >= 1
    return list(zip(table["step"], table["loss"]))


def test_damaged_last_checkpoint_falls_back_to_the_newest_readable_one(root, reference, monkeypatch, caplog):
    name = "damaged"
    original = interrupt_at(monkeypatch, 10)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(root, name, 14, ckpt_every=3)
    monkeypatch.setattr(VideoLM, "training_step", original)
    logs = root / name / "train"
    assert sorted(p.name for p in logs.glob("*.ckpt")) == ["last.ckpt", "step=6.ckpt", "step=9.ckpt"]
    data = (logs / "last.ckpt").read_bytes()
    (logs / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated: e.g. a full disk
    (logs / "step=9.ckpt").write_bytes(b"\0" * 100)  # overwritten
    with caplog.at_level("WARNING", logger="visctx.train"):
        s = run(root, name, 14, ckpt_every=3)
    warned = [r.getMessage() for r in caplog.records if r.name == "visctx.train"]
    assert len(warned) == 2 and all("unreadable checkpoint" in w and "\n" not in w for w in warned)
    assert any("last.ckpt" in w for w in warned) and any("step=9.ckpt" in w for w in warned)
    assert s["resumed"] and s["steps"] == 14  # from step 6
    assert_same_run(root / name / "model", reference[14][1])

    # nothing readable at all: a fresh start, still the same run
    original = interrupt_at(monkeypatch, 4)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(root, name, 14, ckpt_every=3)
    monkeypatch.setattr(VideoLM, "training_step", original)
    for p in logs.glob("*.ckpt"):
        p.write_bytes(b"garbage")
    s = run(root, name, 14, ckpt_every=3)
    assert not s["resumed"]
    assert_same_run(root / name / "model", reference[14][1])


def test_sigkilled_cli_job_resumes_to_the_uninterrupted_result(root, reference):
    """`visctx train` as the workflow runs it, SIGKILLed once its second step checkpoint exists
    (checkpoints rotate by then), wherever it is in its step or its saving."""
    steps, name = 300, "killed"
    out, logs = root / name / "model", root / name / "train"
    cmd = [sys.executable, "-m", "visctx", "train", "--out-dir", str(out), "--train-json", str(root / "train.json"),
           "--features-dir", str(root / "features/train"), "--init", str(root / "llm"),
           "--arms", *[a.id for a in ARMS], "--steps", str(steps), "--batch-size", "8", "--lr", "0.003",
           "--warmup-steps", "2", "--seed", "0", "--threads", "1", "--log-dir", str(logs), "--ckpt-every", "3",
           "--no-progress-bar"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                    os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (logs / "step=6.ckpt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and not out.exists()  # killed before it finished
    proc.stderr.close()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads((out / "train_summary.json").read_text())
    assert s["resumed"] and s["steps"] == steps
    assert_same_run(out, reference[steps][1])


def test_an_interrupted_run_is_not_resumed_on_other_inputs_at_the_same_path(root, monkeypatch, caplog):
    """The base retrained (or the corpus regenerated) at the same path after an arm was interrupted:
    the arm starts fresh with a one-line notice instead of continuing a checkpoint of the old."""
    import logging
    import shutil

    original = interrupt_at(monkeypatch, 5)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(root, "moved", 14, ckpt_every=3)
    monkeypatch.setattr(VideoLM, "training_step", original)
    assert list((root / "moved/train").glob("*.ckpt"))
    llm = root / "llm"
    backup = root / "llm.orig"
    shutil.copytree(llm, backup)
    try:  # the same path, other weights: a different initial model
        state = load_file(str(llm / "model.safetensors"))
        from safetensors.torch import save_file

        save_file({k: v + 0.01 for k, v in state.items()}, str(llm / "model.safetensors"))
        with caplog.at_level(logging.WARNING, logger="visctx.train"):
            s = run(root, "moved", 14, ckpt_every=3)
        assert not s["resumed"] and s["steps"] == 14
        assert "checkpoints of another run" in caplog.text
    finally:
        shutil.rmtree(llm)
        shutil.move(str(backup), str(llm))


def test_a_run_with_other_settings_is_not_resumed(root, monkeypatch):
    original = interrupt_at(monkeypatch, 5)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(root, "clip", 14, ckpt_every=3)
    monkeypatch.setattr(VideoLM, "training_step", original)
    s = run(root, "clip", 14, ckpt_every=3, gradient_clipping=1.0)  # not in the old path-only key
    assert not s["resumed"]


def test_the_options_object_is_what_a_run_resumes_on():
    """TrainOptions is the one schema: every field but how a run is watched and checkpointed keys
    the resume (a new field cannot be forgotten there), and a misspelt option is refused by name."""
    import dataclasses

    from visctx.train import TrainOptions

    o = TrainOptions.of(steps=4, batch_size=2, lr=1e-3, warmup_steps=0, seed=0, threads=1)
    assert set(o.run_config()) == {f.name for f in dataclasses.fields(TrainOptions)} - {"progress_bar", "ckpt_every"}
    assert TrainOptions.of(o, gradient_clipping=1.0).run_config() != o.run_config()
    assert TrainOptions.of(o, progress_bar=False, ckpt_every=1).run_config() == o.run_config()
    with pytest.raises(TypeError, match="unknown training option.*gradient_clip\\b"):
        TrainOptions.of(o, gradient_clip=1.0)
