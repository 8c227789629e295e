"""Reading videos with decord: which frames (1 fps, then uniform), robust errors, frame shards.

Frame selection follows the paper (paper-notes §2): decode at 1 fps, then pick ``max_frames``
uniformly with :func:`visctx.context.uniform_indices` -- the same rule the visual-context operators
use, so "frame i" means the same thing at every stage. Short videos are *forced* to yield
``max_frames`` by repeating frames (the paper's "sampling forced"), so every video gives a
fixed-shape array and a feature cache can be one dense tensor.

decord's failure modes are a zoo (platform-notes): ``RuntimeError`` at open for missing,
zero-byte or garbage files, ``decord._ffi.base.DECORDError`` (not a ``RuntimeError``) at open or at
decode for corruption, ``IndexError`` past the end. Every one becomes a :class:`VideoError` naming
the file and the step that failed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np

from visctx.context import uniform_indices
from visctx.files import atomic_path, load_npy, write_json_atomic  # noqa: F401  (the shards' writers use them)
from visctx.fresh import write_reads

T_ = TypeVar("T_")


class VideoError(ValueError):
    """A video could not be opened or decoded; the message names the file and the failing step."""


# ---------------------------------------------------------------------------------------------
# Shards


def shard_slice(items: Sequence[T_], n_shards: int, shard: int) -> list[T_]:
    """Contiguous chunk ``shard`` of ``n_shards`` nearly equal chunks (sizes differ by at most 1).

    Contiguous (not strided) so that shard files concatenated in order keep the sorted order.
    """
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in range(n_shards={n_shards})")
    n = len(items)
    start = shard * n // n_shards
    stop = (shard + 1) * n // n_shards
    return list(items[start:stop])


# ---------------------------------------------------------------------------------------------
# Frame selection and decoding


def frame_indices(n_frames: int, native_fps: float, fps: float | None = 1.0,
                  max_frames: int | None = 32) -> list[int]:
    """Sorted native frame indices: the ``fps`` timestamps, then uniformly ``max_frames`` of them.

    Timestamps are ``t = i / fps`` for ``t < n_frames / native_fps``; each maps to native index
    ``round(t * native_fps)`` (half up, clamped to the last frame). ``fps`` None/0 keeps every
    native frame. The candidates are then reduced (or, for short videos, *forced* up by
    repetition) to exactly ``max_frames`` with :func:`uniform_indices`; ``max_frames`` None keeps
    them all.
    """
    if n_frames < 1:
        raise ValueError(f"a video needs at least one frame, got n_frames={n_frames}")
    if fps:
        if not native_fps or native_fps <= 0:
            raise ValueError(f"native_fps must be positive to sample at {fps} fps, got {native_fps}")
        duration = n_frames / native_fps
        n_ts = max(1, math.ceil(duration * fps - 1e-9))
        cand = [min(n_frames - 1, math.floor(i / fps * native_fps + 0.5)) for i in range(n_ts)]
    else:
        cand = list(range(n_frames))
    if max_frames:
        cand = [cand[i] for i in uniform_indices(len(cand), max_frames)]
    return sorted(cand)


def _decord_errors() -> tuple[type[BaseException], ...]:
    errs: tuple[type[BaseException], ...] = (RuntimeError, IndexError, OSError)
    try:
        from decord._ffi.base import DECORDError

        errs = errs + (DECORDError,)
    except ImportError:  # pragma: no cover - decord layout changed
        pass
    return errs


def _open(path: str | os.PathLike, size: int | None, num_threads: int):
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: video file is empty (0 bytes)")
    kwargs = {"width": size, "height": size} if size else {}
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads, **kwargs)
        n = len(vr)
    except _decord_errors() as e:
        raise VideoError(f"{path}: decord could not open the video ({type(e).__name__}: {_first_line(e)})") from e
    if n < 1:
        raise VideoError(f"{path}: video has no frames")
    return vr


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _decode(vr, path: str | os.PathLike, indices: Sequence[int], size: int | None = None,
            num_threads: int = 1) -> np.ndarray:
    """Decode ``indices`` (any order, repeats allowed) decoding each unique frame once, sorted."""
    n = len(vr)
    bad = [i for i in indices if not 0 <= int(i) < n]
    if bad:
        raise VideoError(f"{path}: frame index {bad[0]} is outside the video's {n} frames")
    uniq = sorted({int(i) for i in indices})  # sorted: unsorted get_batch is ~15x slower
    try:
        batch = vr.get_batch(uniq).asnumpy()
    except _decord_errors() as e:
        if "DECORDArrayCopyFromTo" not in str(e):
            raise VideoError(f"{path}: decoding frames {uniq[0]}..{uniq[-1]} failed "
                             f"({type(e).__name__}: {_first_line(e)})") from e
        batch = _decode_odd_width(path, uniq, size, num_threads)
    row = {i: r for r, i in enumerate(uniq)}
    return batch[[row[int(i)] for i in indices]]


def _decode_odd_width(path: str | os.PathLike, uniq: list[int], size: int | None, num_threads: int) -> np.ndarray:
    """Work around a decord 0.6 bug: output widths 4, 6, 8, 12, 16, 24, 48, 72 (measured; odd
    widths always worked) fail to copy. Decode one pixel wider, then resize back (bilinear,
    antialiased) -- only these sizes take this path, so pixels differ slightly from decord's own."""
    import decord
    import torch

    if size:
        h = w = size
    else:
        import av

        try:
            with av.open(str(path)) as c:
                h, w = c.streams.video[0].codec_context.height, c.streams.video[0].codec_context.width
        except Exception as e:  # noqa: BLE001 - any PyAV failure is a bad file here
            raise VideoError(f"{path}: could not read the frame size ({type(e).__name__}: {e})") from e
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads, width=w + 1, height=h)
        batch = vr.get_batch(uniq).asnumpy()
    except _decord_errors() as e:
        raise VideoError(f"{path}: decoding frames {uniq[0]}..{uniq[-1]} at width {w} failed "
                         f"({type(e).__name__}: {_first_line(e)})") from e
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def read_frames(path: str | os.PathLike, indices: Sequence[int], size: int | None = None,
                num_threads: int = 1) -> np.ndarray:
    """``uint8 [len(indices), size, size, 3]`` RGB frames, in the order of ``indices``.

    decord resizes while decoding (``size`` None keeps the native size). Raises
    :class:`VideoError` for anything decord cannot open or decode, or an index out of range.
    """
    vr = _open(path, size, num_threads)
    return _decode(vr, path, indices, size, num_threads)


