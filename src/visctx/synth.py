"""The embedded default's data: synthetic long videos whose answers need temporal or spatial detail.

Every video is a background (a per-video grey level, tint and gradient) with four independent
things, each in its own region so that no question can be answered from another's event:

=========  ===========================================  =====================================  ==========
task       what the video shows                          why the answer needs it                depends on
=========  ===========================================  =====================================  ==========
needle     a large centre square flashes in one colour   the flash is in ONE of the 32 frames   T
           for exactly one second                        decoded at 1 fps; T sampled frames
                                                         hit it with probability ~T/32
count      a white bar at the top appears n = 1..4       each appearance is one frame; missed   T
           times, one second each, >= 1 s apart          frames undercount
order      two squares of different colours appear in    both must be seen (2 frames each) and  T
           the same bottom corner, 2 s each, one after   their order kept; the other colour is
           the other                                     always a distractor
detail     a small static dot (``dot`` x ``dot`` patches   dot^2 of the 27x27 patches: token      M
           of the 54x54 encoder input, 2 by default)     sampling keeps it only if the sub-grid
           at a random free place, the whole video       hits it, pooling dilutes it ~k^2/dot^2
=========  ===========================================  =====================================  ==========

Geometry is laid out on a ``grid`` x ``grid`` cell lattice (27, the encoder's patch grid); a cell
is ``size / grid`` native pixels (4 at 108 px), i.e. exactly one patch after decord resizes to the
encoder's 54 px, and an even number of pixels so yuv420 chroma blocks never straddle an edge.
Events last whole seconds aligned to second boundaries: native frame j shows second ``j // fps``,
so the 1-fps decode (index ``round(t * fps)``) sees an event in exactly its seconds.

Questions end in a word specific to their type and answers are single words (a 6-colour palette
or a digit): a tiny LLM could not even learn the answer prior when every question ended in the
same token (platform-notes). The vocabulary is :func:`vocabulary`.

Files: ``make_corpus`` writes ``train.json`` (LLaVA-style), ``eval.json`` (4-option multiple
choice) and ``videos.json`` (the scene specs); ``render_shard`` turns specs into mp4 files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visctx.video import atomic_path, shard_slice, write_json_atomic

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
BAR_RGB = (255, 255, 255)
TASKS = ("needle", "order", "count", "detail")
QUESTIONS = {  # no trailing "?": the last token must differ between types
    "needle": "What colour was the flash",
    "order": "Which colour appeared first in the corner",
    "count": "How many times did the bar appear at the top",
    "detail": "What colour is the small dot",
}
SPLITS = {"train": 0, "eval": 1}


# ---------------------------------------------------------------------------------------------
# Layout (in grid cells; [r0, c0, r1, c1) half-open)


def layout(grid: int = 27) -> dict[str, Any]:
    """Regions of the fixed layout, in cells: bar, centre, the two bottom corners."""
    if grid < 12:
        raise ValueError(f"grid={grid}: the layout needs at least 12 x 12 cells")
    bar_h = max(1, grid // 9)
    c = grid // 3
    c0 = (grid - c) // 2
    q = max(2, round(grid * 2 / 9))
    return {
        "bar": [1, 2, 1 + bar_h, grid - 2],
        "centre": [c0, c0, c0 + c, c0 + c],
        "corners": {
            "bottom-left": [grid - 1 - q, 1, grid - 1, 1 + q],
            "bottom-right": [grid - 1 - q, grid - 1 - q, grid - 1, grid - 1],
        },
    }


def detail_cells(grid: int = 27, dot: int = 1) -> list[tuple[int, int]]:
    """Top-left cells where a ``dot`` x ``dot`` dot may go: off the border and >= 2 cells away from
    every event region, so neither codec/resize bleed nor a pooling window mixes it with an event
    of another task."""
    lay = layout(grid)
    regions = [lay["bar"], lay["centre"], *lay["corners"].values()]
    out = []
    for r in range(1, grid - dot):
        for c in range(1, grid - dot):
            if all(r + dot + 2 <= r0 or r >= r1 + 2 or c + dot + 2 <= c0 or c >= c1 + 2
                   for r0, c0, r1, c1 in regions):
                out.append((r, c))
    return out


def _cell_size(size: int, grid: int) -> int:
    cell, rem = divmod(size, grid)
    if rem or cell < 1 or cell % 2:
        raise ValueError(f"size={size} must be an even multiple of grid={grid} (cell = size/grid "
                         f"native pixels, even so yuv420 chroma does not smear object edges)")
    return cell


# ---------------------------------------------------------------------------------------------
# Scene specs


def _spread(rng: np.random.Generator, n: int, span: int, length: int, gap: int) -> list[int]:
    """n sorted starts of ``length``-second events in [0, span) with >= ``gap`` empty seconds between."""
    free = span - n * length - (n - 1) * gap
    if free < 0:
        raise ValueError(f"{n} events of {length} s with {gap} s gaps do not fit in {span} s")
    picks = sorted(rng.choice(free + n, size=n, replace=False).tolist())
    return [p + i * (length + gap - 1) for i, p in enumerate(picks)]


def scene_spec(key: str, rng: np.random.Generator, seconds: int = 32, fps: int = 2, size: int = 108,
               grid: int = 27, max_count: int = 4, order_seconds: int = 2, dot: int = 2) -> dict[str, Any]:
    """One video's full description (everything :func:`render_frames` needs)."""
    _cell_size(size, grid)
    colours = list(PALETTE)
    lay = layout(grid)
    base = int(rng.integers(60, 111))
    spec: dict[str, Any] = {
        "video": key, "seconds": seconds, "fps": fps, "size": size, "grid": grid,
        "background": {
            "rgb": [int(np.clip(base + rng.integers(-12, 13), 0, 255)) for _ in range(3)],
            "gradient": int(rng.integers(-15, 16)),
            "axis": int(rng.integers(0, 2)),
        },
        "needle": {"second": int(rng.integers(0, seconds)), "colour": str(rng.choice(colours)),
                   "cells": lay["centre"]},
    }
    n = int(rng.integers(1, max_count + 1))
    spec["count"] = {"n": n, "seconds": _spread(rng, n, seconds, 1, 1), "cells": lay["bar"]}
    first, second = (str(c) for c in rng.choice(colours, size=2, replace=False))
    starts = _spread(rng, 2, seconds, order_seconds, 1)
    corner = str(rng.choice(sorted(lay["corners"])))
    spec["order"] = {
        "corner": corner, "cells": lay["corners"][corner],
        "events": [{"colour": first, "start": starts[0], "seconds": order_seconds},
                   {"colour": second, "start": starts[1], "seconds": order_seconds}],
    }
    cells = detail_cells(grid, dot)
    if not cells:
        raise ValueError(f"dot={dot}: no free place for a dot that size on a {grid}x{grid} grid")
    r, c = cells[int(rng.integers(0, len(cells)))]
    spec["detail"] = {"colour": str(rng.choice(colours)), "cell": [r, c], "size": dot}
    return spec


