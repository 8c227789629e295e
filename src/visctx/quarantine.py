"""The per-run quarantine: which videos frame extraction left out (and why), which were short.

:func:`visctx.video.extract_shard` records every unreadable video in its shard's JSON instead of
failing the shard. Here the shards of a split are gathered (:func:`split_report`), and the split
is refused when too many of its videos were lost -- a mostly broken corpus (a wrong video root, a
half-finished download) must stop the study, not quietly produce a table. :func:`write_report`
then joins the splits into one JSON and one TSV a person can read.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from visctx.files import atomic_path, write_json_atomic


def _read_shard_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: frame shard index not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON, truncated? ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), list):
        raise ValueError(f"{path}: not a frame shard index (no 'videos' list)")
    return meta


def split_report(frames_jsons: list[str], split: str, out_json: str, max_quarantined: float = 0.05) -> dict:
    """Gather a split's quarantined and short videos from its frame shard JSONs into ``out_json``.

    Raises ``ValueError`` listing the first paths and reasons when more than ``max_quarantined``
    (a fraction of the split's videos) were quarantined; nothing is written then, so nothing
    downstream (training, evaluation) runs on that split.

    Args:
        frames_jsons: the split's frame shard indexes (``extract``'s ``out_json``).
        split: the split's name, for the report and the error.
        out_json: the split's report.
        max_quarantined: the largest fraction of the split's videos that may be unreadable.
    """
    if not 0 <= max_quarantined <= 1:
        raise ValueError(f"max_quarantined={max_quarantined}: must be a fraction in [0, 1]")
    extracted, quarantined, short = 0, [], []
    for p in sorted(frames_jsons):
        meta = _read_shard_meta(Path(p))
        extracted += len(meta["videos"])
        quarantined += meta.get("quarantined", [])
        short += meta.get("short", [])
    total = extracted + len(quarantined)
    fraction = len(quarantined) / total if total else 0.0
    if fraction > max_quarantined:
        first = "\n".join(f"  {q['path']}: {q['reason']}" for q in quarantined[:5])
        more = f"\n  ... and {len(quarantined) - 5} more" if len(quarantined) > 5 else ""
        raise ValueError(f"split {split!r}: {len(quarantined)} of {total} videos ({fraction:.1%}) could not be "
                         f"read, above data.extract.max_quarantined={max_quarantined:g}:\n{first}{more}")
    report = {"split": split, "videos": total, "extracted": extracted, "fraction_quarantined": round(fraction, 6),
              "max_quarantined": max_quarantined, "quarantined": quarantined, "short": short}
    write_json_atomic(out_json, report)
    return {k: report[k] for k in ("split", "videos", "extracted")} | {"quarantined": len(quarantined),
                                                                       "short": len(short)}


def write_report(split_jsons: list[str], out_json: str, out_tsv: str) -> dict:
    """Join per-split reports into ``out_json`` (``{split: report}``) and ``out_tsv``
    (``split, status, video, path, reason``: one line per quarantined or short video).

    Args:
        split_jsons: the splits' reports (``quarantine-split``'s ``out_json``).
        out_json, out_tsv: the joined report and its table.
    """
    splits = {}
    for p in split_jsons:
        rep = _read_split_report(Path(p))
        splits[rep["split"]] = rep
    write_json_atomic(out_json, {"splits": splits})
    with atomic_path(out_tsv) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["split", "status", "video", "path", "reason"])
            for split, rep in splits.items():
                for q in rep["quarantined"]:
                    w.writerow([split, "quarantined", q["video"], q["path"], " ".join(q["reason"].split())])
                for s in rep["short"]:
                    w.writerow([split, "short", s["video"], s["path"],
                                f"{s['frames_available']} distinct frames, {s['frames_requested']} requested "
                                f"(frames repeated)"])
    return {split: {"quarantined": len(r["quarantined"]), "short": len(r["short"])} for split, r in splits.items()}


def _read_split_report(path: Path) -> dict:
    try:
        rep = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the split's quarantine report ({e})") from None
    for key in ("split", "quarantined", "short"):
        if key not in rep:
            raise ValueError(f"{path}: quarantine report has no {key!r} field")
    return rep
