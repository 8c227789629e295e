"""Records, datasets and batches: corpus JSON + cached features -> model-ready batches for one arm.

The visual-context operators run per batch on cached features (``visual_context``), so one
feature cache serves every arm. All samples of a batch share one arm (same T, M), which is what
lets batches run unmasked (see ``model``); for the shared base, :class:`ArmBatchSampler` draws the
arm per batch, so one base sees the study's whole mixture of arms.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from visctx.config import Arm
from visctx.context import MASK_OPS, mask_seeds, uniform_indices, visual_context
from visctx.model import ChoicePrompt, Prompt, PromptEncoder
from visctx.pretrained import VIDEO_PLACEHOLDER


class FeatureSource(Protocol):
    """What batches need from ``visctx.features.FeatureStore`` (or ``FrameStore``: ``kind ==
    "frame"``, the model encodes them)."""

    frames: int
    kind: str

    def get(self, key: str) -> np.ndarray: ...
    def __contains__(self, key: str) -> bool: ...


# ---------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class TrainRecord:
    id: str
    video: str
    turns: tuple[tuple[str, str], ...]  # (human, gpt) pairs; every gpt turn is an answer
    task_type: str = ""


@dataclass(frozen=True)
class EvalRecord:
    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    task_type: str = ""


def _read_list(path: str | Path) -> list:
    path = Path(path)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _field(path: Path, i: int, rec: Any, key: str, types: type | tuple[type, ...]) -> Any:
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: record {i} is not an object")
    where = f"{path}: record {i} (id {rec.get('id')!r})"
    if key not in rec:
        raise ValueError(f"{where}: missing field {key!r}")
    value = rec[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def load_train_records(path: str | Path) -> list[TrainRecord]:
    """LLaVA-style records; multi-turn conversations give one answer (with loss) per gpt turn."""
    path = Path(path)
    out = []
    for i, rec in enumerate(_read_list(path)):
        rid = str(_field(path, i, rec, "id", (str, int)))
        video = _field(path, i, rec, "video", str)
        conv = _field(path, i, rec, "conversations", list)
        where = f"{path}: record {i} (id {rid!r})"
        if not conv or len(conv) % 2:
            raise ValueError(f"{where}: field 'conversations' needs human/gpt pairs, got {len(conv)} turns")
        turns = []
        for t in range(0, len(conv), 2):
            pair = []
            for j, role in ((t, "human"), (t + 1, "gpt")):
                turn = conv[j]
                if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
                    raise ValueError(f"{where}: field 'conversations'[{j}] must be "
                                     f"{{'from': '{role}', 'value': str}}, got {turn!r}"[:300])
                pair.append(turn["value"])
            turns.append((pair[0], pair[1]))
        n_video = sum(h.count(VIDEO_PLACEHOLDER) for h, _ in turns)
        if turns[0][0].count(VIDEO_PLACEHOLDER) != 1 or n_video != 1:
            raise ValueError(f"{where}: field 'conversations': the first human value must hold the one "
                             f"{VIDEO_PLACEHOLDER!r} placeholder")
        task = rec.get("task_type", "")
        out.append(TrainRecord(rid, video, tuple(turns), str(task)))
    return out


def load_eval_records(path: str | Path) -> list[EvalRecord]:
    """Multiple-choice records ``{id, video, question, options, answer (index), task_type}``."""
    path = Path(path)
    out = []
    for i, rec in enumerate(_read_list(path)):
        rid = str(_field(path, i, rec, "id", (str, int)))
        video = _field(path, i, rec, "video", str)
        question = _field(path, i, rec, "question", str)
        options = _field(path, i, rec, "options", list)
        answer = _field(path, i, rec, "answer", int)
        where = f"{path}: record {i} (id {rid!r})"
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise ValueError(f"{where}: field 'options' must be >= 2 non-empty strings")
        if not 0 <= answer < len(options):
            raise ValueError(f"{where}: field 'answer'={answer} is not an index into {len(options)} options")
        out.append(EvalRecord(rid, video, question, tuple(options), answer, str(rec.get("task_type", ""))))
    return out


def videos_sha(videos: Iterable[str]) -> str:
    """Fingerprint of a set of video keys (sha256 of the sorted unique keys, 12 hex digits).

    Written beside every evaluation so that arms scored on different video sets -- e.g. one
    evaluated before a video was quarantined, one after -- cannot end up side by side in a table.
    """
    return hashlib.sha256("\n".join(sorted(set(videos))).encode()).hexdigest()[:12]


R = TypeVar("R")  # TrainRecord, EvalRecord or benchmarks.BenchItem: anything with .video


def usable_records(records: Sequence[R], store: FeatureSource, source: str = "records") -> list[R]:
    """``records`` whose video has cached features; those whose video was quarantined at
    extraction (``store.quarantined``) are dropped with a one-line count on stderr.

    A video that is neither in the store nor quarantined means the features belong to another
    corpus (or a shard is missing): a ``KeyError`` naming it, never a silent drop.
    """
    quarantined = getattr(store, "quarantined", None) or {}
    missing = sorted({r.video for r in records if r.video not in store and r.video not in quarantined})
    if missing:
        raise KeyError(f"{source}: {len(missing)} videos have no cached features and were not quarantined at "
                       f"extraction, e.g. {missing[0]!r}")
    kept = [r for r in records if r.video in store]
    if len(kept) < len(records):
        bad = sorted({r.video for r in records if r.video not in store})
        print(f"{source}: skipping {len(records) - len(kept)} records of {len(bad)} quarantined videos "
              f"(e.g. {bad[0]!r}: {quarantined[bad[0]]})", file=sys.stderr, flush=True)
    if not kept:
        raise ValueError(f"{source}: every record's video is quarantined ({len(records)} records)")
    return kept


# ---------------------------------------------------------------------------------------------
# Visual context per batch


def load_context(store: FeatureSource, keys: Sequence[str], arm: Arm, train: bool = False,
                 draw: int | None = None) -> torch.Tensor:
    """``[B, T, M, D]`` float32 visual context of ``keys`` for ``arm``; from a frame store the
    arm's uint8 frames ``[B, arm.frames, S, S, 3]``, which the model's tower encodes.

    Only the frames the arm uses are read from the memory-mapped cache (``arm.frames``
    uniform indices), then ``visual_context`` pools/samples them; on that subset its own frame
    selection is the identity, so the result equals ``visual_context`` on all frames. ``train``:
    a training batch (random masking of a ``*train`` arm applies only then), each video masked by
    its own seed (:func:`visctx.context.mask_seed`), of training's pass ``draw`` when given.
    """
    idx = uniform_indices(store.frames, arm.frames)
    arr = np.stack([np.asarray(store.get(k)[idx]) for k in keys])
    if is_frames(store):
        return torch.from_numpy(arr)
    feats = torch.from_numpy(arr.astype(np.float32, copy=False))
    ctx = visual_context(feats, arm, mask_seeds(keys, arm, draw), train)
    expect = (len(keys), arm.T, arm.M, store.dim)
    if tuple(ctx.shape) != expect:
        raise ValueError(f"arm {arm.id} on a {store.grid}x{store.grid} feature grid gives context "
                         f"{tuple(ctx.shape)}, expected {expect} (token counts assume a 27x27 grid)")
    return ctx


def is_frames(store: FeatureSource) -> bool:
    """Frames to encode in the forward (``model.vision_features: forward``), not cached features."""
    return getattr(store, "kind", "feature") == "frame"


def add_context(batch: dict[str, Any], context: torch.Tensor, store: FeatureSource, arm: Arm,
                keys: Sequence[str] | None = None, draw: int | None = None) -> dict[str, Any]:
    """Cached features go in as ``visual``; frames as ``frames`` with the arm whose operators the
    model applies after its tower (:meth:`visctx.model.VideoModel.embed`), and for a masking arm
    the videos' mask seeds (``keys``: the context's videos; ``draw``: training's pass)."""
    if is_frames(store):
        batch["frames"], batch["arm"] = context, arm.id  # an id: Lightning's batch transfer refuses frozen dataclasses
        if arm.token_op in MASK_OPS:
            if keys is None:
                raise ValueError(f"arm {arm.id} masks each video by its own seed: add_context needs the videos")
            batch["mask_seeds"] = mask_seeds(keys, arm, draw)
    else:
        batch["visual"] = context
    return batch