def answer(spec: dict[str, Any], task: str) -> str:
    """The one-word answer of ``task`` for a scene."""
    if task == "needle":
        return spec["needle"]["colour"]
    if task == "order":
        return spec["order"]["events"][0]["colour"]
    if task == "count":
        return str(spec["count"]["n"])
    if task == "detail":
        return spec["detail"]["colour"]
    raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


def answer_space(task: str, max_count: int = 4) -> list[str]:
    if task == "count":
        return [str(i) for i in range(1, max_count + 1)]
    if task in TASKS:
        return list(PALETTE)
    raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


def options(spec: dict[str, Any], task: str, rng: np.random.Generator, max_count: int = 4,
            n_options: int = 4) -> tuple[list[str], int]:
    """Correct answer + distinct distractors from the same space, correct position random.

    For ``order`` the other square's colour is always a distractor, so knowing which colours were
    in the corner is not enough: the order must be right.
    """
    right = answer(spec, task)
    pool = [a for a in answer_space(task, max_count) if a != right]
    forced: list[str] = []
    if task == "order":
        forced = [spec["order"]["events"][1]["colour"]]
        pool = [a for a in pool if a not in forced]
    k = n_options - 1 - len(forced)
    if k > len(pool):
        raise ValueError(f"task {task}: answer space too small for {n_options} options")
    distract = forced + [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    pos = int(rng.integers(0, n_options))
    opts = distract[:pos] + [right] + distract[pos:]
    return opts, pos


def vocabulary(max_count: int = 4) -> list[str]:
    """Every word in the corpus's questions and answers (for a word-level tokenizer)."""
    words = {w for q in QUESTIONS.values() for w in q.split()}
    words |= set(PALETTE) | {str(i) for i in range(1, max_count + 1)}
    return sorted(words)


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # one independent stream per (video, purpose): a corpus of n videos is a prefix of one of n+1
    return np.random.default_rng([seed, SPLITS[split], index, stream])


def make_corpus(out_dir: str | os.PathLike, n_train: int, n_eval: int, seed: int, seconds: int = 32,
                fps: int = 2, size: int = 108, grid: int = 27, max_count: int = 4, order_seconds: int = 2,
                dot: int = 2, tasks: Sequence[str] = TASKS) -> dict[str, Any]:
    """Write ``train.json``, ``eval.json`` and ``videos.json`` under ``out_dir``; return a summary.

    Deterministic in ``seed``. One record per (video, task); train and eval are different
    videos (different random streams and directories).

    Args:
        out_dir: directory of the three JSON files (created).
        n_train, n_eval: videos of the train and eval split (each gives one record per task).
        seed: the corpus's seed: each (split, video, purpose) draws its own stream from it.
        seconds: length of each video in seconds.
        fps: native frames per second of the rendered videos.
        size: native width and height in pixels (a multiple of ``grid``, an even cell size).
        grid: cells per side of the layout lattice (27: the encoder's patch grid).
        max_count: the most bar appearances of the count task (1..max_count).
        order_seconds: how long each of the order task's two squares shows.
        dot: side of the detail task's dot in cells.
        tasks: the tasks to ask about, any of needle, order, count, detail.
    """
    for t in tasks:
        if t not in QUESTIONS:
            raise ValueError(f"unknown task {t!r}; allowed: {', '.join(TASKS)}")
    if dot < 1:
        raise ValueError(f"dot={dot}: the detail dot needs at least one cell")
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"need n_train >= 1 and n_eval >= 1, got {n_train}, {n_eval}")
    if max_count < 1 or 2 * max_count - 1 > seconds:
        raise ValueError(f"max_count={max_count}: that many 1-s bars with 1-s gaps do not fit in {seconds} s")
    if order_seconds < 1 or 2 * order_seconds + 1 > seconds:
        raise ValueError(f"order_seconds={order_seconds}: two such events with a gap do not fit in {seconds} s")
    out_dir = Path(out_dir)
    specs: list[dict[str, Any]] = []
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for split, n in (("train", n_train), ("eval", n_eval)):
        for i in range(n):
            name = f"syn-{i:05d}"
            key = f"{split}/{name}.mp4"
            spec = scene_spec(key, _rng(seed, split, i, 0), seconds, fps, size, grid, max_count, order_seconds, dot)
            spec["split"] = split
            specs.append(spec)
            orng = _rng(seed, split, i, 1)
            for task in tasks:
                rid = f"{split}-{name}-{task}"
                if split == "train":
                    train.append({"id": rid, "video": key, "conversations": [
                        {"from": "human", "value": f"<video>\n{QUESTIONS[task]}"},
                        {"from": "gpt", "value": answer(spec, task)}], "task_type": task})
                else:
                    opts, pos = options(spec, task, orng, max_count)
                    evals.append({"id": rid, "video": key, "question": QUESTIONS[task], "options": opts,
                                  "answer": pos, "task_type": task})
    videos = {
        "seed": seed, "seconds": seconds, "fps": fps, "size": size, "grid": grid,
        "palette": {k: list(v) for k, v in PALETTE.items()}, "bar_rgb": list(BAR_RGB),
        "tasks": list(tasks), "videos": specs,
    }
    write_json_atomic(out_dir / "videos.json", videos)
    write_json_atomic(out_dir / "train.json", train)
    write_json_atomic(out_dir / "eval.json", evals)
    return {"train_records": len(train), "eval_records": len(evals), "videos": len(specs)}


