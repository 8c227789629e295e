"""One training entry point for the shared base and for each arm's fine-tune.

Why a shared base: on CPU a tiny model trained from scratch for the seconds one arm can afford
learns nothing (platform notes); a base trained once on the mixture of all the study's arms, then
a short fine-tune per arm, does. ``init`` decides which: a pretrained LLM (name or dir) gets a fresh
projector; a trained model dir (has ``projector.safetensors``) is continued.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from visctx import cpu
from visctx.config import Arm
from visctx.data import FeatureSource, TrainRecord, arm_weights, load_train_records, train_loader
from visctx.model import PromptEncoder, VideoModel
from visctx.files import atomic_path, content_digest, write_json_atomic, write_timing

log = logging.getLogger(__name__)

# Lightning warnings that are expected here and only add noise to every job's log.
QUIET = (
    ".*Experiment logs directory.*exists and is not empty.*",  # run_config.json lives beside the metrics
    ".*Checkpoint directory.*exists and is not empty.*",  # the same directory, or a resumed run's checkpoints
    ".*smaller than the logging interval.*",
    ".*dataloader is not resumable.*",  # it is: ArmBatchSampler starts at the restored global step
    ".*isinstance.treespec, LeafSpec.*",
    ".*module.s. in eval mode at the start of training.*",  # a frozen vision tower stays in eval mode
)


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """Linear warmup to 1 over ``warmup_steps``, then linear decay to ``min_ratio`` at ``total_steps``."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        return max(min_ratio, 1.0 - (1.0 - min_ratio) * (step - warmup_steps) / span)

    return f