class ContextCache:
    """LRU cache of per-video visual contexts, keyed by (video, arm[, training]), capped in bytes.

    Each video has several records (one per task) and a fine-tune runs several epochs, so one
    arm's context is reused many times; reading and pooling the cached grids costs about as much
    as a training step at T=32 (measured), so compute it once.
    """

    def __init__(self, store: FeatureSource, max_bytes: int = 256 << 20):
        self.store, self.max_bytes, self.bytes = store, max_bytes, 0
        self._items: OrderedDict[tuple[str, Any], torch.Tensor] = OrderedDict()

    def get(self, keys: Sequence[str], arm: Arm, train: bool = False, draw: int | None = None) -> torch.Tensor:
        """``train``: a training batch (:func:`load_context`); it keys the cache only for a
        ``*train`` masking arm, whose training and evaluation contexts differ. A masking arm's
        training context of pass ``draw`` is used once: it is computed, never cached."""
        if train and draw is not None and arm.token_op in MASK_OPS:
            return load_context(self.store, keys, arm, train, draw)
        tag = (arm, True) if train and not MASK_OPS.get(arm.token_op, (0, True))[1] else arm
        missing = list(dict.fromkeys(k for k in keys if (k, tag) not in self._items))
        fresh = ({k: c.clone() for k, c in zip(missing, load_context(self.store, missing, arm, train))}
                 if missing else {})
        out = []
        for k in keys:
            if k in fresh:
                out.append(fresh[k])
            else:
                self._items.move_to_end((k, tag))
                out.append(self._items[(k, tag)])
        for k, ctx in fresh.items():
            if ctx.nbytes <= self.max_bytes:
                self._items[(k, tag)] = ctx
                self.bytes += ctx.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
        return torch.stack(out)