def read_video(path: str | os.PathLike, fps: float | None = 1.0, max_frames: int | None = 32,
               size: int | None = 54, num_threads: int = 1) -> tuple[np.ndarray, list[int]]:
    """Open once, select frames with :func:`frame_indices`, decode: ``(frames, native indices)``."""
    vr = _open(path, size, num_threads)
    try:
        native_fps = float(vr.get_avg_fps())
    except _decord_errors() as e:
        raise VideoError(f"{path}: could not read the frame rate ({_first_line(e)})") from e
    try:
        idx = frame_indices(len(vr), native_fps, fps, max_frames)
    except ValueError as e:  # e.g. a frame rate of 0 in the container
        raise VideoError(f"{path}: cannot select frames ({e})") from e
    return _decode(vr, path, idx, size, num_threads), idx


# ---------------------------------------------------------------------------------------------
# Corpus -> frame shards


def corpus_videos(corpus_json: str | os.PathLike) -> list[str]:
    """Unique sorted ``video`` keys of a corpus JSON (train-format or eval-format records)."""
    corpus_json = Path(corpus_json)
    with open(corpus_json) as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"{corpus_json}: expected a JSON list of records, got {type(records).__name__}")
    keys = set()
    for i, rec in enumerate(records):
        video = rec.get("video") if isinstance(rec, dict) else None
        if not isinstance(video, str) or not video:
            rid = rec.get("id") if isinstance(rec, dict) else None
            raise ValueError(f"{corpus_json}: record {i} (id={rid!r}) has no 'video' field")
        keys.add(video)
    return sorted(keys)


def extract_shard(corpus_json: str | os.PathLike, video_root: str | os.PathLike, shard: int, n_shards: int,
                  out_npy: str | os.PathLike, out_json: str | os.PathLike, fps: float | None = 1.0,
                  max_frames: int = 32, size: int = 54, num_threads: int = 1) -> dict:
    """Decode the shard's videos to ``uint8 [n, F, S, S, 3]`` (.npy) plus its index (.json).

    Rows follow the shard's slice of the corpus's sorted unique video keys, minus the videos that
    cannot be read: one bad file must not cost the whole shard (nor a corpus of thousands), so
    each :class:`VideoError` is recorded under ``"quarantined": [{video, path, reason}]`` and the
    video left out (whether that many losses are acceptable is decided per split, by
    :func:`visctx.quarantine.split_report`). Videos with fewer distinct frames than ``max_frames``
    are kept (frames repeated: the paper's "sampling forced") and listed under ``"short"``.
    Written straight into a temporary memmap (a shard need not fit in memory twice) and renamed
    when complete; only when videos were quarantined are the good rows copied into a smaller one.

    Args:
        corpus_json: the instruction or evaluation JSON whose videos to decode.
        video_root: directory the records' video paths are relative to.
        shard, n_shards: this shard's index among ``n_shards`` contiguous chunks of the sorted video
            keys.
        out_npy, out_json: the frame array and its index (videos, quarantined, short).
        fps: decode timestamps per second before the uniform pick (0 or None: every native frame).
        max_frames: frames kept per video (F), uniformly over the decoded timestamps.
        size: side in pixels each frame is resized to (S; the encoder's input).
        num_threads: decord's decoding threads.
    """
    keys = shard_slice(corpus_videos(corpus_json), n_shards, shard)
    good: list[str] = []
    quarantined: list[dict] = []
    short: list[dict] = []
    shape = (max_frames, size, size, 3)
    with atomic_path(out_npy) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keys), *shape))
        for key in keys:
            path = Path(video_root) / key
            try:
                frames, idx = read_video(path, fps, max_frames, size, num_threads)
            except VideoError as e:
                quarantined.append({"video": key, "path": str(path), "reason": str(e)})
                print(f"quarantined {key}: {e}", flush=True)
                continue
            arr[len(good)] = frames
            good.append(key)
            if len(set(idx)) < max_frames:
                short.append({"video": key, "path": str(path), "frames_available": len(set(idx)),
                              "frames_requested": int(max_frames)})
        arr.flush()
        if len(good) < len(keys):
            with atomic_path(tmp) as tmp2:  # replaces tmp with the good rows only
                kept = np.lib.format.open_memmap(tmp2, mode="w+", dtype=np.uint8, shape=(len(good), *shape))
                for row in range(len(good)):
                    kept[row] = arr[row]
                kept.flush()
                del kept
        del arr
    meta = {"videos": good, "frames": int(max_frames), "size": int(size), "fps": fps,
            "video_root": str(video_root),  # which files: a video shared by two splits is visible as such
            "quarantined": quarantined, "short": short}
    write_json_atomic(out_json, meta)
    # the videos are what the frames were made from: a truncated or replaced one reruns this shard
    write_reads(out_json, (Path(video_root) / key for key in keys))
    return meta
