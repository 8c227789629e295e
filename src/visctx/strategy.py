"""Training at scale: the Lightning strategy, precision and LLM settings of ``train.scale``.

One typed place turns the ``train.scale`` params into ``lightning.Trainer`` keyword arguments
(:func:`build_strategy`), a DeepSpeed JSON config (:func:`deepspeed_config`) and the LLM's own
switches (:func:`configure_llm`: gradient checkpointing, attention kernel), so the CPU default and the
paper's cluster recipe go through the same code. Why the split between *run* and *validate*:
DeepSpeed's ``fit`` is CUDA-only (platform notes), so on a CPU machine the cluster configuration
is checked without fitting (:func:`validate_strategy`: Trainer built, config parsed by DeepSpeed's
own parser) while ``strategy: auto`` is what runs. (A DeepSpeed checkpoint directory of shards
becomes a model dir in :mod:`visctx.collate`: this module knows nothing of the model.)

Decisions: ``flash_attention_2`` is a *preference*: without the ``flash-attn`` package or a CUDA
device it falls back to ``sdpa`` with a warning (same attention, slower kernel), so the paper preset
still validates and runs anywhere. Impossible combinations raise a ``ValueError`` naming the key.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

KEY = "train.scale"
STRATEGIES = ("auto", "deepspeed")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
# Bucket sizes (elements) as numbers, never "auto": DeepSpeed resolves "auto" only through the HF
# Trainer integration, not under Lightning. 2e8 is Lightning's own default for ZeRO-2.
BUCKET_SIZE = 200_000_000
STAGE3_PREFETCH = 50_000_000
STAGE3_PERSISTENCE = 100_000


def _bad(name: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{KEY}.{name}={value!r}: {why}")


def check_scale(strategy: str = "auto", zero_stage: int = 2, offload_optimizer: bool = False,
                offload_params: bool = False, precision: str = "32-true", gradient_checkpointing: bool = False,
                attn_implementation: str = "sdpa", accelerator: str = "cpu", devices: int = 1, num_nodes: int = 1,
                gradient_clipping: float = 0.0, validate_only: bool = False) -> None:
    """Raise a ``ValueError`` naming the ``train.scale`` key of the first impossible setting.

    ``validate_only``: checking the cluster recipe on a CPU machine, where DeepSpeed cannot fit.
    """
    if strategy not in STRATEGIES:
        raise _bad("strategy", strategy, f"allowed: {', '.join(STRATEGIES)}")
    if precision not in PRECISIONS:
        raise _bad("precision", precision, f"allowed: {', '.join(PRECISIONS)}")
    if accelerator not in ACCELERATORS:
        raise _bad("accelerator", accelerator, f"allowed: {', '.join(ACCELERATORS)}")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise _bad("attn_implementation", attn_implementation, f"allowed: {', '.join(ATTN_IMPLEMENTATIONS)}")
    for name, n in (("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(n, int) or n < 1:
            raise _bad(name, n, "must be an integer >= 1")
    if gradient_clipping < 0:
        raise _bad("gradient_clipping", gradient_clipping, "must be >= 0 (0 = no clipping)")
    if strategy == "auto":
        for name, on in (("offload_optimizer", offload_optimizer), ("offload_params", offload_params)):
            if on:  # would be silently ignored
                raise _bad(name, on, f"offloading is DeepSpeed's; set {KEY}.strategy=deepspeed or turn it off")
        if devices * num_nodes > 1:
            raise _bad("devices", devices, f"several devices need {KEY}.strategy=deepspeed "
                       f"(strategy auto trains on one device)")
        if precision == "16-mixed" and accelerator == "cpu":
            raise _bad("precision", precision, "float16 mixed precision needs a GPU; on CPU use 32-true or bf16-mixed")
        return
    if zero_stage not in (1, 2, 3):
        raise _bad("zero_stage", zero_stage, "DeepSpeed ZeRO stage must be 1, 2 or 3")
    if offload_params and zero_stage < 3:  # DeepSpeed's parser accepts it and then ignores it
        raise _bad("offload_params", offload_params, f"parameter offload needs {KEY}.zero_stage=3 "
                   f"(got {zero_stage}); use offload_optimizer with ZeRO-1/2")
    if not validate_only and accelerator not in ("gpu", "cuda"):
        raise _bad("strategy", strategy, f"DeepSpeed trains only on CUDA GPUs (here {KEY}.accelerator="
                   f"{accelerator!r}); on CPU use strategy auto (the same config is checked by "
                   f"visctx.strategy.validate_strategy)")


def deepspeed_config(zero_stage: int = 2, offload_optimizer: bool = False, offload_params: bool = False,
                     precision: str = "bf16-mixed", gradient_clipping: float = 1.0,
                     micro_batch_size: int | None = None) -> dict:
    """The DeepSpeed JSON for Lightning's ``DeepSpeedStrategy(config=...)``.

    No ``gradient_accumulation_steps``: Lightning sets it from ``accumulate_grad_batches`` and
    refuses a config that has it. ``micro_batch_size`` (per GPU) is optional: Lightning reads it from
    the data loader when absent. Offloading sets ``zero_force_ds_cpu_optimizer: false`` because we
    hand DeepSpeed torch's AdamW (DeepSpeedCPUAdam would be faster but is a JIT-compiled op).
    """
    zero: dict[str, Any] = {
        "stage": zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_bucket_size": BUCKET_SIZE,
    }
    if zero_stage <= 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=BUCKET_SIZE, reduce_scatter=True)
    else:
        zero.update(stage3_prefetch_bucket_size=STAGE3_PREFETCH, stage3_param_persistence_threshold=STAGE3_PERSISTENCE,
                    stage3_gather_16bit_weights_on_model_save=True)
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch AdamW from configure_optimizers
        "gradient_clipping": float(gradient_clipping),
        "bf16": {"enabled": precision.startswith("bf16")},
        "fp16": {"enabled": precision.startswith("16")},
    }
    if offload_optimizer:
        cfg["zero_force_ds_cpu_optimizer"] = False
    if micro_batch_size is not None:
        cfg["train_micro_batch_size_per_gpu"] = int(micro_batch_size)
    return cfg


def check_deepspeed_config(cfg: dict, accumulate_grad_batches: int = 1) -> Any:
    """Parse ``cfg`` with DeepSpeed's own ``DeepSpeedConfig`` (works on CPU without a process
    group: world size 1); return it or raise a ``ValueError`` naming ``train.scale``."""
    from deepspeed.runtime.config import DeepSpeedConfig

    full = {"train_micro_batch_size_per_gpu": 1, **cfg, "gradient_accumulation_steps": accumulate_grad_batches}
    try:
        return DeepSpeedConfig(full)
    except Exception as e:  # pydantic ValidationError, AssertionError, ValueError
        raise ValueError(f"{KEY}: DeepSpeed rejects the config built from it: {e}") from None


def _deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def cluster_plugins(devices: int, num_nodes: int, env: dict | None = None) -> list:
    """Who starts the processes of a multi-GPU run. A Snakemake SLURM job runs its rule as one
    task (``srun -n1``, platform notes), and Lightning's SLURM detection would then refuse
    ``devices > 1``: with fewer SLURM tasks than GPUs on one node, Lightning launches one process
    per GPU itself (``LightningEnvironment``). With a task per GPU (``ntasks = devices``) SLURM has
    started them and Lightning's own detection is right."""
    env = os.environ if env is None else env
    world = devices * num_nodes
    ntasks = env.get("SLURM_NTASKS")
    if world == 1 or ntasks is None or int(ntasks) >= world:
        return []
    if num_nodes > 1:
        raise _bad("num_nodes", num_nodes, f"a multi-node run needs one SLURM task per GPU ({world}), "
                   f"this job has SLURM_NTASKS={ntasks}")
    from lightning.pytorch.plugins.environments import LightningEnvironment

    return [LightningEnvironment()]


