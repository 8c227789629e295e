"""The information ceiling of every arm: how much of each answer its exact context can recover.

A synthetic study knows its answer. For every evaluation question this module takes the scene
spec (:mod:`visctx.synth`) and the arm's exact context -- which extracted frames it samples or
pools into which temporal bins (:func:`visctx.context.time_bins`), which patches each token
samples or averages (the zero-padded k x k cells of :func:`visctx.context.pool_grid`) -- and
decides what is recoverable, then the Bayes-optimal cross-entropy of the answer word and the
accuracy of the best guess among the options. Training can approach it; the gap is what the
tiny model fails to learn.

The rule (stated, and pinned by ``tests/test_ceiling.py`` on hand-built scenes):

* A token carries an object when the object's *share* of the token -- the fraction of the
  (frame, patch) pairs the token averages that show it: temporal fraction of its bin times the
  covered fraction of its cell (zeros of the padding count), or 1/0 for a sampled patch -- is at
  least ``threshold`` (the ``visible_share`` of the corpus: its background texture and codec
  noise hide less) and larger than any other object's share of that token.
* An object is *seen* in the bins where some token carries it.
* needle, detail: recoverable iff seen; else the answer is uniform over the colours.
* count: the seen bins form runs; r runs are a lower bound on n (a showing cannot split in two,
  two can merge); the posterior is uniform over r..4 (counts, uniform a priori).
* order (A first, then B): both seen and every bin of A before every bin of B: known; both seen
  otherwise: 1/2 each; only A seen: A first with 1/2; only B seen: B first with 1/2, else one of
  the other 5 colours; neither: uniform.
* episodic (the colour before c2, which the question names): c1 and c2 seen, c1's bins before
  c2's: known; else uniform over the 5 colours other than c2.

The cross-entropy is that of the answer word among the answers the question can have (the model
scores it over its whole vocabulary, which holds at least those), so an arm that sees nothing
sits at the prior: ln 6 for a colour, ln 4 for a count.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from visctx.config import Arm
from visctx.context import GRID, MASK_OPS, mask_indices, mask_seed, time_bins, uniform_indices

N_COLOURS = 6
MAX_COUNT = 4


def frame_seconds(spec: dict[str, Any], extract_fps: float, max_frames: int) -> list[int]:
    """The second each extracted frame shows (what the feature store holds, in order)."""
    from visctx.video import frame_indices

    fps = spec["fps"]
    return [k // fps for k in frame_indices(spec["seconds"] * fps, fps, extract_fps, max_frames)]


def context(arm: Arm, seconds: Sequence[int], grid: int = GRID, video: str | None = None
            ) -> tuple[list[list[int]], np.ndarray]:
    """(each temporal bin's seconds, ``[M, grid, grid]`` weight of each patch in each token, or
    ``[T, M, grid, grid]`` where the tokens differ per frame): the arm's exact context on a video
    whose extracted frames show ``seconds``.

    Random masking at evaluation keeps the very patches the evaluation keeps (the mask of
    ``video`` under the arm, :func:`visctx.context.mask_seed`); ``*train`` masking is evaluated
    pooled. Summary tokens can carry at most what their raw tokens carry: their ceiling is the
    raw stream's (an upper bound, not an exact value)."""
    if arm.summary > 1:
        arm = dataclasses.replace(arm, summary=1, summary_window=0)
    if arm.token_op in MASK_OPS and not MASK_OPS[arm.token_op][1]:
        arm = dataclasses.replace(arm, token_op="pool")
    picked = [seconds[i] for i in uniform_indices(len(seconds), arm.frames)]
    bins = ([picked[a:b] for a, b in time_bins(len(picked), arm.T)] if arm.pooled_from
            else [[s] for s in picked])
    if arm.token_op in MASK_OPS:
        if video is None:
            raise ValueError(f"arm {arm.id} masks each video at random: its ceiling needs the video's key")
        idx = mask_indices(mask_seed(video, arm.id), arm.T, grid * grid, arm.M, MASK_OPS[arm.token_op][0]).numpy()
        W = np.zeros((arm.T, arm.M, grid * grid))
        W[np.arange(arm.T)[:, None], np.arange(arm.M)[None, :], idx] = 1.0
        return bins, W.reshape(arm.T, arm.M, grid, grid)
    W = np.zeros((arm.M, grid, grid))
    if arm.token_op == "pool":
        k, side = arm.kernel, math.isqrt(arm.M)
        for i in range(side):
            for j in range(side):
                W[i * side + j, i * k:(i + 1) * k, j * k:(j + 1) * k] = 1.0 / (k * k)  # zeros of the pad count
    else:
        pts = uniform_indices(grid, math.isqrt(arm.M))
        for a, r in enumerate(pts):
            for b, c in enumerate(pts):
                W[a * len(pts) + b, r, c] = 1.0
    return bins, W


def shares(things: list[dict[str, Any]], bins: list[list[int]], W: np.ndarray) -> np.ndarray:
    """``[objects, T, M]``: each object's share of each token."""
    from visctx.synth import visible

    grid = W.shape[-1]
    out = np.zeros((len(things), len(bins), W.shape[-3]))
    for o, t in enumerate(things):
        mask = np.zeros((grid, grid))
        r, c, side = *t["cell"], t["side"]
        mask[r:r + side, c:c + side] = 1.0
        cover = (W * mask).sum((-2, -1))  # [M], or [T, M] for tokens that differ per frame
        frac = np.array([np.mean([visible(t, s) for s in b]) for b in bins])  # [T]
        out[o] = frac[:, None] * (cover if cover.ndim == 2 else cover[None, :])
    return out