# ---------------------------------------------------------------------------------------------
# Rendering


def _paint(img: np.ndarray, cells: Sequence[int], cell: int, rgb: Sequence[int]) -> None:
    r0, c0, r1, c1 = cells
    img[r0 * cell:r1 * cell, c0 * cell:c1 * cell] = rgb


def render_frames(spec: dict[str, Any], palette: dict[str, Sequence[int]] | None = None,
                  bar_rgb: Sequence[int] = BAR_RGB) -> np.ndarray:
    """``uint8 [seconds * fps, size, size, 3]``: the scene, frame j showing second ``j // fps``."""
    palette = palette or PALETTE
    size, fps, seconds, grid = spec["size"], spec["fps"], spec["seconds"], spec["grid"]
    cell = _cell_size(size, grid)
    bg = spec["background"]
    ramp = np.linspace(-1.0, 1.0, size) * bg["gradient"]
    ramp = ramp[:, None] if bg["axis"] == 0 else ramp[None, :]
    base = np.clip(np.asarray(bg["rgb"], float)[None, None, :] + ramp[..., None], 0, 255).astype(np.uint8)
    base = np.ascontiguousarray(np.broadcast_to(base, (size, size, 3)))
    r, c = spec["detail"]["cell"]
    d = spec["detail"].get("size", 1)
    _paint(base, [r, c, r + d, c + d], cell, palette[spec["detail"]["colour"]])

    # what is on screen in each second
    per_second: list[list[tuple[Sequence[int], Sequence[int]]]] = [[] for _ in range(seconds)]
    per_second[spec["needle"]["second"]].append((spec["needle"]["cells"], palette[spec["needle"]["colour"]]))
    for s in spec["count"]["seconds"]:
        per_second[s].append((spec["count"]["cells"], bar_rgb))
    for ev in spec["order"]["events"]:
        for s in range(ev["start"], ev["start"] + ev["seconds"]):
            per_second[s].append((spec["order"]["cells"], palette[ev["colour"]]))
    frames = np.empty((seconds * fps, size, size, 3), np.uint8)
    for s, items in enumerate(per_second):
        img = frames[s * fps]
        img[:] = base
        for cells, rgb in items:
            _paint(img, cells, cell, rgb)
        frames[s * fps + 1:(s + 1) * fps] = img
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, crf: int = 12,
              preset: str = "veryfast") -> None:
    """H.264 yuv420p mp4 with PyAV in-process (spawning ffmpeg per file is far slower); atomic."""
    import av

    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
            stream.thread_count = 1  # parallelism comes from shards; one thread is deterministic
            for f in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())