def build_strategy(strategy: str = "auto", zero_stage: int = 2, offload_optimizer: bool = False,
                   offload_params: bool = False, precision: str = "32-true", gradient_checkpointing: bool = False,
                   attn_implementation: str = "sdpa", accelerator: str = "cpu", devices: int = 1, num_nodes: int = 1,
                   gradient_clipping: float = 0.0, micro_batch_size: int | None = None,
                   validate_only: bool = False) -> dict:
    """``lightning.Trainer`` keyword arguments (accelerator, strategy, precision, devices, num_nodes,
    gradient clipping) for a ``train.scale`` section, after :func:`check_scale`.

    ``gradient_checkpointing``/``attn_implementation`` are checked here and applied to the model by
    :func:`configure_llm`. With DeepSpeed, clipping lives in its config (Lightning's own clipping
    is bypassed by the DeepSpeed engine).
    """
    check_scale(strategy, zero_stage, offload_optimizer, offload_params, precision, gradient_checkpointing,
                attn_implementation, accelerator, devices, num_nodes, gradient_clipping, validate_only)
    kwargs: dict[str, Any] = {"accelerator": accelerator, "precision": precision, "devices": devices,
                              "num_nodes": num_nodes}
    if plugins := cluster_plugins(devices, num_nodes):
        kwargs["plugins"] = plugins
    if strategy == "auto":
        kwargs["strategy"] = "auto"
        if gradient_clipping > 0:
            kwargs["gradient_clip_val"] = gradient_clipping
        return kwargs
    if not _deepspeed_available():
        raise _bad("strategy", strategy, "needs the deepspeed package: DS_BUILD_OPS=0 pip install "
                   "--no-build-isolation deepspeed==0.19.8 (or the project's 'cluster' extra)")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    cfg = deepspeed_config(zero_stage, offload_optimizer, offload_params, precision, gradient_clipping,
                           micro_batch_size)
    check_deepspeed_config(cfg)
    kwargs["strategy"] = DeepSpeedStrategy(config=cfg)
    return kwargs


