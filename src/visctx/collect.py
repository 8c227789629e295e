"""Gather per-(arm, seed, benchmark) evaluations into the tidy tables every analysis reads.

``arms.csv`` has one row per (arm, seed, benchmark) -- each seed a training replicate;
``videos.csv`` the same per evaluation video (items, summed answer NLL, answer tokens, correct
items), which a bootstrap over seeds and videos resamples; ``design.csv`` says which study asked for
which arm, so tables and fits never re-derive the study -> arm mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from visctx.config import Arm, study_points

ARM_COLUMNS = ["arm", "T", "M", "token_op", "frame_op", "time_kernel", "tokens"]
VIDEO_COLUMNS = ["arm", "seed", "benchmark", "video", "n", "nll", "ntok", "correct"]


def read_evaluation(path: str | Path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read evaluation JSON ({e})") from None
    for key in ("arm", "benchmark", "n", "loss", "accuracy", "seed"):
        if key not in rec:
            raise ValueError(f"{path}: evaluation has no {key!r} field")
    return rec


def check_same_videos(evaluations: list[dict]) -> None:
    """Every arm of a benchmark must have been scored on the same videos (``videos_sha``).

    All arms read one feature store, but an arm evaluated before a re-extraction quarantined (or
    recovered) a video would otherwise be compared on a different item set without a trace.
    Evaluations without a fingerprint (written before it existed) are not checked.
    """
    first: dict[str, tuple[str, str]] = {}
    for rec in evaluations:
        sha = rec.get("videos_sha")
        if sha is None:
            continue
        arm0, sha0 = first.setdefault(rec["benchmark"], (rec["arm"], sha))
        if sha != sha0:
            raise ValueError(f"benchmark {rec['benchmark']!r}: arms {arm0} and {rec['arm']} were evaluated on "
                             f"different video sets (videos_sha {sha0} vs {sha}); re-run the evaluation of "
                             f"the stale arm(s)")


def tidy_rows(evaluations: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in evaluations:
        arm = Arm.from_id(rec["arm"])
        row = {k: v for k, v in arm.to_dict().items() if k != "id"}
        row |= {"arm": arm.id, "seed": rec["seed"], "benchmark": rec["benchmark"], "n": rec["n"],
                "loss": rec["loss"], "accuracy": rec["accuracy"], "score": rec.get("score")}
        for task, t in sorted((rec.get("per_task") or {}).items()):
            row[f"acc_{task}"] = t.get("accuracy")
            row[f"loss_{task}"] = t.get("loss")
        rows.append(row)
    df = pd.DataFrame(rows)
    lead = ARM_COLUMNS + ["seed", "benchmark", "n", "loss", "accuracy", "score"]
    dup = df[df.duplicated(["arm", "seed", "benchmark"])]
    if not dup.empty:
        r = dup.iloc[0]
        raise ValueError(f"arm {r['arm']}, seed {r['seed']}, benchmark {r['benchmark']}: evaluated twice")
    return df[lead + sorted(c for c in df.columns if c not in lead)].sort_values(["benchmark", "arm", "seed"])


def video_rows(evaluations: list[dict]) -> pd.DataFrame:
    """Per (arm, seed, benchmark, video): items, summed answer NLL, answer tokens, correct items."""
    rows = [[rec["arm"], rec["seed"], rec["benchmark"], video, *v]
            for rec in evaluations for video, v in sorted((rec.get("videos") or {}).items())]
    return pd.DataFrame(rows, columns=VIDEO_COLUMNS).sort_values(["benchmark", "arm", "seed", "video"])


def design_table(studies: dict) -> pd.DataFrame:
    return pd.DataFrame([{"study": p.study, "method": p.method, "T": p.T, "M": p.M, "arm": p.arm.id}
                         for p in study_points(studies)])


def check_same_kernels(evaluations: list[dict]) -> None:
    """Evaluations made with other CPU kernels (:mod:`visctx.cpu`) are not put side by side."""
    from visctx.cpu import require_same

    first = next((rec for rec in evaluations if rec.get("cpu") is not None), None)
    for rec in evaluations:
        if first is not None and rec.get("cpu") is not None:
            require_same(first["cpu"], rec["cpu"], f"the evaluation of {rec['arm']} (seed {rec['seed']})")


def collect(evals: list[str], studies: dict, out_arms: str, out_design: str, out_videos: str | None = None) -> dict:
    """Write the tidy per-(arm, seed) table, the study design and the per-video table; every designed
    arm must be evaluated, with the same seeds as every other arm.

    Args:
        evals: the per-(arm, seed) evaluation JSONs.
        studies: params' ``studies`` section (JSON): the design every arm comes from.
        out_arms: the tidy table (CSV): one row per (arm, seed, benchmark).
        out_design: the design table (CSV): one row per (study, method, point).
        out_videos: the per-video table (CSV): one row per (arm, seed, benchmark, video).
    """
    evaluations = [read_evaluation(p) for p in evals]
    check_same_videos(evaluations)
    check_same_kernels(evaluations)
    df = tidy_rows(evaluations)
    design = design_table(studies)
    missing = sorted(set(design["arm"]) - set(df["arm"]))
    if missing:
        raise ValueError(f"no evaluation for designed arm(s): {', '.join(missing)}")
    seeds = df.groupby(["benchmark", "arm"])["seed"].apply(lambda s: tuple(sorted(s)))
    if seeds.nunique() > 1:
        raise ValueError(f"arms were evaluated with different seeds: {seeds.to_dict()}")
    tables = [(out_arms, df), (out_design, design)]
    if out_videos:
        tables.append((out_videos, video_rows(evaluations)))
    for out, table in tables:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False, float_format="%.6g")
    return {"arms": int(df["arm"].nunique()), "seeds": sorted(df["seed"].unique().tolist()), "rows": len(df),
            "design_points": len(design)}
