"""The DAG's lmms-eval jobs (workflow/rules/lmms.smk): one lmms-eval task on one arm, written as
JSON, and the table of every arm x task beside the project's own score of the same benchmark.

Apart from :mod:`visctx.lmms` (the model) so that the table needs no lmms-eval import.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from visctx.files import write_json_atomic, write_timing

# lmms-eval task -> the project's benchmark over the same items (its score sits beside lmms-eval's)
SAME_BENCHMARK = {
    "visctx_synthetic": "synthetic",
    "visctx_synthetic_gen": "synthetic",
    "videomme": "videomme",
    "mlvu_dev": "mlvu",
    "longvideobench_val_v": "longvideobench",
}


def lmms_eval_arm(model_dir: str, task: str, out_json: str, include_path: str = "", batch_size: int = 1,
                  fps: float | None = None, max_frames: int | None = None, size: int | None = None,
                  vision_tower: str = "", vision_layer: int | None = None, device: str = "", limit: int = 0,
                  threads: int = 1) -> dict:
    """Run lmms-eval's ``simple_evaluate`` on ``task`` with the arm in ``model_dir``
    (:class:`visctx.lmms.VisctxArm`; ``include_path``: a dir of local task YAMLs) and write
    ``{"arm", "task", "results": {task or subtask: {metric: value}}, "n_samples", ...}`` to
    ``out_json``. Unlike lmms-eval's CLI, which prints a failed task's error and exits 0, a failure
    raises. ``limit`` > 0: only the first items (a smoke run; the JSON says so).

    Args:
        model_dir: the trained arm's model dir.
        task: an lmms-eval task name (one of lmms-eval's, or a local one under ``include_path``).
        out_json: the result to write.
        include_path: a directory of local task YAMLs ('' for none).
        batch_size: items answered at once.
        fps, max_frames, size: decoding of the task's videos (default: as the arm's training store).
        vision_tower: the tower that encodes frames for an arm trained on cached features.
        vision_layer: that tower's hidden state the projector reads.
        device: torch device ('' for the default).
        limit: only the first this many items (0: all).
        threads: torch's CPU threads.
    """
    import lmms_eval
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from visctx.lmms import MODEL_NAME, VisctxArm

    t0 = time.perf_counter()
    args = {k: v for k, v in dict(fps=fps, max_frames=max_frames, size=size, vision_tower=vision_tower or None,
                                  vision_layer=vision_layer, threads=threads).items() if v is not None}
    lm = VisctxArm(pretrained=model_dir, batch_size=batch_size, device=device or None, **args)
    # read before simple_evaluate: lmms-eval's lm.clean() deletes every nn.Module attribute after a run
    arm, trained, seed = lm.arm.id, lm.model.meta.get("arm"), lm.model.meta.get("seed")
    manager = TaskManager(include_path=include_path or None, model_name=MODEL_NAME)
    if task not in manager.all_tasks:
        raise ValueError(f"lmms-eval has no task {task!r} (evaluate.lmms_tasks; local tasks are read from "
                         f"{include_path or 'no --include-path'})")
    out = simple_evaluate(model=lm, tasks=[task], task_manager=manager, batch_size=batch_size,
                          limit=limit or None, bootstrap_iters=0, log_samples=False)
    if out is None or not out.get("results"):
        raise RuntimeError(f"lmms-eval returned no results for task {task!r} on {model_dir}")
    results = {name: {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
               for name, metrics in {**out["results"], **out.get("groups", {})}.items()}
    summary = {
        "arm": arm,
        "seed": seed,  # the training replicate
        "trained_arm": trained["id"] if isinstance(trained, dict) else trained,
        "task": task,
        "model_dir": str(model_dir),
        "lmms_eval": getattr(lmms_eval, "__version__", None) or _version("lmms_eval"),
        "model_args": {**args, "batch_size": batch_size},
        "decoding": {"fps": lm.source.fps, "max_frames": lm.source.max_frames, "size": lm.source.size,
                     "vision": lm.source.kind, "vision_tower": lm.vision_tower},
        "limit": limit or None,
        "n_samples": {k: v.get("effective", v.get("original")) for k, v in out.get("n-samples", {}).items()},
        "results": results,
    }
    seconds = time.perf_counter() - t0
    write_json_atomic(out_json, summary, indent=2)
    write_timing(out_json, seconds)  # beside the result: a rerun writes the same bytes
    return summary | {"seconds": round(seconds, 3)}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def write_table(jsons: list[str], out_md: str, out_csv: str, evals: list[str] | None = None) -> dict:
    """Tidy rows (arm, task, result, metric, value, ...) of the :func:`lmms_eval_arm` JSONs in
    ``out_csv``; in ``out_md`` one row per arm and task with its metrics (no stderrs) and, where
    the project evaluates the same benchmark (:data:`SAME_BENCHMARK`; ``evals``: the arms'
    ``eval/<benchmark>.json``), the project's official score and answer mode beside them.

    Args:
        jsons: the :func:`lmms_eval_arm` results.
        out_md: the readable table (one row per arm, seed and task).
        out_csv: the tidy table (one row per metric).
        evals: the arms' own evaluation JSONs, for the project's score beside lmms-eval's.
    """
    import pandas as pd

    from visctx.config import Arm

    rows = []
    for path in jsons:
        try:
            r = json.loads(Path(path).read_text())
            arm, task, results = Arm.from_id(r["arm"]), r["task"], r["results"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not an lmms-eval arm result ({type(e).__name__}: {e})") from None
        for name, metrics in results.items():
            for key, value in metrics.items():
                metric, _, filt = key.partition(",")
                rows.append({"arm": arm.id, "seed": r.get("seed"), "T": arm.T, "M": arm.M, "token_op": arm.token_op,
                             "frame_op": arm.frame_op, "pooled_from": arm.pooled_from, "task": task, "result": name,
                             "metric": metric, "filter": filt, "value": value, "limit": r.get("limit")})
    if not rows:
        raise ValueError(f"no lmms-eval metrics in {len(jsons)} result files")
    df = pd.DataFrame(rows).sort_values(["arm", "seed", "task", "result", "metric"], kind="stable")
    own = {}
    for path in evals or []:
        e = json.loads(Path(path).read_text())
        own[e["arm"], e.get("seed"), e["benchmark"]] = (e["score"], e.get("answer_mode", "loglik"))
    main = df[~df["metric"].str.contains("stderr")]
    wide = main.fillna({"seed": -1}).pivot_table(index=["arm", "seed", "task", "result"], columns="metric",
                                                 values="value", aggfunc="first")
    wide = wide.reset_index()
    wide.columns.name = None
    bench = wide["task"].map(SAME_BENCHMARK)
    wide["visctx_benchmark"] = bench
    seeds = [None if s == -1 else s for s in wide["seed"]]
    wide["seed"] = seeds
    keys = list(zip(wide["arm"], seeds, bench))
    wide["visctx_score"] = [own.get(k, (None, None))[0] for k in keys]
    wide["visctx_answer_mode"] = [own.get(k, (None, None))[1] for k in keys]
    for out in (out_md, out_csv):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False, float_format="%.6g")
    Path(out_md).write_text(wide.to_markdown(index=False, floatfmt=".4g", missingval="–") + "\n")
    return {"arms": int(df["arm"].nunique()), "tasks": int(df["task"].nunique()), "rows": len(df)}
