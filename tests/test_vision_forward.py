"""model.vision_features: forward -- the tower inside the model, frozen or trainable.

The paper preset cannot cache 27x27x1152 grids per frame, so its arms read frames and the model's
own tower encodes them; the same operators then cut (T, M). These tests pin that path to the
cached one (same context up to the cache's float16) and check what frozen and trainable mean.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from visctx.config import Arm, ParamsError, load_params
from visctx.data import ChoiceCollator, TrainCollator, TrainDataset, load_train_records
from visctx.evaluate import evaluate
from visctx.features import (FeatureStore, FrameStore, VisionEncoder, build_tiny_vision_tower, encode_shard,
                             open_store)
from visctx.model import PromptEncoder, VideoModel
from visctx.pretrained import build_tiny_llm, load_llm
from visctx.train import train

F, S = 4, 54
COLOURS = ["red", "green", "blue", "yellow"]
ARMS = [Arm(2, 4, "pool"), Arm(1, 9, "sample"), Arm(2, 9, "sample", pooled_from=4), Arm(1, 49, "pool", 2)]


def write_split(root, split, n, rng):
    """Frames tinted by a colour (what the question asks), their frame shard, the cached features."""
    frames = rng.integers(0, 60, size=(n, F, S, S, 3), dtype=np.uint8)
    keys, train_recs, eval_recs = [], [], []
    for i in range(n):
        c = int(rng.integers(4))
        frames[i, ..., c % 3] += np.uint8(120 + 60 * (c // 3))
        key = f"{split}/v{i:03d}.mp4"
        keys.append(key)
        train_recs.append({"id": f"{split}{i}", "video": key, "conversations": [
            {"from": "human", "value": "<video>\nwhat color is it ?"}, {"from": "gpt", "value": COLOURS[c]}]})
        eval_recs.append({"id": f"{split}{i}", "video": key, "question": "what color is it ?",
                          "options": COLOURS, "answer": c, "task_type": "color"})
    d = root / "frames" / split
    d.mkdir(parents=True)
    np.save(d / "shard-000.npy", frames)
    (d / "shard-000.json").write_text(json.dumps({"videos": keys, "frames": F, "size": S, "fps": 1.0}))
    (root / "features" / split).mkdir(parents=True)
    encode_shard(d / "shard-000.npy", d / "shard-000.json", root / "vision", root / "features" / split / "shard-000.npy",
                 root / "features" / split / "shard-000.json")
    (root / f"{split}.json").write_text(json.dumps(train_recs if split == "train" else eval_recs))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    build_tiny_vision_tower(root / "vision", image_size=S, patch_size=2, hidden_size=16, num_layers=2, num_heads=1,
                            intermediate_size=32)
    rng = np.random.default_rng(0)
    write_split(root, "train", 24, rng)
    write_split(root, "eval", 8, rng)
    build_tiny_llm(root / "llm", [root / "train.json", root / "eval.json"], max_frames=F, hidden_size=32,
                   num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)
    return root


def run(root, out, visual="frames", init=None, steps=3, **kw):
    args = dict(batch_size=4, lr=3e-3, warmup_steps=0, seed=0, threads=1, progress_bar=False)
    args.update(kw)
    return train(str(root / out), str(root / "train.json"), str(root / visual / "train"), str(init or root / "llm"),
                 [ARMS[0]], steps=steps, log_dir=str(root / out / "logs"), **args)


def tower_state(path):
    return {k: v.clone() for k, v in VisionEncoder.load(path).tower.state_dict().items()}


def test_open_store_tells_frames_from_features(setup, tmp_path):
    assert isinstance(open_store(setup / "frames" / "train"), FrameStore)
    assert isinstance(open_store(setup / "features" / "train"), FeatureStore)
    assert open_store(setup / "frames" / "train").get("train/v000.mp4").shape == (F, S, S, 3)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "shard-000.npy", np.zeros((1, F, S, S, 3), np.uint8))
    (bad / "shard-000.json").write_text(json.dumps({"videos": ["a.mp4"], "frames": F}))
    with pytest.raises(ValueError, match=r"shard-000.json: no key 'size'"):
        FrameStore(bad)
    with pytest.raises(FileNotFoundError, match="no feature or frame shards"):
        open_store(tmp_path / "missing")


@pytest.mark.parametrize("arm", ARMS, ids=[a.id for a in ARMS])
def test_the_tower_in_the_forward_gives_the_cached_context(setup, arm):
    """Frames through the model's tower + operators == the cached grids through the same operators,
    up to the cache's float16; and so the loss."""
    llm, tok = load_llm(setup / "llm")
    vision = VisionEncoder.load(setup / "vision")
    model = VideoModel(llm, tok, vision.dim, vision=vision).eval()
    enc = PromptEncoder(tok)
    records = load_train_records(setup / "train.json")[:4]
    items = [(p, r.video, arm) for p, r in zip(TrainDataset(records, enc).prompts, records)]
    from_frames = TrainCollator(FrameStore(setup / "frames" / "train"), enc)(items)
    from_cache = TrainCollator(FeatureStore(setup / "features" / "train"), enc)(items)
    assert from_frames["frames"].dtype == torch.uint8 and from_frames["arm"] == arm.id
    assert from_frames["frames"].shape == (4, arm.frames, S, S, 3)
    with torch.no_grad():
        got = model.visual_tokens(from_frames)
        want = from_cache["visual"]
        assert got.shape == want.shape == (4, arm.T, arm.M, vision.dim)
        torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
        assert not torch.equal(got, want)  # really computed here, not read from the cache
        model.vision = None  # the same model on the cache
        cached_loss = model(from_cache)
        model.vision = vision
        torch.testing.assert_close(model(from_frames), cached_loss, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("arm", [Arm(2, 9, "mask"), Arm(2, 4, "tubetrain")], ids=lambda a: a.id)
def test_the_tower_in_the_forward_masks_as_the_cache(setup, arm):
    """Random masking after the tower: the same videos' seeds as on the cache, masked in training
    (the model in train mode), a *train arm pooled in evaluation."""
    llm, tok = load_llm(setup / "llm")
    vision = VisionEncoder.load(setup / "vision")
    model = VideoModel(llm, tok, vision.dim, vision=vision)
    enc = PromptEncoder(tok)
    records = load_train_records(setup / "train.json")[:3]
    items = [(p, r.video, arm) for p, r in zip(TrainDataset(records, enc).prompts, records)]
    from_frames = TrainCollator(FrameStore(setup / "frames" / "train"), enc)(items)
    cached = FeatureStore(setup / "features" / "train")
    tol = dict(rtol=2e-3, atol=2e-3)
    with torch.no_grad():
        got = model.train().visual_tokens(from_frames)
        want = TrainCollator(cached, enc)(items)["visual"]
        torch.testing.assert_close(got, want, atol=tol["atol"] * float(want.abs().max()), rtol=tol["rtol"])
        got = model.eval().visual_tokens(from_frames)
        want = ChoiceCollator(cached, enc, arm)([(enc.choice_prompt("what color is it ?", COLOURS, 0), r.video, i)
                                                for i, r in enumerate(records)])["visual"]
        torch.testing.assert_close(got, want, atol=tol["atol"] * float(want.abs().max()), rtol=tol["rtol"])


def test_frozen_tower_trains_the_rest_and_round_trips(setup):
    summary = run(setup, "frozen", vision_tower=str(setup / "vision"))
    assert summary["vision"] == "frozen" and summary["steps"] == 3
    model_dir = setup / "frozen"
    assert json.loads((model_dir / "model.json").read_text())["vision"] == {"layer": -2, "trainable": False}
    before, after = tower_state(setup / "vision"), tower_state(model_dir / "vision")
    assert all(torch.equal(before[k], after[k]) for k in before)
    model = VideoModel.load(model_dir)
    assert model.vision is not None and not model.vision.trainable and not model.vision.tower.training
    assert not any(p.requires_grad for p in model.vision.parameters())
    out = evaluate(str(model_dir), str(setup / "eval.json"), str(setup / "frames" / "eval"), ARMS[0],
                   str(setup / "frozen_eval.json"), batch_size=4)
    assert out["n"] == 8 and np.isfinite(out["loss"])
    with pytest.raises(ValueError, match="own vision tower cannot be evaluated on features"):
        evaluate(str(model_dir), str(setup / "eval.json"), str(setup / "features" / "eval"), ARMS[0],
                 str(setup / "x.json"), batch_size=4)


def test_trainable_tower_is_trained_and_can_be_frozen_again(setup):
    summary = run(setup, "trainable", vision_tower=str(setup / "vision"), vision_trainable=True)
    assert summary["vision"] == "trainable"
    before, after = tower_state(setup / "vision"), tower_state(setup / "trainable" / "vision")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2  # the whole tower moved, not just a bias
    model = VideoModel.load(setup / "trainable")
    assert model.vision.trainable and all(p.requires_grad for p in model.vision.parameters())
    # continuing from it with a frozen tower (e.g. a trainable base, frozen arms) keeps the tower
    summary = run(setup, "refrozen", init=setup / "trainable", steps=2)
    assert summary["vision"] == "frozen"
    again = tower_state(setup / "refrozen" / "vision")
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_mismatched_inputs_are_named(setup):
    run(setup, "cached", visual="features", steps=1)  # a model on the feature cache: no tower of its own
    with pytest.raises(ValueError, match="vision_trainable.*holds cached features"):
        run(setup, "bad1", visual="features", vision_trainable=True)
    with pytest.raises(ValueError, match="holds frames.*--vision-tower"):
        run(setup, "bad2")
    with pytest.raises(ValueError, match="without its own vision tower cannot train on frames"):
        run(setup, "bad3", init=setup / "cached")


def test_params_refuse_a_trainable_cached_tower():
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    with pytest.raises(ParamsError, match="model.vision_trainable=true.*vision_features=forward"):
        load_params(params, {"model": {"vision_trainable": True}})
    resolved = load_params(params, {"model": {"vision_trainable": True, "vision_features": "forward"}})
    assert resolved["model"]["vision_trainable"] is True


def test_a_trainable_tower_is_checkpointed_with_the_llm(setup):
    """train.scale.gradient_checkpointing covers a trainable tower: its layers run again in the
    backward (our layer loop goes through transformers' checkpointing layers), same gradients."""
    from visctx.strategy import set_checkpointing

    vision = VisionEncoder.load(setup / "vision", trainable=True).train()
    frames = torch.from_numpy(FrameStore(setup / "frames" / "train").get("train/v000.mp4")[:2].copy())
    calls = []
    tower = getattr(vision.tower, "vision_model", vision.tower)
    # transformers checkpoints a layer's forward (its own hooks stay outside) and torch stops the
    # recompute once it has what the backward needs: count entries into the layer's first norm
    hooks = [layer.layer_norm1.register_forward_pre_hook(lambda *a: calls.append(1)) for layer in tower.encoder.layers]

    def grads(on):
        set_checkpointing(vision.tower, on)
        vision.zero_grad()
        calls.clear()
        vision(frames).square().mean().backward()
        return len(calls), {n: p.grad.clone() for n, p in vision.named_parameters() if p.grad is not None}

    plain_calls, plain = grads(False)
    ckpt_calls, ckpt = grads(True)
    for h in hooks:
        h.remove()
    assert plain_calls == vision._idx and ckpt_calls == 2 * vision._idx  # recomputed in the backward
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n])


def test_the_stats_are_encoded_on_this_ranks_gpu(monkeypatch):
    from visctx.train import local_device

    assert local_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert local_device("gpu", {"LOCAL_RANK": "3"}) == torch.device("cuda", 3)
    assert local_device("auto", {"SLURM_LOCALID": "5"}) == torch.device("cuda", 1)
    assert local_device("gpu", {}) == torch.device("cuda", 0) and local_device("cpu", {}).type == "cpu"
