"""The throughput benchmark on a microscopic model: it runs the real training step and its
arithmetic (tokens/s, FLOPs per token, MFU) is consistent. Speed itself is never asserted."""

import json

import pytest
import torch

from visctx.throughput import flops_per_token, throughput
from tiny_llm import tiny_llm


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return tiny_llm(tmp_path_factory.mktemp("llm"), "what happens in the video yes", max_frames=8)


def test_flops_per_token_is_the_standard_estimate():
    assert flops_per_token(1000, 2, 64, 100) == 6 * 1000 + 12 * 2 * 64 * 100


@pytest.mark.parametrize("checkpointing", [False, True])
def test_reports_a_consistent_measurement(llm_dir, tmp_path, checkpointing):
    out = tmp_path / "tp.json"
    r = throughput(str(llm_dir), T=3, M=4, vision_dim=8, batch_size=2, steps=2, warmup=1, device="cpu",
                   dtype="fp32", gradient_checkpointing=checkpointing, peak_tflops=1.0, threads=1,
                   out_json=str(out))
    assert json.loads(out.read_text()) == r
    # the training layout: every frame has its label and its M tokens, plus the question and answer
    assert r["visual_tokens"] == 12 and r["seq_len"] >= 12 + 3 * 2 + 2
    assert r["tokens_per_s"] == pytest.approx(2 * r["seq_len"] / r["seconds_per_step"])
    assert r["flops_per_token"] == flops_per_token(r["params_non_embedding"], 2, 32, r["seq_len"])
    assert r["mfu"] == pytest.approx(r["tflops_per_s"] / 1.0) and r["peak_memory_gib"] > 0
    # non-embedding parameters: the transformer blocks and the projector, not the word embeddings
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(llm_dir)
    embed = {id(p): p.numel() for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) for p in m.parameters()}
    projector = (8 * 32 + 32) + (32 * 32 + 32)
    assert r["params_non_embedding"] == sum(p.numel() for p in lm.parameters()) - sum(embed.values()) + projector


def test_bad_settings_are_named(llm_dir):
    with pytest.raises(ValueError, match="dtype='int8'"):
        throughput(str(llm_dir), T=1, M=1, dtype="int8")
    with pytest.raises(ValueError, match="steps=0"):
        throughput(str(llm_dir), T=1, M=1, steps=0)


@pytest.mark.parametrize("trainable", [False, True])
def test_the_tower_in_the_forward_is_timed_and_counted(llm_dir, tmp_path, trainable):
    """model.vision_features: forward -- frames through the tower in each step, its FLOPs added
    (2 per parameter per patch frozen, 6 trained), the LLM's own count unchanged."""
    from visctx.features import build_tiny_vision_tower

    tower = build_tiny_vision_tower(tmp_path / "tower", image_size=54, patch_size=2, hidden_size=16, num_layers=2,
                                    num_heads=1, intermediate_size=32)
    common = dict(T=3, M=4, batch_size=2, steps=1, warmup=1, device="cpu", dtype="fp32", threads=1)
    cached = throughput(str(llm_dir), vision_dim=16, **common)
    r = throughput(str(llm_dir), vision_tower=str(tower), vision_trainable=trainable, **common)
    assert r["vision"] == ("trainable" if trainable else "frozen") and cached["vision"] == "cache"
    assert r["seq_len"] == cached["seq_len"] and r["params_non_embedding"] == cached["params_non_embedding"]
    from transformers import SiglipVisionModel

    n_tower = sum(p.numel() for p in SiglipVisionModel.from_pretrained(tower).parameters())
    patches = 2 * 3 * 27 * 27
    extra = (6.0 if trainable else 2.0) * n_tower * patches / (2 * r["seq_len"])
    assert r["flops_per_token"] == pytest.approx(cached["flops_per_token"] + extra)


# -- memory and time per method at one window (issue 14) ------------------------------------------


def test_saved_activation_bytes_counts_each_saved_storage_once():
    from visctx.throughput import saved_activation_bytes

    a = torch.randn(100, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(100))
    # sin saves its input a; exp saves its output (100 floats); a * a saves a twice (one storage); * w saves a and w
    out, n = saved_activation_bytes(lambda: (a.sin() + a.exp() + a * a + a * w).sum(), exclude=(w,))
    assert n == 2 * 100 * 4
    out.backward()  # the saved tensors still serve the backward
    assert a.grad is not None