def validate_strategy(**scale: Any) -> dict:
    """Check a ``train.scale`` section on any machine: the settings, the DeepSpeed config through
    DeepSpeed's parser, and a ``lightning.Trainer`` built on CPU with that strategy (not fitted).

    Returns a summary (strategy, ZeRO stage, precision, the DeepSpeed config). A ``deepspeed``
    section is checked for CPU (``accelerator=cpu``, ``devices=1``): the point is the config, not
    the cluster's shape, which :func:`check_scale` has already checked as given.
    """
    import lightning as L

    check_scale(**{k: v for k, v in scale.items() if k != "micro_batch_size"})
    cpu = dict(scale, accelerator="cpu", devices=1, num_nodes=1)
    if cpu.get("strategy", "auto") == "deepspeed" and str(cpu.get("precision")) == "16-mixed":
        cpu["precision"] = "bf16-mixed"  # Lightning refuses fp16 on CPU; the fp16 section is checked by the parser
    kwargs = build_strategy(**cpu, validate_only=True)
    trainer = L.Trainer(**kwargs, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    summary = {"strategy": type(trainer.strategy).__name__, "precision": str(trainer.precision)}
    if scale.get("strategy", "auto") == "deepspeed":
        cfg = deepspeed_config(scale.get("zero_stage", 2), scale.get("offload_optimizer", False),
                               scale.get("offload_params", False), scale.get("precision", "32-true"),
                               scale.get("gradient_clipping", 0.0), scale.get("micro_batch_size"))
        parsed = check_deepspeed_config(cfg)
        summary.update(zero_stage=int(parsed.zero_optimization_stage), deepspeed_config=cfg)
    return summary


def resolve_attn_implementation(requested: str = "sdpa", accelerator: str = "cpu") -> str:
    """The attention kernel to load: ``flash_attention_2`` only with the ``flash-attn`` package and a
    CUDA device, else ``sdpa`` with a warning (a preference, not a requirement; see module doc)."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise _bad("attn_implementation", requested, f"allowed: {', '.join(ATTN_IMPLEMENTATIONS)}")
    if requested != "flash_attention_2":
        return requested
    import torch

    why = None
    if importlib.util.find_spec("flash_attn") is None:
        why = "the flash-attn package is not installed"
    elif accelerator == "cpu" or not torch.cuda.is_available():
        why = "it needs a CUDA device"
    if why:
        warnings.warn(f"{KEY}.attn_implementation=flash_attention_2: {why}; using sdpa (same attention, "
                      f"slower kernel)", stacklevel=2)
        return "sdpa"
    return requested


def configure_llm(llm, gradient_checkpointing: bool = False, attn_implementation: str = "sdpa",
                  accelerator: str = "cpu") -> str:
    """Apply ``train.scale``'s model switches to a Hugging Face causal LM in place; return the
    attention kernel in use. Checkpointing is non-reentrant: no ``enable_input_require_grads`` hack
    is needed when the embeddings (or the whole LLM) are frozen."""
    attn = resolve_attn_implementation(attn_implementation, accelerator)
    if getattr(llm.config, "_attn_implementation", None) != attn:
        llm.set_attn_implementation(attn)
    set_checkpointing(llm, gradient_checkpointing)
    return attn


def set_checkpointing(model, on: bool) -> None:
    """Activation checkpointing of a Hugging Face model (the LLM, or a trainable vision tower) on or off."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23 renamed gradient_checkpointing_*
        enable, disable, state = (model.activation_checkpointing_enable, model.activation_checkpointing_disable,
                                  "is_activation_checkpointing")
    else:
        enable, disable, state = (model.gradient_checkpointing_enable, model.gradient_checkpointing_disable,
                                  "is_gradient_checkpointing")
    if on:
        enable({"use_reentrant": False})
    elif getattr(model, state):
        disable()


@contextlib.contextmanager
def full_weights(module) -> Iterator[None]:
    """Inside: every parameter of ``module`` whole on each rank. A no-op except under ZeRO-3, where
    parameters are partitioned and saving them as they are would write empty tensors."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield
