"""Freshness by content: what a job was made from travels with its outputs, so a new workspace
reruns exactly the jobs whose inputs, params or code changed.

Snakemake decides what to rerun from modification times and from the records it keeps in
``.snakemake/`` (each output's params, code and input set). Neither survives a move: in a DVC
experiment's temporary workspace (``dvc exp run --temp``, ``--queue``), in a fresh clone whose
results come from the DVC cache, or after a checkout that restores byte-identical files, every
file is new, the mtimes are in no useful order and ``.snakemake/`` is empty -- an analysis-only
change scheduled the whole study (103 jobs), days of GPU time at paper scale.

So each job that finishes leaves a **stamp** beside its outputs (``.fresh.json`` in each output's
directory: git-tracked or DVC-cached with them, and deterministic, so a rerun writes the same
bytes): the digest of each output and of each input, plus Snakemake's own record of the job
less its times. A job may also name files it read that Snakemake does not see (a **depfile**,
as make and ninja have: ``.<output name>.reads`` beside it, a JSON list; frame extraction lists
its videos there).
Before Snakemake builds its DAG, :func:`restore` walks the stamps inputs-first:

* an output whose content and whose inputs' content are what its stamp says is dated just after
  its inputs, and Snakemake's record of it is restored from the stamp, so only a changed param,
  code or input set reruns it (Snakemake's own checks, now on the true record);
* an output whose inputs differ by content from what it was made from is dated before them and
  its Snakemake record is dropped (whose checksums of small inputs would vouch for them), so it
  reruns whatever the mtimes said;
* an output that is not what its stamp says (edited by hand) or has no stamp is left to
  Snakemake as before.

Why our own: Snakemake checksums only small files, never directories, and keeps the checksums in
``.snakemake/``; DVC decides by content but per stage, and each stage is a whole Snakemake run.
The restored record follows Snakemake's file persistence layout (record format 6, Snakemake 9,
pinned in ``requirements.lock``; ``tests/test_fresh.py`` fails if an upgrade changes it).
"""

from __future__ import annotations

import json
import os
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from pathlib import Path
from typing import Any, Iterable

from visctx.files import SNAKEMAKE_TIMESTAMP as TIMESTAMP
from visctx.files import STAMP, content_digest, write_json_atomic

READS_SUFFIX = ".reads"  # the depfile of <dir>/<name> is <dir>/.<name>.reads (hidden: no shard glob sees it)
# Snakemake's record of a job, less what differs between two runs that made the same bytes.
VOLATILE = ("starttime", "endtime", "job_hash", "external_jobid", "incomplete")
OFF = "VISCTX_NO_FRESH"  # set to 1: leave mtimes and records alone (the tests' control)