class ProgressLog(L.Callback):
    """One line per ~5 % of the steps, with the rate and the time left, for job logs (a progress
    bar there is carriage returns; the rules redirect a job's output into its log). Wall times go
    to the log only, never into a result."""

    def __init__(self, steps: int, every: int | None = None, label: str = "train") -> None:
        self.steps, self.label = steps, label
        self.every = every or max(1, steps // 20)
        self.t0: float | None = None
        self.first = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0, self.first = time.monotonic(), trainer.global_step  # a resumed run counts from where it began

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every and step != self.steps:
            return
        rate = (step - self.first) / max(time.monotonic() - (self.t0 or time.monotonic()), 1e-9)
        left = (self.steps - step) / rate if rate > 0 else float("inf")
        loss = pl_module.loss_history[-1] if getattr(pl_module, "loss_history", None) else float("nan")
        print(f"{self.label}: step {step}/{self.steps} ({100 * step / max(self.steps, 1):.0f} %), "
              f"loss {loss:.4f}, {rate:.2f} steps/s, {_eta(left)} left", flush=True)


class FlushLogWithCheckpoint(L.Callback):
    """Write the CSV log's pending rows whenever a checkpoint is saved. Why: Lightning's CSV
    logger holds up to 100 steps in memory, so a run killed after its last checkpoint and resumed
    from it lost those steps of its loss curve (a run killed after its final checkpoint resumed at
    ``max_steps`` and wrote no ``metrics.csv`` at all). A step logged after the checkpoint and
    logged again by the resumed run is the same value (exact resume); ``collect.curves`` keeps one."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in trainer.loggers:
            logger.save()


def _merge_log(metrics_csv: Path, earlier: str) -> None:
    """``metrics_csv`` with the rows of ``earlier`` (the log of the run it resumed) before its own;
    a step in both (logged after the last checkpoint, then again) once, as the resumed run logged it."""
    import io

    import pandas as pd

    frames = [pd.read_csv(io.StringIO(earlier))]
    if metrics_csv.is_file():
        frames.append(pd.read_csv(metrics_csv))
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(subset="step", keep="last").sort_values(
        "step", kind="stable")
    with atomic_path(metrics_csv) as tmp:
        merged.to_csv(tmp, index=False)


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class VideoLM(L.LightningModule):
    """Lightning's view of a :class:`~visctx.model.VideoModel`: optimiser, schedule, loss log."""

    def __init__(self, model: VideoModel, lr: float = 1e-3, warmup_steps: int = 0, total_steps: int = 1000,
                 weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.lr, self.warmup_steps, self.total_steps, self.weight_decay = lr, warmup_steps, total_steps, weight_decay
        self.loss_history: list[float] = []
        # Padding accounting over the run: real tokens and padded slots (rows x longest row) of the
        # batches trained on. On several ranks each counts its own share; the summary is rank 0's.
        self.tokens, self.slots = 0, 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(batch)
        if self.trainer is None or (self.global_step + 1) % self.trainer.log_every_n_steps == 0:  # the steps logged
            self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.loss_history.append(float(loss.detach()))
        self.tokens += int(batch["n_real"])  # token positions computed (a shared prefix counts once)
        self.slots += int(batch["n_slots"])
        return loss

    @property
    def pad_fraction(self) -> float | None:
        """The fraction of the padded slots trained on that were padding (4 decimals)."""
        return round(1.0 - self.tokens / self.slots, 4) if self.slots else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The summary's losses cover the whole run, and anything random in a step (dropout in a
        # pretrained LLM's config) must continue its stream, so a resumed run ends as an
        # uninterrupted one would. Tensors and floats only: loadable with weights_only=True.
        checkpoint["visctx"] = {"loss_history": list(self.loss_history), "torch_rng": torch.get_rng_state(),
                                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                                "tokens": self.tokens, "slots": self.slots}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("visctx")
        if state is None:  # a checkpoint from before these were saved
            return
        self.loss_history = [float(x) for x in state["loss_history"]]
        self.tokens, self.slots = int(state.get("tokens", 0)), int(state.get("slots", 0))
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
        # fused: one kernel for all parameters; the per-tensor loop cost ~5 ms a step on the tiny model
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr,
                                fused=all(p.device.type in ("cpu", "cuda") for p in decay + no_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.warmup_steps, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class VideoDataModule(L.LightningDataModule):
    """Training data for one run: shuffled, seeded, one arm per batch, no worker processes
    (2 cores; features are memory-mapped, the model is the bottleneck)."""

    def __init__(self, train_json: str | Path, features_dir: str | Path, encoder: PromptEncoder,
                 arms: Sequence[Arm], batch_size: int, seed: int = 0, store: FeatureSource | None = None,
                 arm_sampling: str = "uniform", length_groups: int = 0, group_by_video: bool = False):
        super().__init__()
        arm_weights(arms, arm_sampling)  # fail early on a bad mode
        if length_groups < 0:
            raise ValueError(f"length_groups={length_groups} (train.*.length_groups) must be >= 0")
        self.arm_sampling, self.length_groups, self.group_by_video = arm_sampling, length_groups, group_by_video
        self.train_json, self.features_dir = Path(train_json), Path(features_dir)
        self.encoder, self.arms, self.batch_size, self.seed = encoder, list(arms), batch_size, seed
        self.store = store
        self.records: list[TrainRecord] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.records is None:
            self.records = load_train_records(self.train_json)
        if self.store is None:
            from visctx.features import open_store

            self.store = open_store(self.features_dir)

    def train_dataloader(self) -> DataLoader:
        # Lightning restores the checkpoint's global step before it asks for the loader (Trainer._run:
        # restore_training_state, then fit_loop.run -> setup_data), so a resumed run starts at the
        # batch the interrupted one would have drawn next.
        self.setup()
        t = self.trainer
        return train_loader(self.records, self.store, self.encoder, self.arms, self.batch_size, self.seed,
                            source=str(self.train_json), arm_sampling=self.arm_sampling,
                            start=t.global_step if t is not None else 0,
                            rank=t.global_rank if t is not None else 0, world=t.world_size if t is not None else 1,
                            length_groups=self.length_groups, group_by_video=self.group_by_video)


def local_device(accelerator: str, env: dict | None = None) -> torch.device:
    """This process's GPU before Lightning has set one up (its launcher sets LOCAL_RANK, srun
    SLURM_LOCALID), or the CPU."""
    env = os.environ if env is None else env
    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return torch.device("cpu")
    rank = int(env.get("LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
    return torch.device("cuda", rank % torch.cuda.device_count())


def _checkpoint_step(path: Path) -> int | None:
    """The global step saved in ``path``, or None (with a one-line warning, and the file removed)
    when it is not a complete checkpoint (:func:`visctx.model.check_checkpoint`)."""
    from visctx.model import check_checkpoint

    try:
        return check_checkpoint(path)
    except ValueError as e:
        log.warning("%s; removed, resuming from an older checkpoint if any", e)
        path.unlink(missing_ok=True)
        return None


def _resume_point(log_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``log_dir`` (``last.ckpt`` or one of the
    two newest ``step=N.ckpt``), or None."""
    best: tuple[int, bool, Path] | None = None
    for path in sorted(log_dir.glob("*.ckpt")):
        step = _checkpoint_step(path)
        if step is not None and (best is None or (step, path.name == "last.ckpt") > best[:2]):
            best = (step, path.name == "last.ckpt", path)
    return None if best is None else best[2]


def _remove(ckpt: Path) -> None:
    """A checkpoint is a file, or under DeepSpeed a directory of shards."""
    shutil.rmtree(ckpt) if ckpt.is_dir() else ckpt.unlink(missing_ok=True)


@dataclass(frozen=True)
class TrainOptions:
    """How one training run trains: the options of ``visctx train`` and ``train-arms`` (one flag per
    field, as the rules pass them from ``train.base`` / ``train.arm`` / ``train.scale``), the
    settings a resumed run must share (:meth:`run_config`), and what :func:`train` and
    :func:`train_arms` take. Why one type: the two entry points repeated 25 keywords each, and
    the resume check compared a hand-kept subset.

    Args:
        steps: optimizer steps.
        batch_size: the global batch (split over ``devices`` x ``num_nodes`` ranks).
        lr: AdamW's peak learning rate.
        warmup_steps: linear warmup to ``lr``, then linear decay to 0 at ``steps``.
        seed: seeds the init, the batches and the arm drawn for each.
        threads: torch's CPU threads.
        progress_bar: show Lightning's progress bar (else a progress line every ~5 % of the steps).
        weight_decay: AdamW's weight decay (not on norms and biases).
        ckpt_every: steps between checkpoints.
        prompt_format: PromptFormat fields (JSON), or {"chat_template": true[, "frame_label"]} for a fresh model; a trained model dir keeps its own.
        accelerator: Lightning's (``cpu``, ``gpu``, ``cuda``, ``auto``).
        precision: Lightning's (``32-true``, ``bf16-mixed``, ``bf16-true``, ``16-mixed``).
        arm_sampling: with several arms, ``uniform`` or ``time`` (each arm about the same compute)
            or ``sqrt`` (see ``data.arm_weights``).
        strategy, zero_stage, offload_optimizer, offload_params: ``train.scale``'s (``auto`` or
            ``deepspeed`` with its ZeRO stage and offloading; :mod:`visctx.strategy`; the defaults
            are the CPU path).
        gradient_checkpointing: recompute activations in the backward pass (memory for time).
        attn_implementation: the LLM's attention (``sdpa``, ``flash_attention_2``, ``eager``).
        devices: ranks (GPUs) per node.
        num_nodes: nodes.
        gradient_clipping: clip the gradient norm to this (0: off).
        length_groups: batches of records of similar text length, from mega-batches of that many
            batches (0: off; see ``data.ArmBatchSampler``).
        group_by_video: a video's records in one batch, its visual prefix computed once for all.
        vision_tower: the tower a fresh model runs in its forward (frames in ``features_dir``).
        vision_layer: the tower's hidden state the projector reads (-2: the penultimate).
        vision_trainable: train the tower too (only with the tower in the forward).
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    seed: int
    threads: int
    progress_bar: bool = True
    weight_decay: float = 0.0
    ckpt_every: int = 200
    prompt_format: dict | None = None
    accelerator: str = "cpu"
    precision: str = "32-true"
    arm_sampling: str = "uniform"
    strategy: str = "auto"
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    devices: int = 1
    num_nodes: int = 1
    gradient_clipping: float = 0.0
    length_groups: int = 0
    group_by_video: bool = False
    vision_tower: str | None = None
    vision_layer: int = -2
    vision_trainable: bool = False

    # how the run is watched and checkpointed, not what it computes: a resumed run may differ in them
    NOT_RESUMED: ClassVar[tuple[str, ...]] = ("progress_bar", "ckpt_every")

    @classmethod
    def of(cls, options: TrainOptions | None = None, **fields: Any) -> TrainOptions:
        """``options`` with ``fields`` replaced, or the options made of ``fields`` alone; an unknown
        field is an error naming it."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown training option(s) {', '.join(unknown)}; TrainOptions has "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return dataclasses.replace(options, **fields) if options is not None else cls(**fields)

    def run_config(self) -> dict[str, Any]:
        """The fields a run resumes on (in field order: it is written to ``run_config.json``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.NOT_RESUMED}


def train(
    out_dir: str,
    train_json: str,
    features_dir: str,
    init: str,
    arms: list[Arm],
    log_dir: str,
    options: TrainOptions | None = None,
    **overrides,
) -> dict:
    """Train projector + LLM on answer tokens for ``options.steps`` steps; save the model dir atomically.

    An interrupted run resumes exactly (same batches, same final weights and losses as an
    uninterrupted run) from its newest readable checkpoint in ``log_dir`` (``last.ckpt`` and the
    two newest ``step=N.ckpt``, every ``ckpt_every`` steps), if it is the same run: the content of
    every input and the whole :class:`TrainOptions` but what cannot change the result
    (:data:`TrainOptions.NOT_RESUMED`). Returns the summary that is also written to
    ``<out_dir>/train_summary.json`` (``pad_fraction``: how much of the padded batches was padding;
    ``tokens``: real tokens trained on).

    Args:
        out_dir: the model dir to write (``VideoModel.save``; replaced atomically).
        train_json: the instruction JSON (LLaVA-style records).
        features_dir: cached features, or frames (``model.vision_features: forward``): then the
            model runs ``vision_tower`` (its ``vision_layer``) in the forward, trained too if
            ``vision_trainable``; a trained ``init`` brings its own tower.
        init: a pretrained LLM (hub name or ``save_pretrained`` dir) or a trained model dir to continue.
        arms: one arm (a fine-tune) or every arm of the study (the base; one arm drawn per batch).
        log_dir: checkpoints and Lightning's CSV log.
        options: how to train (on the command line, one option per field).
        overrides: fields of :class:`TrainOptions` by name, over ``options`` (or instead of it).
    """
    o = TrainOptions.of(options, **overrides)
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from visctx.data import feature_stats, is_frames
    from visctx.features import VisionEncoder, open_store
    from visctx.model import Projector, is_model_dir, prompt_layout, replace_dir
    from visctx.pretrained import load_llm

    if o.steps < 1 or o.batch_size < 1 or not arms:
        raise ValueError(f"train needs steps >= 1, batch_size >= 1 and at least one arm "
                         f"(got steps={o.steps}, batch_size={o.batch_size}, arms={arms})")
    arms = [a if isinstance(a, Arm) else Arm.from_id(str(a)) for a in arms]
    from visctx.strategy import build_strategy, configure_llm, full_weights, set_checkpointing

    world = o.devices * o.num_nodes  # batch_size is the global batch, split over the ranks
    if o.batch_size % world:
        raise ValueError(f"batch_size={o.batch_size} (train.*.batch_size, the global batch) does not split evenly "
                         f"over {world} ranks (train.scale.devices x num_nodes)")
    scale = build_strategy(o.strategy, o.zero_stage, o.offload_optimizer, o.offload_params, o.precision, o.gradient_checkpointing,
                           o.attn_implementation, o.accelerator, o.devices, o.num_nodes, o.gradient_clipping, o.batch_size // world)
    torch.set_num_threads(o.threads)
    kernels = cpu.check()  # the pinned CPU kernels, or an error saying why they are not in use
    L.seed_everything(o.seed, workers=True, verbose=False)
    t0 = time.perf_counter()

    store = open_store(features_dir)
    frames = is_frames(store)
    if o.vision_trainable and not frames:
        raise ValueError(f"vision_trainable (model.vision_trainable) needs the tower in the forward: {features_dir} "
                         f"holds cached features (set model.vision_features: forward)")
    if is_model_dir(init):
        model = VideoModel.load(init)
        cpu.require_same(model.meta.get("cpu"), kernels, f"{init} (the model this run continues)")
        if frames != (model.vision is not None):
            raise ValueError(f"{init}: a model {'without' if frames else 'with'} its own vision tower cannot train on "
                             f"{store.kind}s ({features_dir}); model.vision_features must match the model it continues")
        if model.vision is not None:
            model.vision.set_trainable(o.vision_trainable)
        elif model.vision_dim != store.dim:
            raise ValueError(f"{init}: projector expects {model.vision_dim}-wide features, {features_dir} has {store.dim}")
        init_kind = "model"
    else:
        llm, tok = load_llm(init)
        vision, encode = None, None
        if frames:
            if not o.vision_tower:
                raise ValueError(f"{features_dir} holds frames, so the vision tower runs in the forward: name it "
                                 f"(--vision-tower; model.vision_tower)")
            vision = VisionEncoder.load(o.vision_tower, o.vision_layer, o.vision_trainable)
            # the projector's input statistics encode a sample of frames (4,096 at paper scale):
            # on this rank's GPU if there is one, not on the CPU before Lightning moves the model
            vision.to(local_device(o.accelerator))

            def encode(x):
                with torch.no_grad():
                    return vision(torch.from_numpy(np.array(x))).float().cpu().numpy()  # a copy: x is memory-mapped

        dim = vision.dim if vision is not None else store.dim
        mean, std = feature_stats(store, seed=o.seed, encode=encode)
        if vision is not None:
            vision.to("cpu")  # Lightning / DeepSpeed place the whole model
        model = VideoModel(llm, tok, dim, prompt_layout(tok, o.prompt_format),
                           projector=Projector(dim, llm.get_input_embeddings().embedding_dim, mean, std), vision=vision)
        init_kind = "llm"
    configure_llm(model.llm, o.gradient_checkpointing, o.attn_implementation, o.accelerator)
    if any(a.summary > 1 for a in arms):  # summary tokens from the LLM's projections as they are now
        model.enable_summary_tokens()
    if model.vision is not None:  # a frozen tower keeps no activations to recompute
        set_checkpointing(model.vision.tower, o.gradient_checkpointing and model.vision.trainable)
    module = VideoLM(model, o.lr, o.warmup_steps, o.steps, o.weight_decay)
    module.train()

    dm = VideoDataModule(train_json, features_dir, PromptEncoder(model.tokenizer, model.prompt_format), arms,
                         o.batch_size, o.seed, store=store, arm_sampling=o.arm_sampling, length_groups=o.length_groups,
                         group_by_video=o.group_by_video)
    log_dir_p = Path(log_dir)
    log_dir_p.mkdir(parents=True, exist_ok=True)
    # last.ckpt plus the two newest step checkpoints: a damaged newest file still leaves one to
    # resume from. No version counter: a damaged file removed on resume is rewritten by its name.
    ckpt_cb = ModelCheckpoint(dirpath=log_dir_p, filename="{step}", save_last=True, save_top_k=2,
                              monitor="step", mode="max", every_n_train_steps=max(1, o.ckpt_every),
                              enable_version_counter=False)
    callbacks = [ckpt_cb, FlushLogWithCheckpoint()]
    if o.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(50, o.steps // 20))))
    else:
        callbacks.append(ProgressLog(o.steps, label="/".join(Path(out_dir).parts[-3:-1]) or "train"))
    trainer = L.Trainer(
        **scale,
        max_steps=o.steps,
        logger=CSVLogger(str(log_dir_p), name="", version=""),
        callbacks=callbacks,
        enable_checkpointing=True,
        enable_progress_bar=o.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(10, o.steps)),
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=False,
        use_distributed_sampler=False,  # ArmBatchSampler gives each rank its share of the global batch
    )
    # Resume only an interrupted run of the same configuration; a finished run removes its checkpoints.
    # Keyed on the content of every input and the whole configuration (not on paths: a retrained base
    # or a regenerated corpus at the same path must not be continued from), and on the CPU kernels.
    run_cfg = {"train_json": train_json, "features_dir": features_dir, "init": init, "arms": [a.id for a in arms],
               **o.run_config(), "world": world, "cpu": kernels,
                "content": {name: content_digest(p) for name, p in (("train_json", train_json),
                                                                     ("features_dir", features_dir), ("init", init),
                                                                     ("vision_tower", o.vision_tower)) if p}}
    run_cfg = json.loads(json.dumps(run_cfg, default=str))  # as it reads back from run_config.json
    cfg_path = log_dir_p / "run_config.json"
    try:
        same_run = json.loads(cfg_path.read_text()) == run_cfg
    except (OSError, ValueError):  # none, or unreadable: start fresh
        same_run = False
    ckpt = _resume_point(log_dir_p) if same_run else None
    resumed = ckpt is not None
    if not same_run and any(log_dir_p.glob("*.ckpt")):
        log.warning("%s: checkpoints of another run (other inputs or settings); starting fresh", log_dir_p)
    if not resumed:
        for old in log_dir_p.glob("*.ckpt"):
            _remove(old)
        write_json_atomic(cfg_path, run_cfg)
    metrics_csv = log_dir_p / "metrics.csv"
    # Lightning's CSV logger deletes the log it finds when it starts: a resumed run keeps the rows
    # of the run it continues (flushed with each checkpoint: FlushLogWithCheckpoint)
    earlier = metrics_csv.read_text() if resumed and metrics_csv.is_file() else None
    with warnings.catch_warnings():
        for msg in QUIET:
            warnings.filterwarnings("ignore", message=msg)
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if resumed else None)
    seconds = time.perf_counter() - t0
    if earlier is not None and trainer.is_global_zero:
        _merge_log(metrics_csv, earlier)

    losses = module.loss_history
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    summary = {
        "steps": int(trainer.global_step),
        "final_loss": float(sum(tail) / len(tail)) if tail else None,  # mean over the last 10% of steps
        "last_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "arms": [a.id for a in arms],
        "init": str(init),
        "init_kind": init_kind,
        "batch_size": o.batch_size,
        "lr": o.lr,
        "warmup_steps": o.warmup_steps,
        "weight_decay": o.weight_decay,
        "arm_sampling": o.arm_sampling,
        "length_groups": o.length_groups,
        "group_by_video": o.group_by_video,
        "pad_fraction": module.pad_fraction,  # rank 0's share of each batch on several ranks
        "tokens": module.tokens,
        "seed": o.seed,
        "threads": o.threads,
        "resumed": resumed,
        "vision": "cache" if model.vision is None else "trainable" if model.vision.trainable else "frozen",
        "cpu": kernels,
    }
    before = int(model.meta.get("steps_total", 0)) if init_kind == "model" else 0
    meta = {
        "arm": arms[0].to_dict() if len(arms) == 1 else "mixture",
        "arms": [a.id for a in arms],
        "steps": int(trainer.global_step),  # this run
        "steps_total": before + int(trainer.global_step),  # including the runs it continued
        "seed": o.seed,
        "init": str(init),
        "features_dir": str(features_dir),
        "train_json": str(train_json),
        "cpu": kernels,  # evaluating or continuing this model elsewhere needs the same kernels
    }
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.meta = {}
    with full_weights(model):  # ZeRO-3 partitions parameters: every rank takes part in the gather
        if trainer.is_global_zero:  # one writer
            model.save(tmp, **meta)
            write_json_atomic(tmp / "train_summary.json", summary)
            write_timing(tmp / "train_summary.json", seconds, steps=summary["steps"])
            replace_dir(tmp, out)
            for ckpt in log_dir_p.glob("*.ckpt"):  # done: a rerun must start fresh, not "resume" at max_steps
                _remove(ckpt)
    trainer.strategy.barrier("saved")
    return summary | {"seconds": round(seconds, 3)}  # the wall time: in the sidecar, not the summary


def train_arms(
    arms: list[Arm],
    arms_dir: str,
    train_json: str,
    features_dir: str,
    init: str,
    options: TrainOptions | None = None,
    **overrides,
) -> dict:
    """Fine-tune each arm separately from ``init``, one after another in this process, into
    ``<arms_dir>/<arm>/model`` (logs in ``<arms_dir>/<arm>/train``).

    Each arm is exactly the run :func:`train` makes for it alone (same seed, same data order), in
    the layout the rules and evaluation read; the workflow runs it with one arm per job.

    Args:
        arms: the arms to fine-tune, each on its own.
        arms_dir: the root of the per-arm layout.
        train_json: the instruction JSON (LLaVA-style records).
        features_dir: cached features, or frames (then the tower runs in the forward).
        init: the base model dir (or a pretrained LLM) every arm starts from.
        options: how to train each arm (on the command line, one option per field).
        overrides: fields of :class:`TrainOptions` by name, over ``options`` (or instead of it).
    """
    o = TrainOptions.of(options, **overrides)
    arms = [a if isinstance(a, Arm) else Arm.from_id(str(a)) for a in arms]
    if len({a.id for a in arms}) != len(arms):
        raise ValueError(f"train_arms: an arm is listed twice in {[a.id for a in arms]}")
    out = {}
    for arm in arms:
        root = Path(arms_dir) / arm.id
        out[arm.id] = train(str(root / "model"), train_json, features_dir, init, [arm], str(root / "train"), o)
        print(f"{arm.id}: {out[arm.id]['steps']} steps, {out[arm.id]['seconds']} s, "
              f"final loss {out[arm.id]['final_loss']:.4f}", flush=True)
    return out