def test_methods_at_one_window_are_accounted_on_a_microscopic_model(llm_dir, tmp_path):
    """Same window L = T*M for every method: sampling, pooling and both maskings cost the LLM the
    same step; summary tokens take r times the raw tokens but the text after the video keeps
    the same keys and values, and the video's peak cache is bounded by a window."""
    from transformers import AutoConfig

    from visctx.throughput import method_costs

    out = tmp_path / "m.json"
    r = method_costs(str(llm_dir), T=2, M=4, ratio=4, methods=["sample", "pool", "mask", "tube", "summary", "grid"],
                     vision_dim=8, steps=1, warmup=0, isolate=False, out_json=str(out))
    assert json.loads(out.read_text()) == r and r["window"] == 8 and r["summary_window"] == 16
    m = r["methods"]
    assert m["summary"]["arm"] == "T2-M16-pool-vst4w16" and m["mask"]["arm"] == "T2-M4-mask"
    cfg = AutoConfig.from_pretrained(llm_dir)
    per_position = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    at_l = ["sample", "pool", "mask", "tube", "summary"]
    labels = m["pool"]["prefix_positions"] - 8  # the frame labels (no text before the video)
    for name in at_l:
        row = m[name]
        assert row["kept_visual_tokens"] == 8 and row["kept_positions"] == labels + 8
        assert row["kept_kv_bytes"] == per_position * (labels + 8)
        assert row["seconds_per_step"] > 0 and row["context_s"] >= 0 and row["peak_memory_gib"] > 0
    for name in ("sample", "mask", "tube"):  # one LLM step for every operator at the same (T, M)
        assert m[name]["activation_bytes"] == m["pool"]["activation_bytes"]
        assert m[name]["peak_kv_bytes"] == m[name]["kept_kv_bytes"]
    s = m["summary"]
    assert s["raw_visual_tokens"] == 32 and s["prefix_positions"] == labels + 32 + 8
    # while the video runs: the kept keys/values plus one window (label + 16 raw + 4 summaries), never the whole
    assert s["kept_kv_bytes"] < s["peak_kv_bytes"] < per_position * s["prefix_positions"]
    assert s["activation_bytes"] > m["pool"]["activation_bytes"]
    assert m["grid"]["activation_bytes"] > m["mask"]["activation_bytes"]  # what masking 8 of 2 x 729 saves


def test_the_harness_costs_every_window_of_the_methods_study(llm_dir, tmp_path):
    """One report per combination of studies.methods (its ratio and window), in the config's order."""
    from pathlib import Path

    import yaml

    from visctx.config import raw_params
    from visctx.throughput import study_method_costs

    params = tmp_path / "params.yaml"  # read alone (no config/ beside it): the repository's settings, two windows
    raw = raw_params(Path(__file__).resolve().parents[1] / "params.yaml")
    raw["studies"]["methods"] |= {"combos": [[2, 4], [1, 9]], "summary_ratio": 4, "summary_window": 0}
    raw["model"]["tiny"]["vision"]["hidden_size"] = 8
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "m.json"
    r = study_method_costs(str(params), str(llm_dir), steps=1, isolate=False, out_json=str(out))
    assert json.loads(out.read_text()) == r
    assert [(w["T"], w["M"], w["window"]) for w in r["windows"]] == [(2, 4, 8), (1, 9, 9)]
    assert r["windows"][1]["methods"]["summary"]["arm"] == "T1-M36-pool-vst4w36"
    assert all(w["methods"]["pool"]["kept_visual_tokens"] == w["window"] for w in r["windows"])


def test_an_isolated_method_gives_the_same_accounting(llm_dir):
    from visctx.throughput import method_costs

    kw = dict(T=2, M=4, methods=["tube"], vision_dim=8, steps=1, warmup=0)
    alone, here = method_costs(str(llm_dir), isolate=True, **kw), method_costs(str(llm_dir), isolate=False, **kw)
    for key in ("activation_bytes", "kept_kv_bytes", "seq_len", "arm"):
        assert alone["methods"]["tube"][key] == here["methods"]["tube"][key]


def test_bad_method_settings_are_named(llm_dir):
    from visctx.throughput import method_costs

    with pytest.raises(ValueError, match="methods=\\['crop'\\]"):
        method_costs(str(llm_dir), methods=["crop"])
    with pytest.raises(ValueError, match="2\\*M=8 raw tokens per frame"):
        method_costs(str(llm_dir), T=2, M=4, ratio=2)
    with pytest.raises(ValueError, match="not a multiple of the ratio"):
        method_costs(str(llm_dir), T=2, M=4, ratio=4, window=18)