def load_videos_json(videos_json: str | os.PathLike) -> dict[str, Any]:
    with open(videos_json) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "videos" not in data:
        raise ValueError(f"{videos_json}: not a videos.json (expected an object with 'videos')")
    return data


def render_shard(videos_json: str | os.PathLike, video_root: str | os.PathLike, split: str, shard: int,
                 n_shards: int, manifest_out: str | os.PathLike, crf: int = 12) -> list[str]:
    """Render the shard's videos (contiguous chunk of the split's sorted keys) to
    ``video_root/<key>`` and write a manifest ``{"split","shard","n_shards","videos"}``.

    Args:
        videos_json: the scene specs (``videos.json`` of :func:`make_corpus`).
        video_root: where the mp4 files go, as ``<video_root>/<key>``.
        split: the split whose videos to render (``train`` or ``eval``).
        shard, n_shards: this shard's index among ``n_shards`` contiguous chunks of the sorted keys.
        manifest_out: the manifest JSON to write once every video of the shard is rendered.
        crf: x264 constant rate factor (lower: closer to lossless).
    """
    data = load_videos_json(videos_json)
    specs = {v["video"]: v for v in data["videos"] if v["video"].startswith(f"{split}/")}
    if not specs:
        raise ValueError(f"{videos_json}: no videos in split {split!r}")
    keys = shard_slice(sorted(specs), n_shards, shard)
    palette = {k: tuple(v) for k, v in data.get("palette", PALETTE).items()}
    bar = tuple(data.get("bar_rgb", BAR_RGB))
    for key in keys:
        spec = specs[key]
        write_mp4(Path(video_root) / key, render_frames(spec, palette, bar), spec["fps"], crf)
    write_json_atomic(manifest_out, {"split": split, "shard": shard, "n_shards": n_shards, "videos": keys})
    return keys


