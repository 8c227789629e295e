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

ARM_COLUMNS = ["arm", "T", "M", "token_op", "frame_op", "pooled_from", "tokens"]
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


def fine_tune_steps(rec: dict) -> int | None:
    """The optimizer steps of the model an evaluation scored, from the ``train_summary.json`` in the
    model dir it names: each arm's fine-tune budget (``train.arm``'s rule, :mod:`visctx.budget`),
    beside its gap to the ceiling. None where the record names no dir with a training summary (a
    collated checkpoint, a record written before evaluations named their model)."""
    if not rec.get("model_dir"):
        return None
    path = Path(rec["model_dir"]) / "train_summary.json"
    if not path.is_file():
        return None
    try:
        return int(json.loads(path.read_text())["steps"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a training summary with its steps ({e})") from None


def tidy_rows(evaluations: list[dict]) -> pd.DataFrame:
    rows = []
    for rec in evaluations:
        arm = Arm.from_id(rec["arm"])
        row = {k: v for k, v in arm.to_dict().items() if k != "id"}
        row |= {"arm": arm.id, "seed": rec["seed"], "benchmark": rec["benchmark"], "n": rec["n"],
                "loss": rec["loss"], "accuracy": rec["accuracy"], "score": rec.get("score"),
                "steps": fine_tune_steps(rec)}
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


def collect(evals: list[str], studies: dict, out_arms: str, out_design: str, out_videos: str | None = None,
            ceiling_csv: str | None = None) -> dict:
    """Write the tidy per-(arm, seed) table, the study design and the per-video table; every designed
    arm must be evaluated, with the same seeds as every other arm.

    Args:
        evals: the per-(arm, seed) evaluation JSONs.
        studies: params' ``studies`` section (JSON): the design every arm comes from.
        out_arms: the tidy table (CSV): one row per (arm, seed, benchmark).
        out_design: the design table (CSV): one row per (study, method, point).
        out_videos: the per-video table (CSV): one row per (arm, seed, benchmark, video).
        ceiling_csv: every arm's information ceiling (``visctx ceiling``): joined into the
            synthetic rows as ``ceiling_loss``, ``ceiling_accuracy`` and ``gap`` (loss - ceiling).
    """
    evaluations = [read_evaluation(p) for p in evals]
    check_same_videos(evaluations)
    check_same_kernels(evaluations)
    df = tidy_rows(evaluations)
    design = design_table(studies)
    missing = sorted(set(design["arm"]) - set(df["arm"]))
    if missing:
        raise ValueError(f"no evaluation for designed arm(s): {', '.join(missing)}")
    if ceiling_csv:
        c = pd.read_csv(ceiling_csv).set_index("arm")
        syn = df["benchmark"] == "synthetic"
        lost = sorted(set(df.loc[syn, "arm"]) - set(c.index))
        if lost:
            raise ValueError(f"{ceiling_csv}: no ceiling for arm(s) {lost}")
        df.loc[syn, "ceiling_loss"] = df.loc[syn, "arm"].map(c["loss"])
        df.loc[syn, "ceiling_accuracy"] = df.loc[syn, "arm"].map(c["accuracy"])
        df.loc[syn, "gap"] = df.loc[syn, "loss"] - df.loc[syn, "ceiling_loss"]
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


def benchmark_scores(evals: list[str], items_jsons: list[str], out_csv: str, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """Every arm's official score per benchmark with its noise: the mean over training seeds, the
    across-seed t interval, and a two-level bootstrap that resamples the seeds and, clustered by
    video, the benchmark's items (a video's questions are not independent), re-applying the
    official rule each time (:func:`visctx.benchmarks.score_draws`); and each arm's paired difference
    to the benchmark's best arm on the same resamples, with its interval (does it differ from the
    best beyond the noise?).

    Args:
        evals: the per-(arm, seed) evaluation JSONs of every benchmark.
        items_jsons: each benchmark's evaluation items (the synthetic split's or the converted
            benchmark's JSON), named ``<benchmark>.json`` or ``eval.json`` (synthetic).
        out_csv: the table: one row per (benchmark, arm).
        n_boot: bootstrap resamples.
        seed: seed of the resamples.
    """
    import numpy as np

    from visctx.benchmarks import evaluation_answers, evaluation_items, read_items, score_draws, video_resamples
    from visctx.stats import seed_interval

    by_bench: dict[str, dict[str, dict[int, dict]]] = {}
    for path in evals:
        rec = read_evaluation(path)
        by_bench.setdefault(rec["benchmark"], {}).setdefault(rec["arm"], {})[rec["seed"]] = rec
    items_of = {("synthetic" if Path(p).stem == "eval" else Path(p).stem): p for p in items_jsons}
    rows = []
    for bench, arms in sorted(by_bench.items()):
        if bench not in items_of:
            raise ValueError(f"benchmark {bench!r}: no items JSON among {items_jsons}")
        items = read_items(items_of[bench])
        seeds = sorted(next(iter(arms.values())))
        keys, W = video_resamples(items, n_boot, seed)
        rng = np.random.default_rng([seed, len(seeds)])
        S = np.stack([np.bincount(rng.integers(0, len(seeds), len(seeds)), minlength=len(seeds))
                      for _ in range(n_boot)]).astype(float) if n_boot else np.zeros((0, len(seeds)))
        point, draws, per_seed = {}, {}, {}
        for arm, recs in arms.items():
            if sorted(recs) != seeds:
                raise ValueError(f"benchmark {bench!r}: arm {arm} has seeds {sorted(recs)}, others {seeds}")
            got = [score_draws(bench, evaluation_items(recs[s], items), evaluation_answers(recs[s]), keys, W,
                               scoring=recs[s].get("scoring", "official")) for s in seeds]
            per_seed[arm] = [g[0] for g in got]
            point[arm] = float(np.mean(per_seed[arm]))
            draws[arm] = (S @ np.stack([g[1] for g in got])) / len(seeds) if n_boot else np.zeros(0)
        best = max(point, key=lambda a: (point[a], a))
        for arm in sorted(arms):
            t = seed_interval(per_seed[arm])
            row = {"benchmark": bench, "arm": arm, "seeds": len(seeds), "score": point[arm], "score_sd": t["sd"],
                   "seed_lo": t["lo"], "seed_hi": t["hi"]}
            if n_boot:
                lo, hi = np.percentile(draws[arm], [2.5, 97.5])
                dlo, dhi = np.percentile(draws[arm] - draws[best], [2.5, 97.5])
                row |= {"boot_lo": lo, "boot_hi": hi, "vs": best, "diff": point[arm] - point[best],
                        "diff_lo": dlo, "diff_hi": dhi}
            rows.append(row)
    df = pd.DataFrame(rows)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False, float_format="%.6g")
    return {"benchmarks": sorted(by_bench), "rows": len(df)}


def curves(models: list[str], out_csv: str) -> dict:
    """Every training run's loss curve in one long table (``run, seed, step, loss``): the base's
    and each arm's, from the CSV log Lightning writes beside each model (``<run>/train/metrics.csv``),
    one place and one format for ``dvc plots show`` (declared in dvc.yaml).

    Args:
        models: model dirs (``results/base/seed<s>/model``, ``results/arms/seed<s>/<arm>/model``).
        out_csv: the table.
    """
    frames = []
    for model in models:
        run_dir = Path(model).parent
        log = run_dir / "train" / "metrics.csv"
        if not log.is_file():
            raise FileNotFoundError(f"{log}: no training log beside {model}")
        df = pd.read_csv(log)
        if "train/loss" not in df or "step" not in df:
            raise ValueError(f"{log}: expected columns step and train/loss, got {list(df.columns)}")
        df = df.dropna(subset=["train/loss"])
        twice = df["step"][df["step"].duplicated()]
        if len(twice):  # a resumed run merges the log it resumed (visctx.train._merge_log): once each
            raise ValueError(f"{log}: step {int(twice.iloc[0])} logged twice (a resumed run's log not merged)")
        seed_dir = run_dir if run_dir.name.startswith("seed") else run_dir.parent
        frames.append(pd.DataFrame({
            "run": "base" if run_dir.name.startswith("seed") else run_dir.name,
            "seed": int(seed_dir.name.removeprefix("seed")),
            "step": df["step"].astype(int) + 1,  # Lightning logs the step before its update
            "loss": df["train/loss"].round(6),
        }))
    table = pd.concat(frames, ignore_index=True).sort_values(["run", "seed", "step"], kind="stable")
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    return {"runs": int(table[["run", "seed"]].drop_duplicates().shape[0]), "rows": int(len(table))}