def seen_bins(sh: np.ndarray, threshold: float) -> list[np.ndarray]:
    """For each object, the bins in which some token carries it (share >= threshold and above
    every other object's share of that token)."""
    others = np.zeros_like(sh)
    for o in range(len(sh)):
        rest = np.delete(sh, o, axis=0)
        others[o] = rest.max(0) if len(rest) else 0.0
    carried = (sh >= threshold) & (sh > others)
    return [np.flatnonzero(c.any(1)) for c in carried]


def _runs(b: np.ndarray) -> int:
    return 0 if len(b) == 0 else 1 + int((np.diff(b) > 1).sum())


def _before(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) > 0 and len(b) > 0 and a.max() < b.min()


def item_ceiling(task: str, spec: dict[str, Any], seen: dict[str, np.ndarray], options: Sequence[str],
                 answer: int) -> tuple[float, float]:
    """(Bayes cross-entropy of the answer word, accuracy of the best option) for one question,
    given the bins where each object is seen (keys: needle, count, order0, order1, detail,
    episodic0..2)."""
    right = options[answer]
    if task in ("needle", "detail"):
        if len(seen[task]):
            return 0.0, 1.0
        return math.log(N_COLOURS), 1.0 / len(options)
    if task == "count":
        r = max(1, _runs(seen["count"]))
        n_post = MAX_COUNT - r + 1  # counts r..4 equally likely
        acc = 1.0 / n_post if int(right) >= r else 0.0
        return math.log(n_post), acc
    if task == "order":
        a, b = seen["order0"], seen["order1"]
        if len(a) and len(b):
            return (0.0, 1.0) if _before(a, b) else (math.log(2), 0.5)
        if len(a):  # A first or not: 1/2; the best option is A
            return math.log(2), 1.0
        if len(b):  # B first with 1/2 (a wrong answer), else one of the 5 other colours
            return math.log(2 * (N_COLOURS - 1)), 0.0
        return math.log(N_COLOURS), 1.0 / len(options)
    if task == "episodic":
        if _before(seen["episodic0"], seen["episodic1"]):
            return 0.0, 1.0
        return math.log(N_COLOURS - 1), 1.0 / len(options)
    raise ValueError(f"unknown task {task!r}")


def _seen_by_key(spec: dict[str, Any], arm: Arm, seconds: Sequence[int], threshold: float) -> dict[str, np.ndarray]:
    from visctx.synth import objects

    things = objects(spec)
    bins, W = context(arm, seconds, spec["grid"], spec.get("video"))
    seen = seen_bins(shares(things, bins, W), threshold)
    keys = [t["task"] + (str(t["which"]) if "which" in t else "") for t in things]
    return dict(zip(keys, seen))


def arm_ceiling(arm: Arm, specs: dict[str, dict[str, Any]], items: list[dict[str, Any]], extract_fps: float,
                max_frames: int, threshold: float) -> pd.DataFrame:
    """One row per evaluation item: its task, ceiling loss and accuracy under ``arm``."""
    rows, cache = [], {}
    for it in items:
        spec = specs[it["video"]]
        if it["video"] not in cache:
            cache[it["video"]] = _seen_by_key(spec, arm, frame_seconds(spec, extract_fps, max_frames), threshold)
        loss, acc = item_ceiling(it["task_type"], spec, cache[it["video"]], it["options"], it["answer"])
        rows.append({"video": it["video"], "task": it["task_type"], "loss": loss, "accuracy": acc})
    return pd.DataFrame(rows)


def ceiling(videos_json: str, eval_json: str, studies: dict, out_csv: str, extract_fps: float = 1.0,
            max_frames: int = 32, threshold: float = 0.25) -> dict:
    """The ceiling of every arm of the studies on the held-out split, as an arms.csv-shaped table
    (``loss``, ``accuracy``, ``loss_<task>``, ``acc_<task>``; seed 0: it is exact, not trained) that
    the fits and tables read like any arm table.

    Args:
        videos_json: the scene specs (``synth.make_corpus``).
        eval_json: the held-out questions.
        studies: params' ``studies`` section (JSON): which arms.
        out_csv: the table to write.
        extract_fps: frames per second decoded (``data.extract.fps``).
        max_frames: frames kept per video (``data.extract.max_frames``).
        threshold: the share of a token an object needs to be carried (``data.synthetic.visible_share``).
    """
    import json

    from visctx.config import study_points, unique_arms
    from visctx.synth import load_videos_json

    specs = {v["video"]: v for v in load_videos_json(videos_json)["videos"]}
    items = json.loads(Path(eval_json).read_text())
    missing = sorted({it["video"] for it in items} - set(specs))
    if missing:
        raise ValueError(f"{eval_json}: videos without a scene spec in {videos_json}, e.g. {missing[0]!r}")
    rows = []
    for arm in unique_arms(study_points(studies)):
        df = arm_ceiling(arm, specs, items, extract_fps, max_frames, threshold)
        row = {k: v for k, v in arm.to_dict().items() if k != "id"} | {
            "arm": arm.id, "seed": 0, "benchmark": "synthetic", "n": len(df), "loss": df["loss"].mean(),
            "accuracy": df["accuracy"].mean()}
        for task, g in df.groupby("task"):
            row[f"acc_{task}"], row[f"loss_{task}"] = g["accuracy"].mean(), g["loss"].mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    lead = ["arm", "T", "M", "token_op", "frame_op", "pooled_from", "tokens", "seed", "benchmark", "n", "loss",
            "accuracy"]
    out = out[lead + sorted(c for c in out.columns if c not in lead)].sort_values("arm")
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(out_csv, index=False, float_format="%.6g")
    return {"arms": len(out), "items": len(items)}
