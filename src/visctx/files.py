"""File plumbing every stage shares: atomic writes (a killed job never leaves a half file behind),
checked ``.npy`` reads, content digests (what a resumed run compares, not paths), and timing
sidecars (wall times kept out of the results, so that a rerun writes the same bytes)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _tmp_beside(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


class atomic_path:
    """``with atomic_path(final) as tmp:`` write ``tmp``; it is renamed to ``final`` only on success."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.tmp = _tmp_beside(self.path)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")


def load_npy(path: str | os.PathLike, mmap_mode: str | None = "r") -> np.ndarray:
    """``np.load`` that first checks the file holds all the bytes its header promises.

    A copied or half-synced shard otherwise fails deep inside numpy ("mmap length is greater than
    file size", "cannot reshape") or, read without a memmap, not at all where it is short; the
    error here names the file and both sizes. Zero-row arrays are returned in memory (an empty
    file region cannot be memory-mapped).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)  # 3.0 differs only in the text encoding
            shape, _, dtype = read(f)
            offset = f.tell()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such .npy file") from None
    except (ValueError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a valid .npy file ({e})") from None
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise ValueError(f"{path}: truncated: {actual} bytes, expected {expected} "
                         f"(shape {tuple(shape)}, {dtype})")
    if math.prod(shape) == 0:
        return np.empty(shape, dtype)
    return np.load(path, mmap_mode=mmap_mode)


TIMING_SUFFIX = ".timing.json"  # ignored by DVC (.dvcignore) and by content_digest
STAMP = ".fresh.json"  # what made the outputs beside it (visctx.fresh): bookkeeping, not content
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"  # Snakemake's mtime carrier in a directory output


def timing_path(result: str | os.PathLike) -> Path:
    """Where a result file's wall time lives: ``eval/synthetic.json`` -> ``eval/synthetic.timing.json``.

    Why a sidecar: a time inside a result makes every rerun's bytes differ, and with them the
    DVC hash of every cached directory holding it (``dvc.lock`` changed on a fresh clone whose
    every table was byte-identical). Timings are for people and the performance harness; results
    and their digests leave them out."""
    p = Path(result)
    return p.with_name(p.name[: -len(p.suffix)] + TIMING_SUFFIX if p.suffix else p.name + TIMING_SUFFIX)


def write_timing(result: str | os.PathLike, seconds: float, **extra: Any) -> None:
    write_json_atomic(timing_path(result), {"seconds": round(float(seconds), 3), **extra})


def read_seconds(result: str | os.PathLike) -> float:
    """The wall time recorded beside ``result`` (:func:`write_timing`)."""
    path = timing_path(result)
    try:
        return float(json.loads(path.read_text())["seconds"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no timing recorded beside {result}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a timing record ({e})") from None


FULL_BYTES = 8 << 20  # files up to this size are hashed whole
BLOCKS, BLOCK = 64, 16 << 10


def content_digest(path: str | os.PathLike, file_digest: Callable[[Path], str] | None = None) -> str:
    """A digest of a file's or directory's content (16 hex digits): what a resumed run compares,
    so that a retrained base or a regenerated corpus at the same path is not mistaken for the old.

    Files up to 8 MiB are hashed whole; larger ones (feature shards, model weights at paper scale)
    by their size and 64 evenly spaced 16 KiB blocks, which any regeneration changes (hashing every
    byte of 600 MB of features would add a second to every arm's job). A directory is its files'
    relative paths and digests, in order, leaving out timing sidecars (a model retrained to the
    same bytes is the same model), freshness stamps and Snakemake's directory timestamp (dating a
    directory is no change to it); a name that is not on disk (a hub model id) is itself.
    ``file_digest``: how a directory's files are digested (a caching caller's; the same result).
    """
    if not str(path):
        raise ValueError("content_digest needs a path or a name, got ''")
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts
                        and not x.name.endswith(TIMING_SUFFIX) and x.name not in (STAMP, SNAKEMAKE_TIMESTAMP)):
            h.update(f"{f.relative_to(p)}\0{(file_digest or content_digest)(f)}\0".encode())
    elif p.is_file():
        size = p.stat().st_size
        with open(p, "rb") as fh:
            if size <= FULL_BYTES:
                h.update(fh.read())
            else:
                h.update(str(size).encode())
                for i in range(BLOCKS):
                    fh.seek(i * (size - BLOCK) // (BLOCKS - 1))
                    h.update(fh.read(BLOCK))
    else:
        h.update(f"name:{path}".encode())
    return h.hexdigest()[:16]
