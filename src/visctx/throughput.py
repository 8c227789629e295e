"""Training throughput of one (T, M) setting: tokens per second per device, model FLOPs
utilisation and peak memory, measured on the real model and prompt layout (a benchmark script,
never a timed test).

What is timed: a full optimisation step (forward, backward, AdamW) of projector + LLM on one
device, on a batch laid out exactly as in training (``frame i:`` labels, T*M visual tokens, loss
on the answer). What is not: data loading, and the vision tower unless ``vision_tower`` is given
(``model.vision_features: cache`` encodes every frame once; with ``forward`` the tower runs in
each step on T uint8 frames, frozen or trainable, and its FLOPs count: 2 per parameter per patch
forward, 6 when it is trained). Inputs are random: throughput does not depend on their values. FLOPs follow the usual estimate for a decoder step, 6 * (non-embedding parameters)
per token plus 12 * layers * hidden * sequence length per token for attention (Kaplan et al. 2020;
Chinchilla appendix F), so MFU is comparable with published figures.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

# Dense bf16 peak TFLOP/s per GPU (vendor datasheets, without sparsity); MFU needs one of these or
# --peak-tflops. CPUs have no meaningful single figure: MFU is left out unless it is given.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls of forward + backward, plus attention scores
    and values (2 * 2 * layers * hidden * seq forward, times 3 with backward)."""
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA device on this machine")
    return torch.device(device)


def throughput(
    llm: str,
    T: int,
    M: int,
    vision_dim: int = 1152,
    batch_size: int = 1,
    steps: int = 10,
    warmup: int = 2,
    device: str = "auto",
    dtype: str = "bf16",
    gradient_checkpointing: bool = False,
    peak_tflops: float | None = None,
    threads: int = 0,
    out_json: str | None = None,
    vision_tower: str | None = None,
    vision_trainable: bool = False,
) -> dict:
    """Time ``steps`` training steps (after ``warmup``) of projector + ``llm`` (a ``save_pretrained``
    dir or a hub name already on disk) at T frames x M tokens; report tokens/s per device, MFU
    (with ``peak_tflops`` or a known GPU) and peak memory. ``vision_dim``: the tower's width
    (SigLIP-so400m: 1152; taken from ``vision_tower`` when that is given, see above). Writes
    ``out_json`` when given.

    Args:
        llm: the LLM (a ``save_pretrained`` dir or a hub name on disk).
        T, M: frames and tokens per frame of the visual context.
        vision_dim: width of the visual features (see above).
        batch_size: sequences per step.
        steps: timed training steps.
        warmup: untimed steps before them.
        device: ``auto`` (CUDA if there is one), ``cpu`` or ``cuda[:i]``.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        gradient_checkpointing: recompute activations in the backward pass.
        peak_tflops: the device's peak for the MFU (default: known GPUs' table; none on CPU).
        threads: torch's CPU threads (0: torch's default).
        out_json: where to write the report (default: not written).
        vision_tower: a tower to run in the forward on random frames (else features are random).
        vision_trainable: train the tower too.
    """
    from visctx.config import Arm
    from visctx.model import Projector, PromptEncoder, VideoModel
    from visctx.pretrained import load_llm

    if min(T, M, batch_size, steps) < 1 or warmup < 0:
        raise ValueError(f"need T, M, batch_size, steps >= 1 and warmup >= 0; got T={T}, M={M}, "
                         f"batch_size={batch_size}, steps={steps}, warmup={warmup}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    if threads > 0:
        torch.set_num_threads(threads)
    dev = _device(device)
    torch.manual_seed(0)
    lm, tok = load_llm(llm, dtype=DTYPES[dtype])
    hidden = lm.get_input_embeddings().embedding_dim
    vision = None
    if vision_tower:
        from visctx.features import VisionEncoder, _processor_size

        vision = VisionEncoder.load(vision_tower, trainable=vision_trainable, dtype=DTYPES[dtype])
        vision_dim = vision.dim
    model = VideoModel(lm, tok, vision_dim, projector=Projector(vision_dim, hidden), vision=vision).to(dev)
    if gradient_checkpointing:
        lm.activation_checkpointing_enable()
    model.train()
    enc = PromptEncoder(tok, model.prompt_format)
    prompt = enc.train_prompt([("<video>\nwhat happens in the video", "yes")])
    batch = enc.train_batch([prompt] * batch_size, T, M)
    if vision is None:
        batch["visual"] = torch.randn(batch_size, T, M, vision_dim)
    else:
        size = _processor_size(vision.processor)
        batch["frames"] = torch.randint(0, 256, (batch_size, T, size, size, 3), dtype=torch.uint8)
        batch["arm"] = Arm(T, M, "pool").id
    batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(batch).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = (time.perf_counter() - t0) / steps

    seq_len = int(batch["input_ids"].shape[1])
    cfg = lm.config
    n_embed = sum(p.numel() for p in lm.get_input_embeddings().parameters())
    if not cfg.tie_word_embeddings:
        n_embed += sum(p.numel() for p in lm.get_output_embeddings().parameters())
    vision_params = sum(p.numel() for p in vision.parameters()) if vision is not None else 0
    n_params = sum(p.numel() for p in model.parameters()) - n_embed - vision_params
    fpt = flops_per_token(n_params, cfg.num_hidden_layers, hidden, seq_len)
    if vision is not None:  # the tower's FLOPs, spread over the LLM's tokens of the step
        patches = batch_size * T * (_processor_size(vision.processor) // vision.tower.config.patch_size) ** 2
        fpt += (6.0 if vision_trainable else 2.0) * vision_params * patches / (batch_size * seq_len)
    tokens_per_s = batch_size * seq_len / seconds
    peak = peak_tflops if peak_tflops is not None else _peak_tflops(dev)
    if dev.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30
    else:  # the process's peak resident set (KiB on Linux, bytes on macOS)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mem = rss / (2**30 if sys.platform == "darwin" else 2**20)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "llm": str(llm), "T": T, "M": M, "visual_tokens": T * M, "seq_len": seq_len, "batch_size": batch_size,
        "dtype": dtype, "gradient_checkpointing": gradient_checkpointing, "steps": steps,
        "vision": "cache" if vision is None else "trainable" if vision_trainable else "frozen",
        "seconds_per_step": seconds, "tokens_per_s": tokens_per_s,
        "params_non_embedding": n_params, "flops_per_token": fpt,
        "tflops_per_s": tokens_per_s * fpt / 1e12,
        "mfu": tokens_per_s * fpt / (peak * 1e12) if peak else None, "peak_tflops": peak,
        "peak_memory_gib": peak_mem, "torch": torch.__version__,
    }
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