# ---------------------------------------------------------------------------------------------
# A pixel-rule oracle: the answers read back from decoded frames (proof the mp4 keeps them)


def _nearest_colour(rgb: np.ndarray, palette: dict[str, Sequence[int]]) -> str:
    names = list(palette)
    d = ((np.asarray([palette[n] for n in names], float) - rgb[None, :]) ** 2).sum(1)
    return names[int(d.argmin())]


def oracle_answers(frames: np.ndarray, grid: int = 27, palette: dict[str, Sequence[int]] | None = None,
                   sat_min: float = 100.0) -> dict[str, str | None]:
    """Answers from frames ``[F, S, S, 3]`` (1 fps, any S divisible by grid) by simple pixel rules.

    Saturation (max - min channel) separates palette colours from the grey background. It needs
    the frames that show the events: on a frame subset it says what an ideal reader of those
    frames could know (None where a colour was never seen).
    """
    palette = palette or PALETTE
    cell = frames.shape[1] // grid
    cells = frames.reshape(frames.shape[0], grid, cell, grid, cell, 3).astype(float).mean((2, 4))  # [F,g,g,3]
    sat = cells.max(-1) - cells.min(-1)
    lay = layout(grid)

    def region(c: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        r0, c0, r1, c1 = c
        inner = cells[:, r0 + 1:r1 - 1, c0 + 1:c1 - 1].mean((1, 2))  # [F,3], away from edge bleed
        return inner, inner.max(-1) - inner.min(-1)

    out: dict[str, str | None] = {}
    rgb, s = region(lay["centre"])
    hit = np.flatnonzero(s > sat_min)
    out["needle"] = _nearest_colour(rgb[hit[0]], palette) if len(hit) else None

    r0, c0, r1, c1 = lay["bar"]
    bright = cells[:, r0:r1, c0 + 1:c1 - 1].mean((1, 2, 3))
    on = bright > 180
    runs = int(on[0]) + int((on[1:] & ~on[:-1]).sum())
    out["count"] = str(runs)

    first = None
    for corner in lay["corners"].values():
        rgb, s = region(corner)
        hit = np.flatnonzero(s > sat_min)
        if len(hit) and (first is None or hit[0] < first[0]):
            first = (hit[0], _nearest_colour(rgb[hit[0]], palette))
    out["order"] = first[1] if first else None

    allowed = np.zeros((grid, grid), bool)
    for r, c in detail_cells(grid):
        allowed[r, c] = True
    static = np.where(allowed, sat[0], -1.0)
    r, c = np.unravel_index(int(static.argmax()), static.shape)
    out["detail"] = _nearest_colour(cells[0, r, c], palette) if static[r, c] > sat_min / 2 else None
    return out
