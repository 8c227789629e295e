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
    seconds, _ = _timed_steps(model, batch, model.parameters(), dev, warmup, steps)

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


# ---------------------------------------------------------------------------------------------
# Memory and time per method at one window (issue 14)

METHODS = ("sample", "pool", "mask", "tube", "summary", "grid")
DEFAULT_METHODS = ("sample", "pool", "mask", "tube", "summary")


def method_arms(T: int, M: int, ratio: int = 4, window: int = 0) -> dict[str, "Arm"]:
    """Each method's arm at the window L = T*M (:func:`visctx.config.method_arm`), and ``grid``:
    the unmasked 27x27 grid that masking drops from (a reference, not at L)."""
    from visctx.config import Arm, method_arm
    from visctx.context import GRID

    arms = {m: method_arm(m, T, M, ratio, window) for m in METHODS if m != "grid"}
    arms["grid"] = Arm(T, GRID * GRID, "sample")
    return arms


def saved_activation_bytes(fn, exclude: tuple[torch.Tensor, ...] = ()):
    """(``fn()``, bytes of the tensors autograd saves for the backward pass while it runs): the
    activation memory of a forward, counted once per storage (views and repeats of one tensor
    share it) and without the storages of ``exclude`` (the parameters, which are not activations)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def video_cache(model, batch: dict) -> dict[str, int]:
    """Keys and values of the visual prefix (prompt + visual block) of the batch's first row: what
    the text after the video attends to (``kept_kv_bytes``) and the most held while the prefix
    runs (``peak_kv_bytes``: the whole prefix, or with summary tokens the kept ones plus one
    window). Runs without gradients."""
    from transformers import DynamicCache

    from visctx.summary import cache_bytes, prefill

    with torch.no_grad():
        emb = model.embed(batch)
        if "sum_index" in batch:
            end = int(batch["sum_index"][0, -1]) + 1
            raw, flags, window = model._summary_layout(batch, 0, end)
            cache, _, kept = prefill(model.llm, emb[:1, :end], raw, flags, window)
            per_position = cache_bytes(cache) // kept[-1]
            sizes = [int(n) for n in torch.bincount(window - window.min())]  # positions per window's chunk
            peak = max(k + s for k, s in zip([0, *kept[:-1]], sizes))
            return {"kept_kv_bytes": cache_bytes(cache), "peak_kv_bytes": peak * per_position,
                    "kept_positions": kept[-1], "prefix_positions": end}
        end = int(batch["vis_index"][0, -1]) + 1
        cache = DynamicCache(config=model.llm.config)
        model.llm.base_model(inputs_embeds=emb[:1, :end], past_key_values=cache, use_cache=True)
        n = cache_bytes(cache)
        return {"kept_kv_bytes": n, "peak_kv_bytes": n, "kept_positions": end, "prefix_positions": end}


def _rss_gib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` (peak) of this process from /proc, in GiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None



def _timed_steps(model, batch: dict, params, dev, warmup: int, steps: int, memory=None) -> tuple[float, float | None]:
    """Seconds per AdamW training step (forward, backward, update) over ``steps`` after ``warmup``
    untimed ones, CUDA peak statistics reset in between; ``memory()`` is read just before the
    timed steps (what the process holds before them)."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(batch).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    held = memory() if memory is not None else None
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / steps, held

def method_cost(llm: str, arm_id: str, vision_dim: int = 16, batch_size: int = 1, steps: int = 5, warmup: int = 1,
                device: str = "cpu", dtype: str = "fp32", threads: int = 0) -> dict:
    """One method's costs (see :func:`method_costs`), in this process."""
    from visctx.config import Arm
    from visctx.context import GRID, mask_seeds, visual_context
    from visctx.model import VideoModel
    from visctx.pretrained import load_llm

    if threads > 0:
        torch.set_num_threads(threads)
    arm = Arm.from_id(arm_id)
    dev = _device(device)
    torch.manual_seed(0)
    lm, tok = load_llm(llm, dtype=DTYPES[dtype])
    model = VideoModel(lm, tok, vision_dim, summary_tokens=arm.summary > 1).to(dev)
    model.train()
    enc = model.encoder
    prompt = enc.train_prompt([("<video>\nwhat happens in the video", "yes")])
    videos = [f"video{i}" for i in range(batch_size)]  # one question each: the layout training gives them
    batch = enc.train_batch([prompt] * batch_size, arm.T, arm.M, keys=videos, summary=arm.summary_layout)
    grid = torch.randn(batch_size, arm.frames, GRID, GRID, vision_dim, device=dev)
    t0 = time.perf_counter()
    batch["visual"] = visual_context(grid, arm, mask_seeds(videos, arm), train=True)  # the collator's work
    context_s = time.perf_counter() - t0
    batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    params = tuple(model.parameters())
    loss, activations = saved_activation_bytes(lambda: model(batch), exclude=params)
    loss.backward()
    kv = video_cache(model, batch)
    seconds, before = _timed_steps(model, batch, params, dev, warmup, steps, memory=lambda: (
        torch.cuda.memory_allocated(dev) / 2**30 if dev.type == "cuda" else _rss_gib("VmRSS")))
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else _rss_gib("VmHWM")
    return {"arm": arm.id, "token_op": arm.token_op, "T": arm.T, "M": arm.M, "raw_visual_tokens": arm.tokens,
            "kept_visual_tokens": arm.kept_tokens, "seq_len": int(batch["lengths"].max()),
            "seconds_per_step": seconds, "context_s": context_s, "activation_bytes": activations, **kv,
            "memory_before_steps_gib": before, "peak_memory_gib": peak}