def reads_path(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.with_name(f".{p.name}{READS_SUFFIX}")


def write_reads(output: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Declare the files a job read besides its Snakemake inputs (the depfile of ``output``)."""
    write_json_atomic(reads_path(output), sorted({str(p) for p in paths}))


def _read_reads(output: Path) -> list[str]:
    path = reads_path(output)
    if not path.is_file():
        return []
    try:
        reads = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not a depfile (a JSON list of paths): {e}") from None
    if not isinstance(reads, list) or not all(isinstance(r, str) for r in reads):
        raise ValueError(f"{path}: not a depfile (a JSON list of paths)")
    return reads


# --- Snakemake's file persistence: .snakemake/metadata/<urlsafe base64 of the path, in chunks> ---

def _record_path(metadata: Path, key: str) -> Path:
    max_len = os.pathconf(metadata, "PC_NAME_MAX") if os.name == "posix" else 255
    b64 = urlsafe_b64encode(key.encode()).decode()
    chunks = [b64[i: i + max_len - 1] for i in range(0, len(b64), max_len - 1)]
    return metadata.joinpath(*(["@" + c for c in chunks[:-1]] + [chunks[-1]]))


def _record_key(metadata: Path, record_file: Path) -> str:
    parts = record_file.relative_to(metadata).parts
    return urlsafe_b64decode("".join(p[1:] if i < len(parts) - 1 else p for i, p in enumerate(parts))).decode()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stable(record: dict) -> dict:
    return {k: v for k, v in sorted(record.items()) if k not in VOLATILE}


# --- mtimes as Snakemake reads them (a directory: its .snakemake_timestamp, when it has one) ---

def _mtime(path: Path) -> float:
    if path.is_dir() and (path / TIMESTAMP).is_file():
        return (path / TIMESTAMP).stat().st_mtime
    return path.stat().st_mtime


def _set_mtime(path: Path, t: float) -> None:
    if path.is_dir():
        if (path / TIMESTAMP).is_file():
            os.utime(path / TIMESTAMP, (t, t))
        os.utime(path, (t, t))
    else:
        os.utime(path, (t, t))


class _Digests:
    """Content digests, each path once per call, kept in ``.snakemake/`` by (size, mtime, inode)
    between calls: the check before every Snakemake run then reads only what changed."""

    def __init__(self, cache_file: Path | None) -> None:
        self.cache_file = cache_file
        self.saved: dict[str, list] = (_read_json(cache_file) or {}) if cache_file else {}
        self.now: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self.now:
            self.now[path] = self._digest(Path(path))
        return self.now[path]

    def _digest(self, p: Path) -> str | None:
        if not p.exists():
            return None
        if p.is_dir():
            return content_digest(p, file_digest=lambda f: self._digest(f) or "")
        st = p.stat()
        key = [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.saved.get(str(p))
        if hit and hit[:3] == key:
            return hit[3]
        d = content_digest(p)
        self.saved[str(p)] = [*key, d]
        return d

    def forget(self, path: str) -> None:
        self.saved.pop(path, None)

    def save(self) -> None:
        if self.cache_file:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.cache_file, self.saved, indent=None)


def _stamp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(STAMP)) if root.is_dir() else []


def load_stamps(root: str | os.PathLike, workdir: str | os.PathLike = ".") -> dict[str, dict]:
    """Every stamped output under ``root``: ``{output path relative to workdir: entry}``."""
    stamps: dict[str, dict] = {}
    workdir = Path(workdir)
    for f in _stamp_files(workdir / root):
        data = _read_json(f)
        if not isinstance(data, dict):
            raise ValueError(f"{f}: not a freshness stamp (a JSON object of outputs); delete it to let "
                             f"Snakemake decide by mtimes")
        for name, entry in data.items():
            stamps[str((f.parent / name).relative_to(workdir))] = entry
    return stamps


def record(since: float | None = None, root: str | os.PathLike = "results", workdir: str | os.PathLike = ".",
           outputs: Iterable[str] | None = None) -> int:
    """Stamp outputs under ``root``: ``outputs`` (after a successful run: every output of the DAG,
    all of them current now, including what a killed earlier run finished but never stamped), or
    else every output whose job finished after ``since`` (after a failed run). A stamp holds the
    output's digest, its inputs' and depfile's digests and Snakemake's record; returns how many."""
    workdir = Path(workdir)
    metadata = workdir / ".snakemake" / "metadata"
    root_abs = (workdir / root).resolve()
    if outputs is None:
        since = since or 0.0
        outputs = [_record_key(metadata, f) for f in (metadata.rglob("*") if metadata.is_dir() else ())
                   if f.is_file() and f.stat().st_mtime >= since]
    digest = _Digests(workdir / ".snakemake" / "visctx-digests.json")
    by_dir: dict[Path, dict[str, dict]] = {}
    for key in sorted(set(outputs)):
        rec = _read_json(_record_path(metadata, key)) if metadata.is_dir() else None
        if not isinstance(rec, dict) or rec.get("incomplete") or (since and (rec.get("endtime") or 0) < since):
            continue
        out_abs = (workdir / key).resolve()
        if root_abs not in out_abs.parents or not out_abs.exists():
            continue
        inputs = {i: digest(str(workdir / i)) for i in (rec.get("input") or [])}
        inputs.update({r: digest(str(workdir / r)) for r in _read_reads(out_abs)})
        by_dir.setdefault(out_abs.parent, {})[out_abs.name] = {
            "digest": digest(str(out_abs)), "inputs": dict(sorted(inputs.items())), "record": _stable(rec)}
    for d, entries in by_dir.items():
        old = _read_json(d / STAMP)
        merged = dict(sorted({**(old if isinstance(old, dict) else {}), **entries}.items()))
        if merged != old:  # unchanged stamps keep their bytes and mtime
            write_json_atomic(d / STAMP, merged)
    digest.save()
    return sum(len(e) for e in by_dir.values())


def _order(stamps: dict[str, dict]) -> list[str]:
    """Outputs inputs-first (an output's stamped inputs before it)."""
    seen: set[str] = set()
    order: list[str] = []
    for start in sorted(stamps):
        stack = [(start, iter(sorted(stamps[start].get("inputs", {}))))]
        if start in seen:
            continue
        seen.add(start)
        while stack:
            node, deps = stack[-1]
            for dep in deps:
                if dep in stamps and dep not in seen:
                    seen.add(dep)
                    stack.append((dep, iter(sorted(stamps[dep].get("inputs", {})))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def restore(root: str | os.PathLike = "results", workdir: str | os.PathLike = ".") -> dict[str, list[str]]:
    """Date every stamped output by content and restore its Snakemake record (module docstring).
    Returns ``{"fresh": [...], "stale": [...], "unknown": [...]}`` (output paths)."""
    workdir = Path(workdir)
    metadata = workdir / ".snakemake" / "metadata"
    digest = _Digests(workdir / ".snakemake" / "visctx-digests.json")
    stamps = load_stamps(root, workdir)
    result: dict[str, list[str]] = {"fresh": [], "stale": [], "unknown": []}
    for out in _order(stamps):
        entry = stamps[out]
        out_p = workdir / out
        if not out_p.exists() or digest(str(out_p)) != entry.get("digest"):
            result["unknown"].append(out)
            continue
        inputs = entry.get("inputs", {})
        present = [workdir / i for i in inputs if (workdir / i).exists()]
        if all(digest(str(workdir / i)) == d for i, d in inputs.items()):
            # just after the newest input, never in the future (a rerun writing "now" would look older)
            t = min(max((_mtime(p) for p in present), default=0.0) + 1e-3, time.time())
            if _mtime(out_p) < t:
                _set_mtime(out_p, t)
                digest.forget(str(out_p))
            t = _mtime(out_p)
            metadata.mkdir(parents=True, exist_ok=True)
            rec_file = _record_path(metadata, out)
            current = _read_json(rec_file)
            want = entry.get("record", {})
            if not isinstance(current, dict) or _stable(current) != want:
                rec_file.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(rec_file, {**want, "starttime": t, "endtime": t, "incomplete": False,
                                             "job_hash": None, "external_jobid": None}, indent=None)
            result["fresh"].append(out)
        else:
            t = min((_mtime(p) for p in present), default=time.time()) - 1.0
            _set_mtime(out_p, max(t, 1.0))
            digest.forget(str(out_p))
            # and forget Snakemake's record: its checksums of small inputs would vouch for them
            if metadata.is_dir():
                _record_path(metadata, out).unlink(missing_ok=True)
            result["stale"].append(out)
    digest.save()
    return result


def install(workflow: Any, root: str = "results") -> None:
    """Freshness by content for a Snakefile: :func:`restore` now (before the DAG is built; only in
    the main process, not while another Snakemake holds the directory), :func:`record` when the run
    ends: every output of the DAG after a success, the jobs that finished after a failure."""
    if os.environ.get(OFF) == "1" or not workflow.is_main_process:
        return
    workdir = Path.cwd()
    locks = workdir / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        print(f"visctx.fresh: {locks} is held by another Snakemake: dating by content skipped", flush=True)
        return
    since = time.time()
    found = restore(root, workdir)
    if found["stale"]:
        print(f"visctx.fresh: {len(found['stale'])} output(s) made from inputs that have changed since: "
              + ", ".join(found["stale"][:5]) + (" ..." if len(found["stale"]) > 5 else ""), flush=True)

    def stamp_dag(log: Any = None) -> None:  # every job of the DAG is current after a successful run
        record(None, root, workdir, outputs=[str(f) for job in workflow.dag.jobs for f in job.output])

    def stamp_finished(log: Any = None) -> None:
        record(since, root, workdir)

    workflow.onsuccess(stamp_dag)
    workflow.onerror(stamp_finished)
