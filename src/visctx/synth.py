"""The embedded default's data: synthetic videos whose information is graded and scale-free.

A video is a textured grey background with six objects, each a coloured square of ``side`` x
``side`` cells of the 27 x 27 patch grid, visible for its own seconds, inside its task's *zone*. Sizes and durations are
drawn from heavy-tailed (power-law) distributions, so there are many small, brief things and a
few large, long ones: a little more T or M always reveals a little more, as in natural video,
instead of the step functions of a corpus with one size and one duration per question. Each
object answers one question; the five question types mirror the benchmarks:

==========  ======================================================  ===========================
task        what the video shows                                    what answering takes
==========  ======================================================  ===========================
needle      one flash of a colour, for d seconds (retrieval)        a context token that sees it
count       a white blinker that shows n = 1..4 times               every showing, told apart
order       two colours, A then B, at two places                    both, in order
detail      a static object for the whole video (fine detail)       a token that sees it
episodic    one place that turns c1 -> c2 -> c3; "what was before   c1 and c2, in order
            c2" (what happened before an event)
==========  ======================================================  ===========================

Zones (:func:`zones`): the grid is cut into three bands of rows; the top band holds the needle
(left) and the blinker (right), the middle band both squares of the pair, the bottom band the
episodic sign (left) and the still object (right). A question names a role ("the flash", "the
pair"), and without the layout nothing in the pixels tells which transient square plays it: the
needle and the pair's two squares are alike, so even a reader that saw all three could do no
better than a guess among them, while the ceiling credits a seen needle with its colour. The zones
make the role visible, so the ceiling is what a reader of the context can reach; they cap a side
at a band's height less one cell (8 of 27).

Temporal redundancy: an event lasts several frames, so temporal pooling keeps diluted evidence of
it where sampling can miss it; spatial detail at many scales: pooling blurs the small objects and
keeps the large. What exactly an arm's context can recover is :mod:`visctx.ceiling`, computed from
these specs. Geometry is in cells of ``size / grid`` native pixels (4 at 108 px: one patch after
decord resizes to 54 px, an even number of pixels so yuv420 chroma never straddles an edge);
events last whole seconds, native frame j showing second ``j // fps``. The background carries a
static per-cell grey texture (``noise``), the noise a pooled token must rise above.

Questions end in a type-specific word and answers are single words (a 6-colour palette or a
digit): a tiny LLM could not learn the answer prior when every question ended in the same token
(platform-notes). Nothing here is tuned to make a finding of the paper come out.

Files: ``make_corpus`` writes ``train.json`` (LLaVA-style), ``eval.json`` (4-option multiple
choice) and ``videos.json`` (the scene specs); ``render_shard`` turns specs into mp4 files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visctx.files import atomic_path, write_json_atomic
from visctx.video import shard_slice

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
WHITE = (255, 255, 255)
TASKS = ("needle", "count", "order", "detail", "episodic")
QUESTIONS = {  # no trailing "?": the last token must differ between types
    "needle": "What colour was the flash",
    "count": "How many times did the white square appear",
    "order": "Which colour appeared first of the pair",
    "detail": "What colour is the still object",
    "episodic": "Before {colour} which colour was the sign",
}
SPLITS = {"train": 0, "eval": 1}
MAX_COUNT = 4


# ---------------------------------------------------------------------------------------------
# Heavy-tailed draws and placement


def power_law(rng: np.random.Generator, lo: int, hi: int, exponent: float) -> int:
    """An integer in [lo, hi] with P(x) proportional to x^-exponent."""
    xs = np.arange(lo, hi + 1, dtype=float)
    p = xs ** -float(exponent)
    return int(rng.choice(xs.astype(int), p=p / p.sum()))


def _cell_size(size: int, grid: int) -> int:
    cell, rem = divmod(size, grid)
    if rem or cell < 1 or cell % 2:
        raise ValueError(f"size={size} must be an even multiple of grid={grid} (cell = size/grid "
                         f"native pixels, even so yuv420 chroma does not smear object edges)")
    return cell


def zones(grid: int = 27) -> dict[str, tuple[int, int, int, int]]:
    """Each task's zone ``(row0, row1, col0, col1)`` (ends exclusive): three bands of ``grid // 3``
    rows, the top and bottom ones split in two halves with a one-column gutter."""
    band, half = grid // 3, (grid - 1) // 2
    return {"needle": (0, band, 0, half), "count": (0, band, grid - half, grid),
            "order": (band, 2 * band, 0, grid),
            "episodic": (2 * band, grid, 0, half), "detail": (2 * band, grid, grid - half, grid)}


def max_side_for(grid: int) -> int:
    """The largest side a zone takes: a band's height less one cell (a gap to the next band)."""
    return grid // 3 - 1


