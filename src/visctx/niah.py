"""Needle in a haystack (VNBench, Video-XL): can an arm find one frame among N others, wherever it is?

For every needle question of the synthetic corpus the needle frame (the one second the flash is
on screen) is known from the scene spec. The context is built from the cached features: N haystack
frames sampled uniformly from the video's other frames, the needle frame inserted at depth
d (0 % = first, 100 % = last), then the arm's token operator, so an arm with T frames sees
N = T - 1 haystack frames plus the needle. Each frame-sampling arm is scored at every depth with
the 4-option question; the heatmap is accuracy over (N, d). Without the needle in view the answer
is a guess (1/4), so the map shows where, and at which haystack size, the model loses the needle.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from visctx.config import WINDOW_METHODS, Arm, method_of
from visctx.context import MASK_OPS, mask_seeds, uniform_indices, visual_context

DEPTHS = (0, 25, 50, 75, 100)


def haystack_indices(n_frames: int, needle: int, n_haystack: int, depth: float) -> list[int]:
    """Frame indices: ``n_haystack`` frames uniformly from the frames that are not the needle, with
    the needle inserted at ``depth`` percent of the sequence (0: first, 100: last)."""
    if not 0 <= needle < n_frames or not 0 <= depth <= 100 or n_haystack < 0:
        raise ValueError(f"needle {needle} of {n_frames} frames, depth {depth}, haystack {n_haystack}: out of range")
    others = [i for i in range(n_frames) if i != needle]
    hay = [others[j] for j in uniform_indices(len(others), n_haystack)] if n_haystack else []
    pos = math.floor(depth / 100 * n_haystack + 0.5)  # half up: 50 % of one haystack frame is after it, not 0 %
    return hay[:pos] + [needle] + hay[pos:]


def needle_frame(spec: dict, extract_fps: float, max_frames: int) -> int | None:
    """Index, among the frames extraction kept, of the first frame showing the flash (None: the
    extraction skipped it)."""
    from visctx.video import frame_indices

    from visctx.synth import visible

    fps, seconds = spec["fps"], spec["seconds"]
    kept = frame_indices(seconds * fps, fps, extract_fps, max_frames)
    hits = [j for j, k in enumerate(kept) if visible(spec["needle"], k // fps)]
    return hits[0] if hits else None


def needle_readable(spec: dict, arm: Arm, threshold: float, position: int = 0,
                    chroma_noise: float | None = None) -> bool:
    """Whether one of the arm's tokens carries the needle on its frame (:mod:`visctx.ceiling`'s rule):
    the map asks about needles the arm could read in view, so a miss is the haystack's doing.
    ``position``: the needle frame's place among the arm's T frames (where masks differ per frame)."""
    from visctx.ceiling import carried_bins, context
    from visctx.synth import objects

    things = objects(spec)
    second = spec["needle"]["shows"][0][0]
    if arm.token_op in MASK_OPS and MASK_OPS[arm.token_op][1]:  # the patches this video's mask keeps there
        W = context(arm, [second] * arm.frames, spec["grid"], spec["video"])[1][position]
    else:
        W = context(dataclasses.replace(arm, T=1, pooled_from=0), [second], spec["grid"])[1]
    return len(carried_bins(things, [[second]], W, threshold, chroma_noise)[0]) > 0


def niah(
    arms: list[Arm],
    arms_dir: str,
    eval_json: str,
    videos_json: str,
    features_dir: str,
    out_csv: str,
    out_png: str | None = None,
    extract_fps: float = 1.0,
    depths: list[int] | None = None,
    batch_size: int = 32,
    threads: int = 1,
    visible_share: float = 0.25,
    chroma_noise: float | None = 0.1,
    every_needle: bool = False,
) -> dict:
    """Accuracy of each frame-sampling arm (``<arms_dir>/<arm>/model``) on the needle questions of
    ``eval_json`` at every depth; writes the table (``out_csv``, with the models' training seed) and,
    if asked, its heatmap (``out_png``; the study's map is :func:`niah_summary` over the seeds).

    Args:
        arms: the frame-sampling arms to score (the haystack is N = T - 1 frames).
        arms_dir: the root of the per-arm layout.
        eval_json: the synthetic evaluation JSON (its needle questions are asked).
        videos_json: the scene specs, which say when each needle flashes.
        features_dir: the features of the evaluation videos.
        out_csv, out_png: the accuracy table and (optional) its heatmap.
        extract_fps: the fps frames were extracted at (to find the needle's frame).
        depths: needle depths in percent (0: first, 100: last; default 0 25 50 75 100).
        batch_size: items scored at once.
        threads: torch's CPU threads.
        visible_share, chroma_noise: the ceiling's rule (``ceiling.*``, :func:`visctx.ceiling.seen_bins`):
            only needles an arm's token can carry on their own frame are asked.
        every_needle: ask every arm every needle instead, whatever its tokens carry: the maps of
            several token methods at one window are then over the same items (what a method drops
            of the needle frame counts against it).
    """
    import pandas as pd

    from visctx.data import load_eval_records, usable_records
    from visctx.data import add_context, is_frames
    from visctx.features import open_store
    from visctx.model import VideoModel
    from visctx.synth import load_videos_json

    from visctx import cpu

    torch.set_num_threads(threads)
    kernels = cpu.check()
    depths = list(DEPTHS if depths is None else depths)
    arms = [a if isinstance(a, Arm) else Arm.from_id(str(a)) for a in arms]
    bad = [a.id for a in arms if a.pooled_from]
    if bad:
        raise ValueError(f"needle in a haystack places single frames: frame-sampling arms only, got {bad}")
    store = open_store(features_dir)
    specs = {v["video"]: v for v in load_videos_json(videos_json)["videos"]}
    items = []
    for r in usable_records(load_eval_records(eval_json), store, str(eval_json)):
        if r.task_type == "needle" and r.video in specs:
            j = needle_frame(specs[r.video], extract_fps, store.frames)
            if j is not None:
                items.append((r, j))
    if not items:
        raise ValueError(f"{eval_json}: no needle questions whose needle frame was extracted")
    rows = []
    seeds = set()
    asked = items
    for arm in arms:
        model = VideoModel.load(Path(arms_dir) / arm.id / "model").eval()
        seeds.add(model.meta.get("seed"))
        cpu.require_same(model.meta.get("cpu"), kernels, str(Path(arms_dir) / arm.id / "model"))
        per_frame = arm.token_op in MASK_OPS and MASK_OPS[arm.token_op][1] and not MASK_OPS[arm.token_op][0]
        for depth in depths:
            pos = math.floor(depth / 100 * (arm.T - 1) + 0.5) if per_frame else 0  # as haystack_indices places it
            items = asked if every_needle else [
                (r, j) for r, j in asked if needle_readable(specs[r.video], arm, visible_share, pos, chroma_noise)]
            if not items:  # an arm too coarse to read any needle has no map there, not a map of chance
                print(f"niah: {eval_json}: no needle that arm {arm.id}'s tokens can carry at depth {depth} "
                      f"(visible_share {visible_share}, chroma_noise {chroma_noise})", file=sys.stderr)
                continue
            prompts = [model.encoder.choice_prompt(r.question, r.options, r.answer, where=r.id) for r, _ in items]
            right = []
            for b in range(0, len(items), batch_size):
                chunk = items[b:b + batch_size]
                x = torch.from_numpy(np.stack([store.get(r.video)[haystack_indices(store.frames, j, arm.T - 1, depth)]
                                               for r, j in chunk]))
                batch = model.encoder.choice_batch(prompts[b:b + batch_size], arm.T, arm.M, summary=arm.summary_layout)
                videos = [r.video for r, _ in chunk]
                add_context(batch, x if is_frames(store) else visual_context(x.float(), arm, mask_seeds(videos, arm)),
                            store, arm, videos)
                with torch.inference_mode():
                    pred = model.score_options(batch)["logprob"].argmax(1)
                right += (pred == torch.tensor([r.answer for r, _ in chunk])).tolist()
            rows.append({"arm": arm.id, "method": method_of(arm), "seed": model.meta.get("seed"), "T": arm.T, "M": arm.M,
                         "haystack": arm.T - 1, "depth": depth, "n": len(right), "accuracy": float(np.mean(right))})
    if not rows:  # a finding, not a failure: an empty map that says why (the DAG goes on)
        print(f"niah: {eval_json}: no needle that any of the arms {[a.id for a in arms]} can carry "
              f"(visible_share {visible_share}): an empty map", file=sys.stderr)
    if len(seeds) > 1:
        raise ValueError(f"{arms_dir}: the arms come from different training seeds {sorted(map(str, seeds))}")
    df = pd.DataFrame(rows, columns=COLUMNS)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False, float_format="%.6g")
    if out_png:
        draw_heatmap(df, out_png)
    return {"arms": int(df["arm"].nunique()), "items": len(asked), "cells": len(df)}


COLUMNS = ["arm", "method", "seed", "T", "M", "haystack", "depth", "n", "accuracy"]


def niah_summary(csvs: list[str], out_csv: str, out_png: str, by_method: bool = False) -> dict:
    """Every seed's map (:func:`niah`) in one table: a row per (arm, depth) with the across-seed mean
    accuracy, its interval (:mod:`visctx.stats`) and each seed's value; the heatmap of the mean with
    each replicate's map beside it, or (``by_method``) one map per method of spending the window.

    Args:
        csvs: one :func:`niah` table per training seed.
        out_csv: the table over seeds.
        out_png: its heatmap.
        by_method: one panel per method (the ``methods`` study's arms) instead of one per seed.
    """
    import pandas as pd

    from visctx.stats import summarise

    per_seed = pd.concat([pd.read_csv(p) for p in csvs], ignore_index=True)
    keys = ["arm", "method", "T", "M", "haystack", "depth"]
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    if per_seed.empty:
        pd.DataFrame(columns=[*keys, "accuracy", "accuracy_lo", "accuracy_hi"]).to_csv(out_csv, index=False)
        draw_heatmap(per_seed, out_png, per_seed)
        return {"cells": 0, "seeds": []}
    if per_seed.duplicated(["arm", "seed", "depth"]).any():
        raise ValueError(f"{csvs}: a (arm, seed, depth) cell appears twice (the same seed's map given twice?)")
    out = summarise(per_seed, keys, ["accuracy"])
    wide = per_seed.pivot_table(index=keys, columns="seed", values="accuracy").add_prefix("accuracy_seed")
    out = out.merge(wide.reset_index(), on=keys).sort_values(["method", "haystack", "depth"])
    out.to_csv(out_csv, index=False, float_format="%.6g")
    if by_method:
        draw_method_heatmaps(out, out_png, len(per_seed["seed"].unique()))
    else:
        draw_heatmap(out, out_png, per_seed)
    return {"cells": len(out), "seeds": sorted(per_seed["seed"].unique().tolist())}


def draw_method_heatmaps(df, out_png: str | os.PathLike, n_seeds: int) -> None:
    """One map per method (accuracy over haystack frames and depth, mean over seeds ± half the
    interval): how sampling, pooling, masking and summary tokens find a needle in one window."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = [m for m in WINDOW_METHODS if m in set(df["method"])] + sorted(set(df["method"]) - set(WINDOW_METHODS))
    fig = Figure(figsize=(2.3 * len(methods) + 1.2, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(methods), squeeze=False)[0]
    for i, (ax, method) in enumerate(zip(axes, methods)):
        d = df[df["method"] == method].assign(half=lambda x: (x["accuracy_hi"] - x["accuracy_lo"]) / 2)
        mean = d.pivot_table(index="depth", columns="haystack", values="accuracy").sort_index(ascending=False)
        half = d.pivot_table(index="depth", columns="haystack", values="half").reindex_like(mean)
        annot = mean.map(lambda v: f"{v:.2f}") + half.map(lambda v: "" if v != v else f"\n±{v:.2f}")
        sns.heatmap(mean, ax=ax, vmin=0, vmax=1, cmap="viridis", annot=annot.to_numpy(), fmt="",
                    annot_kws={"fontsize": 7}, cbar=i == len(methods) - 1)
        Ms = ", ".join(str(m) for m in sorted(set(d["M"])))
        ax.set(xlabel="haystack frames N", ylabel="needle depth (%)" if i == 0 else "", title=f"{method} (M = {Ms})")
    fig.suptitle(f"Needle in a haystack per method, one window (mean of {n_seeds} seeds ± 95% CI; chance 0.25)",
                 fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)


def draw_heatmap(df, out_png: str | os.PathLike, per_seed=None) -> None:
    """Accuracy over (haystack frames, needle depth), one cell per (arm, depth): the mean over seeds
    (annotated with its interval's half-width when there are several), then each seed's own map."""
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def grid(frame, value="accuracy"):
        return frame.pivot_table(index="depth", columns="haystack", values=value).sort_index(ascending=False)

    if df.empty:
        fig = Figure(figsize=(5.0, 2.0))
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, "Needle in a haystack: no needle that the arms' tokens can carry\n"
                 "(data.synthetic.visible_share; larger needles: data.synthetic.max_side)", ha="center", va="center")
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=120)
        return
    seeds = [] if per_seed is None else sorted(per_seed["seed"].unique())
    mean = grid(df)
    annot = mean.map(lambda v: f"{v:.2f}")
    if "accuracy_hi" in df and df["accuracy_hi"].notna().any():
        half = grid(df.assign(half=(df["accuracy_hi"] - df["accuracy_lo"]) / 2), "half")
        annot = mean.combine(half, lambda m, h: m.map(lambda v: f"{v:.2f}") + h.map(lambda v: f"\n±{v:.2f}"))
    width = 1.2 + 0.7 * mean.shape[1]
    fig = Figure(figsize=(width * (1 + 0.6 * len(seeds)), 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(seeds), squeeze=False, width_ratios=[1] + [0.6] * len(seeds))[0]
    M = ", ".join(str(m) for m in sorted(set(df["M"])))
    sns.heatmap(mean, ax=axes[0], vmin=0, vmax=1, cmap="viridis", annot=annot.to_numpy(), fmt="",
                annot_kws={"fontsize": 7}, cbar_kws={"label": "accuracy"})
    axes[0].set(xlabel="haystack frames N (context T = N + 1)", ylabel="needle depth (%)",
                title=f"Needle in a haystack, M = {M} (chance 0.25)" + (f"\nmean of {len(seeds)} seeds ± 95% CI"
                                                                         if len(seeds) > 1 else ""))
    for ax, seed in zip(axes[1:], seeds):
        sns.heatmap(grid(per_seed[per_seed["seed"] == seed]), ax=ax, vmin=0, vmax=1, cmap="viridis", cbar=False,
                    annot=True, fmt=".2f", annot_kws={"fontsize": 6})
        ax.set(xlabel="N", ylabel="", title=f"seed {seed}")
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