def feature_stats(store: FeatureSource, max_videos: int = 64, frame_stride: int = 4, seed: int = 0,
                  encode: Callable[[np.ndarray], Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the cached patch features (a seeded sample of videos, every
    ``frame_stride``-th frame, all patches): the projector's fixed input standardisation.
    ``encode``: frames -> features, for a frame store (the tower runs in the forward)."""
    keys = sorted(store.keys())
    if not keys:
        raise ValueError("feature_stats: the feature store is empty")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(keys), min(max_videos, len(keys)), replace=False))
    total = total_sq = 0.0
    n = 0
    for i in pick:
        x = store.get(keys[i])[::frame_stride]
        x = np.asarray(x if encode is None else encode(np.asarray(x)), dtype=np.float64)
        x = x.reshape(-1, x.shape[-1])
        total = total + x.sum(0)
        total_sq = total_sq + (x * x).sum(0)
        n += len(x)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    std = np.maximum(std, 1e-3 * max(float(std.mean()), 1e-6))  # a constant dimension must not blow up
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Datasets


class TrainDataset(Dataset):
    """Records tokenized once; items are ``(record index, arm)`` keys chosen by the batch sampler."""

    def __init__(self, records: Sequence[TrainRecord], encoder: PromptEncoder, source: str = "train"):
        self.records = list(records)
        self.prompts = [encoder.train_prompt(r.turns, where=f"{source}: record {i} (id {r.id!r})")
                        for i, r in enumerate(self.records)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, Arm] | tuple[int, Arm, int]) -> tuple[Prompt, str, Arm, int | None]:
        i, arm, *draw = key
        return self.prompts[i], self.records[i].video, arm, (draw[0] if draw else None)


class ChoiceDataset(Dataset):
    def __init__(self, records: Sequence[EvalRecord], encoder: PromptEncoder, source: str = "eval"):
        self.records = list(records)
        self.prompts = [encoder.choice_prompt(r.question, r.options, r.answer, where=f"{source}: record {i} (id {r.id!r})")
                        for i, r in enumerate(self.records)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[ChoicePrompt, str, int]:
        return self.prompts[i], self.records[i].video, i


class TrainCollator:
    """Items of one arm -> ``{input_ids, labels, vis_index, lengths, visual}``."""

    def __init__(self, store: FeatureSource, encoder: PromptEncoder, cache_bytes: int = 256 << 20):
        self.store, self.encoder = store, encoder
        self.cache = ContextCache(store, cache_bytes)

    def __call__(self, items: list[tuple[Prompt, str, Arm, int | None]]) -> dict[str, Any]:
        arm, draw = items[0][2], items[0][3] if len(items[0]) > 3 else None
        if any(it[2] != arm for it in items):
            raise ValueError("a batch must share one arm (same T, M): use ArmBatchSampler")
        videos = [it[1] for it in items]
        batch: dict[str, Any] = self.encoder.train_batch([it[0] for it in items], arm.T, arm.M, keys=videos,
                                                         summary=arm.summary_layout)
        keys = batch.get("prefix_keys", videos)
        return add_context(batch, self.cache.get(keys, arm, train=True, draw=draw), self.store, arm, keys, draw)


class ChoiceCollator:
    def __init__(self, store: FeatureSource, encoder: PromptEncoder, arm: Arm, cache_bytes: int = 256 << 20,
                 cache: ContextCache | None = None):
        self.store, self.encoder, self.arm = store, encoder, arm
        self.cache = cache if cache is not None else ContextCache(store, cache_bytes)

    def __call__(self, items: list[tuple[ChoicePrompt, str, int]]) -> dict[str, Any]:
        videos = [it[1] for it in items]
        batch: dict[str, Any] = self.encoder.choice_batch([it[0] for it in items], self.arm.T, self.arm.M, keys=videos,
                                                          summary=self.arm.summary_layout)
        keys = batch.get("prefix_keys", videos)
        add_context(batch, self.cache.get(keys, self.arm), self.store, self.arm, keys)
        batch["index"] = torch.tensor([it[2] for it in items])
        return batch


ARM_SAMPLING = ("uniform", "time", "sqrt", "frames")


def step_cost(arm: Arm, text_tokens: int = 12, label_tokens: int = 3) -> float:
    """Relative cost of one training step of ``arm`` (sequence L = T*(label + M) + text).

    Fitted to measured step times (2-layer hidden-64 Qwen2, batch 16, 1 thread, sdpa, no mask):
    ~12 ms + 0.21 ms * L + 0.00067 ms * L^2 (L=15: 16 ms, 219: 90 ms, 395: 200 ms, 807: 620 ms).
    Summary-token slots count as tokens (not fitted: the evicting cache runs a video window by
    window, ``visctx method-costs`` measures it).
    """
    L = arm.T * (label_tokens + arm.M) + arm.summaries + text_tokens
    return 12.0 + 0.21 * L + 0.00067 * L * L


def arm_weights(arms: Sequence[Arm], mode: str = "uniform") -> list[float] | None:
    """Mixture weights for the base: ``uniform`` (every arm equally often; None), ``time``
    (every arm gets about the same compute: p ~ 1/step cost, so cheap arms get more steps),
    ``sqrt`` (in between: p ~ 1/sqrt(step cost)) or ``frames`` (every frame count T equally
    often, its arms uniformly). ``frames`` exists because a study's arms are not spread evenly
    over T: the token study's single-frame arms take 48 % of the default base's batches under
    ``sqrt`` (9 % under ``frames``), so a base rarely sees a question about time answerable.
    Probed on the default corpus (one base, seed 0, three fine-tuned arms: single draws, not
    recorded, so no numbers here): the time questions gained little, T16-M9-pool's detail lost and
    the base took over twice as long; so the default stays ``sqrt`` (a base three times longer was
    no better either). What longer arm fine-tunes buy is measured: ``visctx finetune-budget``."""
    if mode == "uniform":
        return None
    if mode == "frames":
        per_t = Counter(a.T for a in arms)
        w = [1.0 / (len(per_t) * per_t[a.T]) for a in arms]
        return [x / sum(w) for x in w]
    if mode in ("time", "sqrt"):
        inv = [step_cost(a) ** (-1.0 if mode == "time" else -0.5) for a in arms]
        return [w / sum(inv) for w in inv]
    raise ValueError(f"arm_sampling={mode!r}; allowed: {', '.join(ARM_SAMPLING)}")


class ArmBatchSampler(Sampler):
    """Shuffled batches, each tagged with one arm. Without ``weights`` arms cycle in reshuffled
    rounds (a balanced mixture); with weights each batch's arm is drawn with those probabilities.

    Batch ``k`` of a run is a pure function of (seed, k): epoch ``k // len``, position ``k % len``,
    so a run resumed at global step ``k`` (``start=k``) sees exactly the batches an uninterrupted
    run sees from there on. Each pass over the sampler continues with the next epoch: Lightning
    calls ``set_epoch`` only on a loader's ``sampler`` / ``batch_sampler.sampler``, never on a batch
    sampler, and without reshuffling every epoch repeats the same (record, arm) pairs, which the
    tiny model memorises (measured: train loss 1.49 vs held-out 1.75). Items are ``(record,
    arm)``, and ``(record, arm, epoch)`` for a masking arm, whose epoch draws its masks.

    On ``world`` ranks (DeepSpeed / DDP) ``batch_size`` is the global batch: every rank draws the
    same batch k and keeps its ``rank::world`` share, so one step sees one arm and the same records
    whatever the number of GPUs.

    ``length_groups = G > 0`` (needs ``lengths``, one per record: the text tokens, since the visual
    part of a batch has one length) groups records of similar length, as HF Trainer's
    ``group_by_length``: the epoch's records (the same ones as without grouping) are cut into
    mega-batches of ``G * batch_size``, each sorted longest first (stable) and cut into batches, and
    the order of the epoch's batches is then shuffled (``shuffle``), so long and short batches
    interleave; each batch position keeps the arm it has without grouping. Right-padding to a batch's
    longest row then wastes less. ``G = 0`` gives exactly the batches of the ungrouped sampler.

    ``videos`` (one key per record) shuffles videos instead of records and lists each video's
    records together, so a batch holds few videos with all their questions: the collator then
    computes each video's visual prefix once (``PromptEncoder._assemble``; the synthetic corpus's 4
    questions per video make a step ~4x cheaper at long contexts). Not combined with ``length_groups``."""

    def __init__(self, n: int, arms: Sequence[Arm], batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, weights: Sequence[float] | None = None, start: int = 0,
                 rank: int = 0, world: int = 1, lengths: Sequence[int] | None = None, length_groups: int = 0,
                 videos: Sequence[str] | None = None):
        if n < 1 or not arms or batch_size < 1:
            raise ValueError(f"need records, arms and batch_size >= 1 (n={n}, arms={len(arms)}, batch_size={batch_size})")
        if weights is not None and (len(weights) != len(arms) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"weights must be {len(arms)} non-negative numbers, got {weights}")
        if start < 0:
            raise ValueError(f"start={start}: the first batch index cannot be negative")
        if world < 1 or not 0 <= rank < world or batch_size % world:
            raise ValueError(f"rank {rank} of {world}: the global batch_size={batch_size} must split evenly "
                             f"over the ranks")
        if length_groups < 0:
            raise ValueError(f"length_groups={length_groups}: the mega-batch size in batches cannot be negative")
        if length_groups and lengths is None:
            raise ValueError(f"length_groups={length_groups} groups records by length: pass their lengths")
        if length_groups and len(lengths) != n:
            raise ValueError(f"length_groups={length_groups}: got {len(lengths)} lengths for {n} records")
        if videos is not None and len(videos) != n:
            raise ValueError(f"got {len(videos)} video keys for {n} records")
        if videos is not None and length_groups:
            raise ValueError("length_groups and grouping by video cannot be combined (set one of them to off)")
        self.length_groups = length_groups
        self.video_records: list[np.ndarray] | None = None
        if videos is not None:
            by_video: dict[str, list[int]] = {}
            for i, v in enumerate(videos):
                by_video.setdefault(v, []).append(i)
            self.video_records = [np.asarray(ix, dtype=np.int64) for ix in by_video.values()]
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.weights = None if weights is None else np.asarray(weights, dtype=float) / float(sum(weights))
        self.n, self.arms, self.batch_size = n, list(arms), batch_size
        self.seed, self.shuffle = seed, shuffle
        self.drop_last = drop_last and n >= batch_size
        self.start = start  # global index of the batch the next pass begins with
        self.rank, self.world = rank, world

    @property
    def epoch(self) -> int:
        return self.start // len(self)

    def set_epoch(self, epoch: int) -> None:
        self.start = epoch * len(self)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[tuple]]:
        """Every batch of ``epoch``, in order: deterministic in (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.video_records is not None:
            vids = rng.permutation(len(self.video_records)) if self.shuffle else range(len(self.video_records))
            order = np.concatenate([self.video_records[v] for v in vids])
        else:
            order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        arm_order: list[int] = []
        arms = []
        for _ in range(len(self)):
            if self.weights is not None:
                arms.append(self.arms[int(rng.choice(len(self.arms), p=self.weights))])
            else:
                if not arm_order:
                    arm_order = list(rng.permutation(len(self.arms)))
                arms.append(self.arms[arm_order.pop()])
        bs = self.batch_size
        if self.length_groups:  # after the arm draws: grouping leaves every position's arm as it is
            used = order[:len(self) * bs]  # the records an ungrouped epoch uses (drop_last drops the same ones)
            mega = self.length_groups * bs
            for m in range(0, len(used), mega):
                chunk = used[m:m + mega]
                used[m:m + mega] = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches = [used[b * bs:(b + 1) * bs] for b in range(len(self))]
            if self.shuffle:
                batches = [batches[int(j)] for j in rng.permutation(len(batches))]
        else:
            batches = [order[b * bs:(b + 1) * bs] for b in range(len(self))]
        # the epoch is a masking arm's draw: a fresh mask per pass (visctx.context.mask_seed)
        return [[(int(i), arm, epoch) if arm.token_op in MASK_OPS else (int(i), arm) for i in batch]
                for batch, arm in zip(batches, arms)]

    def __iter__(self) -> Iterator[list[tuple]]:
        # A pass started mid-epoch (a resumed run) yields the rest of that epoch; len() stays the
        # full epoch, as Lightning adds the batches it restored to its own count. A generator: the
        # pass starts (and moves ``start`` on) at the first batch drawn, not at iter().
        epoch, pos = divmod(self.start, len(self))
        self.start = (epoch + 1) * len(self)
        for batch in self.epoch_batches(epoch)[pos:]:
            yield batch[self.rank::self.world]


def train_loader(records: Sequence[TrainRecord], store: FeatureSource, encoder: PromptEncoder,
                 arms: Sequence[Arm], batch_size: int, seed: int = 0, source: str = "train",
                 arm_sampling: str = "uniform", start: int = 0, rank: int = 0, world: int = 1,
                 length_groups: int = 0, group_by_video: bool = False) -> DataLoader:
    """Batches of one arm each, seeded; ``start``: the global step to begin at (a resumed run);
    ``rank``/``world``: this process's share of each global batch; ``length_groups``: batches of
    records of similar text length; ``group_by_video``: a video's records in one batch, sharing
    the visual prefix (see :class:`ArmBatchSampler`)."""
    records = usable_records(records, store, source)
    ds = TrainDataset(records, encoder, source)
    lengths = [len(p.pre) + len(p.post) for p in ds.prompts]  # text tokens: the visual block is the arm's
    sampler = ArmBatchSampler(len(ds), arms, batch_size, seed, weights=arm_weights(arms, arm_sampling), start=start,
                              rank=rank, world=world, lengths=lengths, length_groups=length_groups,
                              videos=[r.video for r in ds.records] if group_by_video else None)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=TrainCollator(store, encoder), num_workers=0)


def padding(train_json: str, llm: str, arms: list[Arm], batch_size: int = 16, length_groups: list[int] | None = None,
            seed: int = 0, prompt_format: dict | None = None) -> dict:
    """How much of an epoch's padded batches is padding, per arm and ``length_groups`` setting
    (default 0 and 50): the figure behind ``train.*.length_groups``. Text lengths come from the
    tokenizer of ``llm`` and the prompt layout; no features or model weights are read.

    Args:
        train_json: the instruction JSON.
        llm: the LLM whose tokenizer measures the text.
        arms: the arms whose visual blocks are laid out.
        batch_size: records per batch.
        length_groups: the settings of ``train.*.length_groups`` to compare (default 0 50).
        seed: seed of the batch order.
        prompt_format: PromptFormat fields (JSON), or {"chat_template": true[, "frame_label"]} of the prompt layout.
    """
    from visctx.model import prompt_layout
    from visctx.pretrained import load_tokenizer

    tok = load_tokenizer(llm)
    enc = PromptEncoder(tok, prompt_layout(tok, prompt_format))
    ds = TrainDataset(load_train_records(train_json), enc, str(train_json))
    text = np.array([len(p.pre) + len(p.post) for p in ds.prompts])
    out: dict[str, Any] = {"records": len(text), "text_tokens": {"min": int(text.min()), "mean": float(text.mean()),
                                                                  "max": int(text.max())}, "arms": {}}
    for arm in arms:
        arm = arm if isinstance(arm, Arm) else Arm.from_id(str(arm))
        block = len(enc.visual_block(arm.T, arm.M, arm.summary_layout)[0])
        out["arms"][arm.id] = row = {}
        for G in (0, 50) if length_groups is None else length_groups:
            sampler = ArmBatchSampler(len(ds), [arm], batch_size, seed, lengths=text.tolist(), length_groups=G)
            real = slots = 0
            for batch in sampler.epoch_batches(0):
                rows = text[[it[0] for it in batch]] + block
                real, slots = real + int(rows.sum()), slots + len(rows) * int(rows.max())
            row[f"length_groups={G}"] = round(1 - real / slots, 6)
    return out


def choice_loader(records: Sequence[EvalRecord], store: FeatureSource, encoder: PromptEncoder, arm: Arm,
                  batch_size: int, source: str = "eval", cache: ContextCache | None = None) -> DataLoader:
    """``cache``: one the caller reuses afterwards (evaluation's generation pass reads the same contexts)."""
    ds = ChoiceDataset(records, encoder, source)
    return DataLoader(ds, batch_size=batch_size, shuffle=False,
                      collate_fn=ChoiceCollator(store, encoder, arm, cache=cache), num_workers=0)