def _place(rng: np.random.Generator, taken: np.ndarray, side: int,
           zone: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """A free ``side`` x ``side`` square (1-cell gap to every other object) inside ``zone`` (rows
    r0..r1, columns c0..c1); the side shrinks until one fits. Marks it taken; returns (row, col, side)."""
    r0, r1, c0, c1 = zone
    while side >= 1:
        free = [(r, c) for r in range(r0, r1 - side + 1) for c in range(c0, c1 - side + 1)
                if not taken[max(0, r - 1):r + side + 1, max(0, c - 1):c + side + 1].any()]
        if free:
            r, c = free[int(rng.integers(0, len(free)))]
            taken[r:r + side, c:c + side] = True
            return r, c, side
        side -= 1
    raise ValueError(f"no free cell left in zone {zone} for another object")


def _events(rng: np.random.Generator, seconds: int, n: int, d_max: int, exponent: float,
            gap: int = 1) -> list[tuple[int, int]]:
    """n non-overlapping (start, duration) events in [0, seconds), in order, >= ``gap`` s apart,
    heavy-tailed durations (shortened until they fit)."""
    durs = [power_law(rng, 1, d_max, exponent) for _ in range(n)]
    while sum(durs) + gap * (n - 1) > seconds:
        durs[int(np.argmax(durs))] -= 1
    free = seconds - sum(durs) - gap * (n - 1)
    slack = sorted(rng.integers(0, free + 1, size=n).tolist())  # free seconds before each event
    return [(slack[i] + sum(durs[:i]) + gap * i, d) for i, d in enumerate(durs)]


def scene_spec(key: str, rng: np.random.Generator, seconds: int = 32, fps: int = 2, size: int = 108,
               grid: int = 27, max_side: int = 8, size_exponent: float = 0.8, max_duration: int = 8,
               duration_exponent: float = 1.0, noise: int = 24) -> dict[str, Any]:
    """One video's full description: what :func:`render_frames` draws and :mod:`visctx.ceiling`
    reads. Every object is ``{"colour", "cell": [r, c], "side", "shows": [[start, seconds], ...]}``."""
    _cell_size(size, grid)
    colours = list(PALETTE)
    taken = np.zeros((grid, grid), bool)
    zone = zones(grid)

    def obj(task: str, colour: str, shows: list[tuple[int, int]]) -> dict[str, Any]:
        r, c, side = _place(rng, taken, power_law(rng, 1, max_side, size_exponent), zone[task])
        return {"colour": colour, "cell": [r, c], "side": side, "shows": [list(s) for s in shows]}

    base = int(rng.integers(70, 121))
    spec: dict[str, Any] = {
        "video": key, "seconds": seconds, "fps": fps, "size": size, "grid": grid, "noise": noise,
        "background": {"grey": base, "texture_seed": int(rng.integers(0, 2**31))},
    }
    spec["needle"] = obj("needle", str(rng.choice(colours)), _events(rng, seconds, 1, max_duration, duration_exponent))
    n = int(rng.integers(1, MAX_COUNT + 1))
    spec["count"] = obj("count", "white", _events(rng, seconds, n, 3, duration_exponent)) | {"n": n}
    first, second = (str(c) for c in rng.choice(colours, size=2, replace=False))
    (s0, d0), (s1, d1) = _events(rng, seconds, 2, max_duration, duration_exponent)
    spec["order"] = [obj("order", first, [(s0, d0)]), obj("order", second, [(s1, d1)])]
    spec["detail"] = obj("detail", str(rng.choice(colours)), [(0, seconds)])
    ep = [str(c) for c in rng.choice(colours, size=3, replace=False)]
    shows = _events(rng, seconds, 3, max_duration, duration_exponent, gap=0)
    place = obj("episodic", ep[0], [shows[0]])  # one place; its colour changes from episode to episode
    spec["episodic"] = {"cell": place["cell"], "side": place["side"],
                        "episodes": [{"colour": c, "shows": [list(s)]} for c, s in zip(ep, shows)]}
    return spec


def objects(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every coloured thing of a scene as ``{"task", "colour", "cell", "side", "shows"}`` (an
    episode of the episodic place is one thing)."""
    out = [{"task": "needle", **spec["needle"]}, {"task": "count", **spec["count"]},
           {"task": "order", "which": 0, **spec["order"][0]}, {"task": "order", "which": 1, **spec["order"][1]},
           {"task": "detail", **spec["detail"]}]
    e = spec["episodic"]
    out += [{"task": "episodic", "which": i, "cell": e["cell"], "side": e["side"], **ep}
            for i, ep in enumerate(e["episodes"])]
    return out


def question(spec: dict[str, Any], task: str) -> str:
    if task == "episodic":
        return QUESTIONS[task].format(colour=spec["episodic"]["episodes"][1]["colour"])
    return QUESTIONS[task]


def answer(spec: dict[str, Any], task: str) -> str:
    """The one-word answer of ``task`` for a scene."""
    if task == "needle":
        return spec["needle"]["colour"]
    if task == "count":
        return str(spec["count"]["n"])
    if task == "order":
        return spec["order"][0]["colour"]
    if task == "detail":
        return spec["detail"]["colour"]
    if task == "episodic":
        return spec["episodic"]["episodes"][0]["colour"]
    raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


def answer_space(task: str, spec: dict[str, Any] | None = None) -> list[str]:
    """The answers a question of ``task`` can have (the episodic question names one colour, which
    is not its answer)."""
    if task == "count":
        return [str(i) for i in range(1, MAX_COUNT + 1)]
    if task == "episodic" and spec is not None:
        return [c for c in PALETTE if c != spec["episodic"]["episodes"][1]["colour"]]
    if task in TASKS:
        return list(PALETTE)
    raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")


def options(spec: dict[str, Any], task: str, rng: np.random.Generator, n_options: int = 4) -> tuple[list[str], int]:
    """Correct answer + distinct distractors from the same space, correct position random.

    For ``order`` the other colour of the pair is always a distractor, so knowing which colours
    were shown is not enough: the order must be right.
    """
    right = answer(spec, task)
    pool = [a for a in answer_space(task, spec) if a != right]
    forced: list[str] = []
    if task == "order":
        forced = [spec["order"][1]["colour"]]
        pool = [a for a in pool if a not in forced]
    k = n_options - 1 - len(forced)
    distract = forced + [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
    pos = int(rng.integers(0, n_options))
    return distract[:pos] + [right] + distract[pos:], pos


def vocabulary() -> list[str]:
    """Every word in the corpus's questions and answers (for a word-level tokenizer)."""
    words = {w for q in QUESTIONS.values() for w in q.replace("{colour}", "").split()}
    words |= set(PALETTE) | {str(i) for i in range(1, MAX_COUNT + 1)}
    return sorted(words)


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    # one independent stream per (video, purpose): a corpus of n videos is a prefix of one of n+1
    return np.random.default_rng([seed, SPLITS[split], index, stream])


def make_corpus(out_dir: str | os.PathLike, n_train: int, n_eval: int, seed: int, seconds: int = 32,
                fps: int = 2, size: int = 108, grid: int = 27, max_side: int = 8, size_exponent: float = 0.8,
                max_duration: int = 8, duration_exponent: float = 1.0, noise: int = 24,
                tasks: Sequence[str] = TASKS) -> dict[str, Any]:
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
        max_side: the largest object side in cells (sides 1..max_side, heavy-tailed).
        size_exponent: P(side) proportional to side^-size_exponent.
        max_duration: the longest event in seconds (1..max_duration, heavy-tailed).
        duration_exponent: P(duration) proportional to duration^-duration_exponent.
        noise: amplitude of the background's static grey texture (per cell, +-noise).
        tasks: the tasks to ask about, any of needle, count, order, detail, episodic.
    """
    for t in tasks:
        if t not in QUESTIONS:
            raise ValueError(f"unknown task {t!r}; allowed: {', '.join(TASKS)}")
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"need n_train >= 1 and n_eval >= 1, got {n_train}, {n_eval}")
    if not 1 <= max_side <= max_side_for(grid):
        raise ValueError(f"max_side={max_side}: an object must fit its task's zone, a band of {grid // 3} of "
                         f"the {grid}-cell grid's rows with a gap (at most {max_side_for(grid)})")
    if seconds < 2 * MAX_COUNT + 3 or max_duration < 1:
        raise ValueError(f"seconds={seconds}, max_duration={max_duration}: the events do not fit")
    out_dir = Path(out_dir)
    specs: list[dict[str, Any]] = []
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for split, n in (("train", n_train), ("eval", n_eval)):
        for i in range(n):
            name = f"syn-{i:05d}"
            key = f"{split}/{name}.mp4"
            spec = scene_spec(key, _rng(seed, split, i, 0), seconds, fps, size, grid, max_side, size_exponent,
                              max_duration, duration_exponent, noise)
            spec["split"] = split
            specs.append(spec)
            orng = _rng(seed, split, i, 1)
            for task in tasks:
                rid = f"{split}-{name}-{task}"
                if split == "train":
                    train.append({"id": rid, "video": key, "conversations": [
                        {"from": "human", "value": f"<video>\n{question(spec, task)}"},
                        {"from": "gpt", "value": answer(spec, task)}], "task_type": task})
                else:
                    opts, pos = options(spec, task, orng)
                    evals.append({"id": rid, "video": key, "question": question(spec, task), "options": opts,
                                  "answer": pos, "task_type": task})
    videos = {"seed": seed, "seconds": seconds, "fps": fps, "size": size, "grid": grid,
              "palette": {k: list(v) for k, v in PALETTE.items()}, "white": list(WHITE), "tasks": list(tasks),
              "videos": specs}
    write_json_atomic(out_dir / "videos.json", videos)
    write_json_atomic(out_dir / "train.json", train)
    write_json_atomic(out_dir / "eval.json", evals)
    return {"train_records": len(train), "eval_records": len(evals), "videos": len(specs)}


# ---------------------------------------------------------------------------------------------
# Rendering


def visible(thing: dict[str, Any], second: int) -> bool:
    return any(s <= second < s + d for s, d in thing["shows"])


def render_frames(spec: dict[str, Any], palette: dict[str, Sequence[int]] | None = None) -> np.ndarray:
    """``uint8 [seconds * fps, size, size, 3]``: the scene, frame j showing second ``j // fps``."""
    palette = {**(palette or PALETTE), "white": WHITE}
    size, fps, seconds, grid = spec["size"], spec["fps"], spec["seconds"], spec["grid"]
    cell = _cell_size(size, grid)
    bg = spec["background"]
    texture = np.random.default_rng(bg["texture_seed"]).integers(-spec["noise"], spec["noise"] + 1, (grid, grid))
    grey = np.clip(bg["grey"] + texture, 0, 255).astype(np.uint8)
    base = np.repeat(np.repeat(grey, cell, 0), cell, 1)[..., None].repeat(3, -1)
    things = objects(spec)
    frames = np.empty((seconds * fps, size, size, 3), np.uint8)
    for s in range(seconds):
        img = frames[s * fps]
        img[:] = base
        for t in things:
            if visible(t, s):
                r, c, side = *t["cell"], t["side"]
                img[r * cell:(r + side) * cell, c * cell:(c + side) * cell] = palette[t["colour"]]
        frames[s * fps + 1:(s + 1) * fps] = img
    return frames


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """BT.601 limited-range yuv420p planes of ``(n, h, w, 3)`` uint8 RGB frames, in exact integer
    arithmetic: ``(n, h * 3 // 2, w)``, each frame Y (h x w) then U and V (h/2 x w/2 each, from the
    mean RGB of each 2x2 block), the layout PyAV's ``VideoFrame.from_ndarray(..., "yuv420p")`` takes.

    Ours, not FFmpeg's: handed RGB, PyAV converts with swscale, whose SIMD paths differ by CPU and
    which once rendered the same frames to other bytes in one process than in another; x264 is
    bit-exact across its own SIMD paths, so the encoder gets planes no CPU feature can change.
    Coefficients: the 8-bit BT.601 approximations (Y 16-235, chroma 16-240), swscale's default for
    untagged RGB, so decoders that assume BT.601 give back the palette within a level or two."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (n, h, w, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}")
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {w}x{h}")
    rgb = frames.astype(np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    blocks = rgb.reshape(n, h // 2, 2, w // 2, 2, 3).sum(axis=(2, 4))  # 4x the 2x2 mean
    rs, gs, bs = blocks[..., 0], blocks[..., 1], blocks[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    planes = np.concatenate([y.reshape(n, -1), u.reshape(n, -1), v.reshape(n, -1)], axis=1)
    return planes.astype(np.uint8).reshape(n, h * 3 // 2, w)


# x264's CPU flags (its ``asm`` option) per pin level of :mod:`visctx.cpu`; ``off``: x264 detects
# them. x264 picks its SIMD kernels by CPU as torch and NumPy do, and they are not bit-exact with
# one another: on an AVX-512 Intel Xeon one of the default corpus's 800 videos (train/syn-00005)
# came out a byte shorter than on the AVX2 machine that made the committed data -- the very same
# frames decoded, other bits in the file, so another data hash in dvc.lock (2026-12-04).
X264_ASM = {"avx2": "AVX2", "default": "SSE2"}


def x264_options(crf: int = 12, preset: str = "veryfast") -> dict[str, str]:
    """The encoder options, with x264's kernels pinned to the CPU pin's level; a CPU below the
    pin is refused (x264 would die on an instruction it lacks)."""
    from visctx import cpu

    opts = {"crf": str(crf), "preset": preset}
    lv = cpu.level()
    if lv == "off":
        return opts
    if lv == "avx2" and "avx2" not in cpu.describe_host()["isa"]:
        raise cpu.CpuPinError(f"{cpu.PIN_VAR}={lv}, but this CPU has no AVX2 for x264's kernels; "
                              f"{cpu.PIN_VAR}=default computes with the baseline ones (other bytes)")
    return opts | {"x264-params": f"asm={X264_ASM[lv]}"}


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, crf: int = 12,
              preset: str = "veryfast") -> None:
    """H.264 yuv420p mp4 of ``(n, h, w, 3)`` uint8 RGB frames (even h, w), with PyAV in-process
    (spawning ffmpeg per file is far slower); atomic. The frames reach x264 as our own yuv420p
    planes (:func:`rgb_to_yuv420p`), so PyAV does no conversion (its reformatter is a no-op for a
    frame already in the stream's format and size), and x264's kernels are pinned
    (:func:`x264_options`)."""
    import av

    planes = rgb_to_yuv420p(frames)
    options = x264_options(crf, preset)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            stream.options = options
            stream.thread_count = 1  # parallelism comes from shards; one thread is deterministic
            for f in planes:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="yuv420p")))
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
    for key in keys:
        spec = specs[key]
        write_mp4(Path(video_root) / key, render_frames(spec, palette), spec["fps"], crf)
    write_json_atomic(manifest_out, {"split": split, "shard": shard, "n_shards": n_shards, "videos": keys})
    return keys


# ---------------------------------------------------------------------------------------------
# A pixel oracle: every object's colour read back from decoded frames (the mp4 keeps them)


def nearest_colour(rgb: np.ndarray, palette: dict[str, Sequence[int]] | None = None) -> str:
    palette = {**(palette or PALETTE), "white": WHITE}
    names = list(palette)
    d = ((np.asarray([palette[n] for n in names], float) - np.asarray(rgb, float)[None, :]) ** 2).sum(1)
    return names[int(d.argmin())]


def oracle_colours(frames: np.ndarray, spec: dict[str, Any], fps: float = 1.0) -> list[str]:
    """Each object's colour (in :func:`objects` order) decoded from ``frames`` ``[F, S, S, 3]``
    (``fps`` frames per second of the video, S divisible by the grid): the mean over the object's
    inner cells and the frames it shows in, nearest palette colour. Proof that the mp4 round trip
    keeps what the ceiling assumes is there."""
    grid = spec["grid"]
    cell = frames.shape[1] // grid
    cells = frames.reshape(frames.shape[0], grid, cell, grid, cell, 3).astype(float).mean((2, 4))
    out = []
    for t in objects(spec):
        r, c, side = *t["cell"], t["side"]
        inner = (slice(r + 1, r + side - 1), slice(c + 1, c + side - 1)) if side > 2 else (slice(r, r + side),
                                                                                           slice(c, c + side))
        fs = [j for j in range(frames.shape[0]) if visible(t, int(j / fps))]
        out.append(nearest_colour(cells[fs][:, inner[0], inner[1]].mean((0, 1, 2))) if fs else "")
    return out