def method_costs(
    llm: str,
    T: int = 8,
    M: int = 49,
    ratio: int = 4,
    window: int = 0,
    methods: list[str] | None = None,
    vision_dim: int = 16,
    batch_size: int = 1,
    steps: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    threads: int = 1,
    isolate: bool = True,
    out_json: str | None = None,
) -> dict:
    """Memory and time of one training step per way of spending a window of L = T*M visual
    tokens (:func:`method_arms`): token sampling, pooling, random masking per frame and as a tube,
    and summary tokens at ratio r over r times the raw tokens. Per method: seconds per step
    (forward, backward, AdamW), the seconds the operator takes to cut the context from a random
    27x27 feature grid (the collator's share), the bytes autograd saves for the backward (the
    activation memory, counted exactly, :func:`saved_activation_bytes`), the keys and values the
    text after the video attends to and the most held while the video runs
    (:func:`video_cache`), and the process's peak memory (CUDA: allocated). With ``isolate`` each
    method runs in its own process, so that each peak is its own (a process's peak resident set
    never falls). Inputs are random: costs do not depend on their values.

    Args:
        llm: the LLM (a ``save_pretrained`` dir, e.g. the study's tiny one, or a hub name on disk).
        T: frames.
        M: tokens per frame: the window is L = T*M.
        ratio: the summary tokens' compression ratio r (raw tokens per summary).
        window: the summary tokens' window in raw tokens (0: one frame, r*M).
        methods: which of sample, pool, mask, tube, summary, grid (default: all but grid, the
            unmasked grid).
        vision_dim: width of the visual features (the tiny tower: 16; SigLIP-so400m: 1152).
        batch_size: sequences per step.
        steps: timed training steps.
        warmup: untimed steps before them.
        device: ``cpu``, ``cuda[:i]`` or ``auto``.
        dtype: ``fp32``, ``bf16`` or ``fp16``.
        threads: torch's CPU threads (0: torch's default).
        isolate: run each method in a process of its own (its own peak memory).
        out_json: where to write the report (default: not written).
    """
    import os
    import subprocess

    import visctx

    src = str(Path(visctx.__file__).resolve().parents[1])  # the children import this very library
    names = list(DEFAULT_METHODS if methods is None else methods)
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ValueError(f"methods={bad}: allowed {', '.join(METHODS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
    if min(T, M, ratio, batch_size, steps) < 1 or warmup < 0:
        raise ValueError(f"need T, M, ratio, batch_size, steps >= 1 and warmup >= 0; got T={T}, M={M}, "
                         f"ratio={ratio}, batch_size={batch_size}, steps={steps}, warmup={warmup}")
    arms = method_arms(T, M, ratio, window)
    common = dict(llm=str(llm), vision_dim=vision_dim, batch_size=batch_size, steps=steps, warmup=warmup,
                  device=device, dtype=dtype, threads=threads)
    rows: dict[str, dict] = {}
    for name in names:
        kw = dict(common, arm_id=arms[name].id)
        if not isolate:
            rows[name] = method_cost(**kw)
            continue
        code = ("import json, sys\nfrom visctx.throughput import method_cost\n"
                "print(json.dumps(method_cost(**json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                  p for p in (src, os.environ.get("PYTHONPATH")) if p)))
        if proc.returncode:
            raise RuntimeError(f"method {name} ({arms[name].id}) failed:\n{proc.stderr[-2000:]}")
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    dev = _device(device)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {threads or torch.get_num_threads()} threads)",
        "llm": str(llm), "window": T * M, "T": T, "M": M, "ratio": ratio,
        "summary_window": arms["summary"].summary_window,
        "batch_size": batch_size, "dtype": dtype, "steps": steps, "isolated": isolate, "torch": torch.__version__,
        "methods": rows,
    }
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def study_method_costs(params: str = "params.yaml", llm: str = "results/models/pretrained/llm", steps: int = 10,
                       batch_size: int = 1, vision_dim: int = 0, threads: int = 1, isolate: bool = True,
                       out_json: str | None = "results/perf/method-costs.json") -> dict:
    """:func:`method_costs` at every window the methods study spends (``studies.methods.combos``,
    with its summary ratio and window), so that each method's cost stands beside its Table 6 row.

    Args:
        params: the study's params file (its config and preset).
        llm: the LLM (the study's tiny one by default).
        steps: timed training steps per method and window.
        batch_size: sequences per step.
        vision_dim: width of the visual features (0: the tiny tower's, ``model.tiny.vision.hidden_size``).
        threads: torch's CPU threads.
        isolate: each method in a process of its own (its own peak memory).
        out_json: where to write ``{"cpu": the host, "windows": [one method_costs report per combination]}``.
    """
    from visctx.config import load_params

    cfg = load_params(params)
    study = cfg["studies"]["methods"]
    dim = vision_dim or int(cfg["model"]["tiny"]["vision"]["hidden_size"])
    windows = [method_costs(llm, T=int(T), M=int(M), ratio=int(study["summary_ratio"]),
                            window=int(study.get("summary_window") or 0), vision_dim=dim, steps=steps,
                            batch_size=batch_size, threads=threads, isolate=isolate)
               for T, M in study["combos"]]
    from visctx import cpu

    result = {"cpu": cpu.describe_host(), "windows": windows}  # the machine: step times depend on it
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
