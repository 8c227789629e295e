"""The performance harness: what the default study costs and what it recomputes (run on demand,
``bash scripts/perf.sh``; never a timed test).

It measures, in a fresh clone of the repository (install included, as a newcomer runs it):
the wall time of each DVC stage; the no-op rerun of ``snakemake`` and of ``dvc repro``; which jobs
a one-key change would rerun (an analysis-only key must rerun analysis only, a study key only the
arms it adds); decord's throughput reading 1-fps frames with sorted indices against decoding every
frame; how many times each video frame goes through the vision encoder (must be once); and the
start-up overhead of one training job, plain and through the preload server. The figures go to
``results/perf/perf.{json,md}``; the README quotes them with date and machine.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from visctx.cli import option_args
from visctx.files import read_seconds

if TYPE_CHECKING:  # pandas only where a measurement reads tables, not at import of every harness command
    import pandas as pd

ANALYSIS_RULES = {"fits", "ceiling_fits", "figures", "tables", "metrics", "all", "analysis_all"}  # ceiling_fits: the ceiling's optimum for the window


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, {platform.system()} {platform.release()}"


class _Runner:
    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = root, log
        self.env = dict(os.environ, PATH=f"{root / '.venv/bin'}{os.pathsep}{os.environ['PATH']}")
        self.env.pop("VIRTUAL_ENV", None)
        # the pin's variables, which importing visctx set in this process: each command sets its own
        # (a run with VISCTX_CPU_PIN=off must not inherit them, or "native" measures the pin)
        from visctx import cpu

        for key in {k for level in cpu.LEVELS.values() for k in level}:
            self.env.pop(key, None)

    def __call__(self, cmd: list[str], check: bool = True, combined: bool = False, **extra_env: str
                 ) -> tuple[float, str]:
        """(seconds, stdout), or stdout and stderr together with ``combined``."""
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.root, env={**self.env, **extra_env}, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(cmd)}  # {seconds:.1f} s, exit {proc.returncode}\n{proc.stdout}{proc.stderr}\n")
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {self.log}:\n"
                               f"{proc.stderr[-2000:]}")
        return seconds, proc.stdout + proc.stderr if combined else proc.stdout


def _job_counts(dry_run_stdout: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table from ``snakemake -n --quiet rules``."""
    counts = {}
    for line in dry_run_stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def rerun_sets(run: _Runner, params: dict, tmp: Path) -> dict[str, Any]:
    """Jobs a dry run schedules after one analysis-only and one study change (the rest is done).

    The study change adds one window arm. With the base's mixture ``train.base.arms: studies``
    the base changes with it, so every arm is rightly retrained; with the base pinned to the
    current arms, only the new arm may be trained and evaluated."""
    from visctx.config import resolve_preset, study_points, unique_arms

    cfg = resolve_preset(copy.deepcopy(params))
    arms = [a.id for a in unique_arms(study_points(cfg["studies"]))]
    analysis = copy.deepcopy(params)
    analysis["window"] = int(cfg["window"]) * 2
    study = copy.deepcopy(params)
    T, M = study["studies"]["window"]["combos"][-1]
    study["studies"]["window"]["combos"][-1] = [T - 1, M]  # one new window arm: T-1 frames at the same M
    new_arms = [a.id for a in unique_arms(study_points(resolve_preset(copy.deepcopy(study))["studies"]))]
    new = sorted(set(new_arms) - set(arms))
    pinned = copy.deepcopy(study)
    pinned["train"]["base"]["arms"] = arms
    n_bench = len(cfg["evaluate"]["benchmarks"])
    n_seeds = len(cfg["seeds"])  # every arm is trained once per training replicate
    with_base = cfg["train"]["base"]["steps"] > 0 and cfg["train"]["base"].get("arms", "studies") == "studies"
    retrained = (len(new_arms) if with_base else len(new)) * n_seeds
    change = f"studies.window.combos[-1] = [{T - 1}, {M}]"
    out = {}
    for name, changed, expect in (
        ("window x2", analysis, lambda c: set(c) <= ANALYSIS_RULES),
        (change + (" (base mixture: every study arm)" if with_base else ""), study,
         lambda c: c.get("train_arm") == retrained and c.get("evaluate_arm") == retrained * n_bench),
        (change + " with train.base.arms pinned", pinned,
         lambda c: "train_base" not in c and c.get("train_arm") == len(new) * n_seeds
         and c.get("evaluate_arm") == len(new) * n_seeds * n_bench),
    ):
        path = tmp / "changed.yaml"
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        _, stdout = run(["snakemake", "-n", "--quiet", "rules", "--configfile", str(path)])
        counts = _job_counts(stdout)
        out[name] = {"jobs": counts, "as_expected": bool(expect(counts))}
    out["new arms"] = new
    return out


def temp_experiment(run: _Runner, params: dict) -> dict[str, Any]:
    """The jobs a ``dvc exp run --temp`` of an analysis-only change (the window doubled) runs:
    what each experiment of a sweep (``--queue``, then ``dvc queue start``) costs. DVC restores the
    finished study from its cache into a new workspace, where every mtime is new and
    ``.snakemake/`` is empty; only analysis jobs may run (:mod:`visctx.fresh`). Counted from the
    Snakemake output DVC relays; the experiment is removed afterwards."""
    from visctx.config import resolve_preset

    window = int(resolve_preset(copy.deepcopy(params))["window"]) * 2
    name = "perf-temp-window"
    seconds, stdout = run(["dvc", "exp", "run", "--temp", "-n", name, "-S", f"window={window}"], combined=True)
    jobs: dict[str, int] = {}
    for rule in re.findall(r"^\s*(?:local)?rule (\w+):", stdout, re.M):
        jobs[rule] = jobs.get(rule, 0) + 1
    run(["dvc", "exp", "remove", name], check=False)
    return {"change": f"window={window}", "seconds": round(seconds, 1), "jobs": jobs,
            "as_expected": bool(jobs) and set(jobs) <= ANALYSIS_RULES}


def write_temp_experiment(out_dir: str = "results/perf", repo: str = ".") -> dict:
    """Measure :func:`temp_experiment` on the finished study in ``repo`` (e.g. a kept fresh clone)
    and record it in ``<out_dir>/temp-experiment.{json,md}``, beside the harness's figures.

    Args:
        out_dir: where the record goes (relative to ``repo``).
        repo: a checkout whose study is finished and committed (DVC's temporary workspace starts
            from HEAD).
    """
    from visctx.config import raw_params

    root = Path(repo).resolve()
    out = root / out_dir
    out.mkdir(parents=True, exist_ok=True)
    run = _Runner(root, out / "perf.log")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True, capture_output=True,
                            text=True).stdout.strip()
    record = {"date": dt.date.today().isoformat(), "machine": _machine(), "commit": commit,
              **temp_experiment(run, raw_params(root / "params.yaml"))}
    (out / "temp-experiment.json").write_text(json.dumps(record, indent=1) + "\n")
    jobs = ", ".join(f"{rule} {n}" for rule, n in record["jobs"].items()) or "none"
    (out / "temp-experiment.md").write_text(
        f"`dvc exp run --temp -S {record['change']}` on the default study (commit {commit}), {record['date']}, on "
        f"{record['machine']}: {record['seconds']} s; jobs run: {jobs}; analysis only: "
        f"{'yes' if record['as_expected'] else 'NO'}.\n")
    return record


_LOG_TIME = "%a %b %d %H:%M:%S %Y"


def snakemake_schedule(log: str | os.PathLike, rule: str = "train_base") -> dict[str, Any]:
    """How busy one Snakemake run kept its cores, read from its log: each job's start and finish
    (the log's timestamps, to the second), the core-seconds left idle while the run lasted, and
    when each job of ``rule`` (the bases) ran. It says what the schedule costs beside what the
    jobs cost: Snakemake ranks ready jobs by priority and cores, not by length, so a long job
    started late runs alone at the end. Why the log: it is the one place a finished run keeps
    every job's times (``.snakemake/metadata`` keeps them per output, not for jobs without one,
    and not the cores the run had)."""
    path = Path(log)
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
    cores, now, pending = None, None, None
    start: dict[int, tuple[str, float]] = {}
    end: dict[int, float] = {}
    wildcards: dict[int, str] = {}
    last = None
    for line in path.read_text().splitlines():
        if m := stamp.match(line):
            now = dt.datetime.strptime(" ".join(m[1].split()), _LOG_TIME).timestamp()
        elif m := re.match(r"^Provided cores: (\d+)", line):
            cores = int(m[1])
        elif m := re.match(r"^(?:local)?rule (\w+):$", line):
            pending = m[1]
        elif pending and (m := re.match(r"^\s+jobid: (\d+)$", line)):
            if now is None:
                raise ValueError(f"{path}: job {m[1]} starts before any timestamp (not a Snakemake log?)")
            last = int(m[1])
            start[last], pending = (pending, now), None
        elif last is not None and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            wildcards[last] = m[1]
        elif m := re.match(r"^Finished jobid: (\d+) ", line):
            end[int(m[1])] = now
    jobs = {j: (r, t0, end[j]) for j, (r, t0) in start.items() if j in end}
    if cores is None or not jobs:
        raise ValueError(f"{path}: no 'Provided cores' line or no finished job (not a Snakemake run's log?)")
    t_first = min(t0 for _, t0, _ in jobs.values())
    t_last = max(t1 for _, _, t1 in jobs.values())
    events = sorted([(t0, 1) for _, t0, _ in jobs.values()] + [(t1, -1) for _, _, t1 in jobs.values()])
    idle, running, t_prev = 0.0, 0, t_first
    for t, step in events:
        idle += max(0, cores - running) * (t - t_prev)
        running, t_prev = running + step, t
    span = t_last - t_first
    ran = [{"job": j, "wildcards": wildcards.get(j, ""), "start_s": round(t0 - t_first), "end_s": round(t1 - t_first)}
           for j, (r, t0, t1) in sorted(jobs.items(), key=lambda kv: kv[1][1]) if r == rule]
    return {"log": path.name, "cores": cores, "jobs": len(jobs), "span_s": round(span),
            "busy_core_s": round(sum(t1 - t0 for _, t0, t1 in jobs.values())), "idle_core_s": round(idle),
            "idle_share": round(idle / (cores * span), 3) if span else 0.0, "rule": rule, "rule_jobs": ran}


def _train_stage_log(root: Path) -> Path | None:
    """The newest Snakemake log of ``root`` that ran the bases (the train stage's run)."""
    logs = sorted((root / ".snakemake/log").glob("*.snakemake.log"))
    return next((p for p in reversed(logs) if "rule train_base:" in p.read_text()), None)


def study_cost(repo: str = ".", out_dir: str = "results/perf", write: bool = True) -> dict:
    """Where a finished study's compute goes: the seconds inside each training loop and each
    evaluation, read from the timing sidecars (:func:`visctx.files.read_seconds`) of every base and
    every (arm, seed), summed per way of spending the window (the arm's token operator; ``summary``
    for summary tokens) -- what the masking and summary-token arms add to the study, and what the
    base and the evaluations take. CPU seconds of one thread each (jobs run side by side), not wall
    time; recorded in ``<out_dir>/study-cost.{json,md}`` (the README renders it).

    Args:
        repo: a checkout whose study has run on this machine (a kept fresh clone): the timings are
            this machine's (they are not committed).
        out_dir: where the record goes (relative to ``repo``).
        write: write the record (else only return it).
    """
    from visctx import cpu
    from visctx.config import Arm, load_params

    root = Path(repo).resolve()
    cfg = load_params(root / "params.yaml")
    results = root / cfg["results"]
    seeds = list(cfg["seeds"])
    base = [read_seconds(results / f"base/seed{s}/model/train_summary.json") for s in seeds
            if (results / f"base/seed{s}/model/train_summary.json").exists()]
    methods: dict[str, dict[str, float]] = {}
    for s in seeds:
        for d in sorted((results / f"arms/seed{s}").glob("*/model/train_summary.json")):
            arm = Arm.from_id(d.parent.parent.name)
            m = methods.setdefault("summary" if arm.summary > 1 else arm.token_op,
                                   {"arms": 0, "fine_tune_s": 0.0, "evaluate_s": 0.0})
            m["arms"] += 1
            m["fine_tune_s"] += read_seconds(d)
            m["evaluate_s"] += sum(read_seconds(e.with_name(e.name.replace(".timing", ""))) for e in
                                   sorted((d.parent.parent / "eval").glob("[!.]*.timing.json")))
    if not base and not methods:
        raise FileNotFoundError(f"{results}: no trained base or arm with a timing record (run the study here first)")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                            text=True).stdout.strip()
    record = {"date": dt.date.today().isoformat(), "commit": commit, "machine": _machine(), "cpu": cpu.describe_host(),
              "seeds": seeds, "bases": len(base), "base_s": round(sum(base), 1),
              "methods": {k: {"arms": v["arms"], "fine_tune_s": round(v["fine_tune_s"], 1),
                              "evaluate_s": round(v["evaluate_s"], 1)} for k, v in sorted(methods.items())}}
    record["total_s"] = round(record["base_s"] + sum(v["fine_tune_s"] + v["evaluate_s"]
                                                     for v in record["methods"].values()), 1)
    if (log := _train_stage_log(root)) is not None:
        record["schedule"] = snakemake_schedule(log)
    if write:
        out = root / out_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "study-cost.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "study-cost.md").write_text(study_cost_markdown(record))
    return record


def study_cost_markdown(r: dict) -> str:
    total = r["total_s"] or 1.0
    lines = [f"Where the default study's compute goes (`bash scripts/perf.sh --study-cost` on a study run from a "
             f"fresh clone of {r['commit']}, {r['date']}, {r['machine']}; seconds inside the training loops and "
             f"evaluations, one thread each, summed over {len(r['seeds'])} seeds; jobs run side by side):", "",
             "| what | runs | training s | evaluation s | share |", "|---|---|---|---|---|",
             f"| base | {r.get('bases', len(r['seeds']))} | {r['base_s']} | | {100 * r['base_s'] / total:.0f} % |"]
    for k, v in r["methods"].items():
        lines.append(f"| `{k}` arms | {v['arms']} | {v['fine_tune_s']} | {v['evaluate_s']} | "
                     f"{100 * (v['fine_tune_s'] + v['evaluate_s']) / total:.0f} % |")
    lines.append(f"| **total** | | | | {total} s |")
    if sc := r.get("schedule"):
        bases = ", ".join(f"{j['wildcards'] or j['job']} {j['start_s']}-{j['end_s']} s" for j in sc["rule_jobs"])
        lines += ["", f"How the train stage kept its {sc['cores']} cores busy (its Snakemake log, `{sc['log']}`): "
                  f"{sc['jobs']} jobs over {sc['span_s']} s, {sc['busy_core_s']} core-s running, "
                  f"{sc['idle_core_s']} core-s idle ({100 * sc['idle_share']:.0f} %); the bases "
                  f"(`{sc['rule']}`, from the stage's first job): {bases}."]
    return "\n".join(lines) + "\n"


def decode_throughput(videos: list[Path], fps: float, max_frames: int, size: int) -> dict[str, float]:
    """Frames the study keeps per second of decoding: 1 fps + sorted ``get_batch`` vs every frame."""
    import decord

    from visctx.video import read_video

    t0 = time.perf_counter()
    kept = sum(len(read_video(v, fps, max_frames, size)[1]) for v in videos)
    selective = time.perf_counter() - t0
    t0 = time.perf_counter()
    decoded = 0
    for v in videos:
        vr = decord.VideoReader(str(v), ctx=decord.cpu(0), width=size, height=size)
        decoded += len(vr.get_batch(list(range(len(vr)))).asnumpy())
    full = time.perf_counter() - t0
    return {"videos": len(videos), "frames_kept": kept, "frames_in_videos": decoded,
            "selective_s": round(selective, 3), "full_decode_s": round(full, 3),
            "selective_videos_per_s": round(len(videos) / selective, 1),
            "full_videos_per_s": round(len(videos) / full, 1), "speedup": round(full / selective, 2)}


def encoder_passes(data_dir: Path) -> dict[str, Any]:
    """Encoded frames over distinct (video file, frame) pairs across every features shard: every
    arm reads the cache, so anything above 1.0 is a frame encoded twice."""
    encoded, distinct = 0, set()
    for meta_path in sorted((data_dir / "features").glob("*/shard-*.json")):
        meta = json.loads(meta_path.read_text())
        frames_meta = json.loads((data_dir / "frames" / meta_path.parent.name / meta_path.name).read_text())
        root = frames_meta.get("video_root", meta_path.parent.name)
        for video in meta["videos"]:
            encoded += meta["frames"]
            distinct.update((str(root), video, i) for i in range(meta["frames"]))
    return {"encoded_frames": encoded, "distinct_frames": len(distinct),
            "passes_per_frame": round(encoded / max(1, len(distinct)), 3)}


def kernel_cost(run: _Runner, tmp: Path, steps: int = 600) -> dict[str, Any]:
    """What the CPU-kernel pin costs (:mod:`visctx.cpu`): one training job of the study's base
    mixture, ``steps`` steps, run with the pin (the default: torch and NumPy at AVX2, MKL on its
    compatible branch), with native kernels (``VISCTX_CPU_PIN=off``) and with torch and NumPy
    pinned but MKL native (what the pin cost before MKL was pinned; Intel and AMD then disagree):
    seconds inside the training loop and each one's ratio to the pinned run."""
    from visctx.config import base_arms, load_params

    cfg = load_params(run.root / "params.yaml")
    arms = [a.id for a in base_arms(cfg)]
    base = cfg["train"]["base"]
    args = ["visctx", "train", "--train-json", "results/data/corpus/train.json", "--features-dir",
            "results/data/features/train", "--init", "results/models/pretrained/llm", "--arms", *arms,
            "--steps", str(steps), "--batch-size", str(base["batch_size"]), "--lr", str(base["lr"]),
            "--warmup-steps", "10", "--arm-sampling", base.get("arm_sampling", "uniform"),
            *option_args({"group_by_video": bool(base.get("group_by_video"))}), "--seed", "0",
            "--threads", str(cfg["train"]["threads"]), "--no-progress-bar"]
    out: dict[str, Any] = {"steps": steps}
    from visctx import cpu

    mkl_native = {"VISCTX_CPU_PIN": "off"} | {k: v for k, v in cpu.LEVELS[cpu.DEFAULT_LEVEL].items() if k != "MKL_CBWR"}
    for name, env in (("pinned", {}), ("native", {"VISCTX_CPU_PIN": "off"}), ("mkl_native", mkl_native)):
        d = tmp / f"kernels-{name}"
        run([*args, "--out-dir", str(d / "model"), "--log-dir", str(d / "logs")], VISCTX_PRELOAD="0", **env)
        summary = json.loads((d / "model/train_summary.json").read_text())
        out[f"{name}_s"] = round(read_seconds(d / "model/train_summary.json"), 2)
        out[f"{name}_torch"] = summary["cpu"]["torch"]
        out[f"{name}_blas"] = summary["cpu"]["blas"]
    for name in ("native", "mkl_native"):
        out[f"{name}_ratio"] = round(out[f"{name}_s"] / out["pinned_s"], 3)
    return out


def startup_overhead(run: _Runner, tmp: Path) -> dict[str, float]:
    """Wall time of a 1-step arm fine-tune minus the time its training loop reports."""
    from visctx.config import load_params, study_points, unique_arms

    cfg = load_params(run.root / "params.yaml")
    arm = unique_arms(study_points(cfg["studies"]))[0].id
    args = ["visctx", "train-arms", "--arms", arm, "--train-json", "results/data/corpus/train.json",
            "--features-dir", "results/data/features/train", "--init", "results/base/seed0/model", "--steps", "1",
            "--batch-size", "4", "--lr", "1e-4", "--warmup-steps", "0", "--seed", "0", "--threads", "1",
            "--no-progress-bar"]
    out = {}
    for name, preload in (("plain", "0"), ("preload_cold", "1"), ("preload_warm", "1")):
        arms_dir = tmp / f"startup-{name}"
        wall, _ = run([*args, "--arms-dir", str(arms_dir)], VISCTX_PRELOAD=preload, VISCTX_PRELOAD_IDLE="30")
        inner = read_seconds(arms_dir / arm / "model/train_summary.json")
        out[f"{name}_wall_s"] = round(wall, 2)
        out[f"{name}_overhead_s"] = round(wall - inner, 2)
    return out


FRESH_CLONE_CHECK = "../shared/tools/fresh-clone-check"


def fresh_clone_check(out_dir: str = "results/perf", repo: str = ".",
                      commands: list[str] | None = None) -> dict:
    """Run the project's fresh-clone check (the README's two quick-start commands in a fresh clone
    of the committed HEAD, as CI and a newcomer run them) and record what it printed -- each
    command's exit code and wall time, and whether the run left the committed files unchanged -- in
    ``results/perf/fresh-clone-check.{json,md}``, the artifact the README quotes.

    Args:
        out_dir: where the record goes (relative to ``repo``).
        repo: the checkout whose HEAD is cloned.
        commands: the commands (default: the README's main command, then its test command).
    """
    repo_p = Path(repo).resolve()
    tool = (repo_p / FRESH_CLONE_CHECK).resolve()
    if not tool.is_file():
        raise FileNotFoundError(f"{tool}: the shared fresh-clone check is not there")
    commands = commands or ["bash scripts/run.sh", "bash scripts/test.sh"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_p, check=True, capture_output=True,
                            text=True).stdout.strip()
    proc = subprocess.run([str(tool), *commands], cwd=repo_p, capture_output=True, text=True)
    runs = [{"command": m[3], "exit": int(m[1]), "seconds": int(m[2])}
            for m in re.finditer(r"^\[\d+\] exit (\d+) after (\d+) s: (.*?)\s+\(log:", proc.stdout, re.M)]
    from visctx import cpu

    record = {"date": dt.date.today().isoformat(), "commit": commit, "machine": _machine(), "cpu": cpu.describe_host(),
              "runs": runs, "unchanged": "committed files unchanged by the run" in proc.stdout,
              "exit": proc.returncode, "output": proc.stdout.strip().splitlines()}
    out = (repo_p / out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fresh-clone-check.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"Fresh-clone check of commit {commit}, {record['date']}, on {record['machine']}:", "",
             "| command | exit | seconds |", "|---|---|---|"]
    lines += [f"| `{r['command']}` | {r['exit']} | {r['seconds']} |" for r in runs]
    lines += ["", "Committed files unchanged by the run: " + ("yes" if record["unchanged"] else "NO")]
    (out / "fresh-clone-check.md").write_text("\n".join(lines) + "\n")
    return record


def perf(out_dir: str = "results/perf", repo: str = ".", fresh: bool = True, keep: bool = False) -> dict:
    """Run the harness; ``fresh``: clone ``repo`` into a temporary directory and run the whole
    study there (install included); otherwise measure the finished study in ``repo`` itself.

    Args:
        out_dir: where ``perf.json``, ``perf.md`` and the log go (relative to ``repo``).
        repo: the checkout to measure.
        fresh: measure a fresh clone of ``repo`` (install and whole study) rather than ``repo``
            itself.
        keep: keep the temporary directory (the clone) afterwards.
    """
    repo_p = Path(repo).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="visctx-perf-"))
    root = tmp / "clone" if fresh else repo_p
    out_p = (repo_p / out_dir).resolve()
    out_p.mkdir(parents=True, exist_ok=True)
    log = out_p / "perf.log"
    log.write_text("")
    from visctx import cpu

    report: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": _machine(),
                              "cpu": cpu.describe_host() | {"kernels": cpu.check()}}
    try:
        if fresh:
            subprocess.run(["git", "clone", "--quiet", str(repo_p), str(root)], check=True)
            report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                                              capture_output=True, text=True).stdout.strip()
        run = _Runner(root, log)
        stages: dict[str, float] = {}
        if fresh:
            stages["install"], _ = run(["bash", "scripts/setup.sh"])
            for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"]:
                stages[stage], _ = run(["dvc", "repro", stage])
            stages["total"] = sum(stages.values())
            report["fresh_clone_s"] = {k: round(v, 1) for k, v in stages.items()}
        else:  # the no-op figures below need a finished study
            report["catch_up_s"] = round(run(["dvc", "repro"])[0], 1)
        # DVC skips a stage whose inputs it has seen, but Snakemake judges by its own metadata and
        # mtimes (a clone's analysis outputs are as old as the checkout): let it catch up first.
        report["snakemake_catch_up_s"] = round(run(["snakemake", "--nolock", "--quiet", "all"])[0], 1)
        report["noop_s"] = {
            "snakemake": round(run(["snakemake", "--nolock", "--quiet", "all"])[0], 2),
            "dvc repro": round(run(["dvc", "repro"])[0], 2),
            "dvc status": round(run(["dvc", "status"])[0], 2),
        }
        from visctx.config import raw_params

        params = raw_params(root / "params.yaml")  # the full config (--configfile replaces both files)
        report["reruns"] = rerun_sets(run, params, tmp)
        report["temp_experiment"] = temp_experiment(run, params)
        extract = params["data"]["extract"]
        videos = sorted((root / "results/data/videos/train").glob("*.mp4"))[:16]
        if videos:
            report["decode"] = decode_throughput(videos, extract["fps"], extract["max_frames"], extract["size"])
        report["encoder"] = encoder_passes(root / "results/data")
        report["startup"] = startup_overhead(run, tmp)
        report["kernels"] = kernel_cost(run, tmp)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    (out_p / "perf.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_p / "perf.md").write_text(to_markdown(report))
    return report


def _workspace(root: Path, out_dir: str, name: str) -> tuple[Path, _Runner, Path]:
    """A measurement's report folder, its runner (logging to ``<name>.log`` there, emptied) and a
    scratch folder for its models (the caller removes it)."""
    out_p = (root / out_dir).resolve()
    out_p.mkdir(parents=True, exist_ok=True)
    log = out_p / f"{name}.log"
    log.write_text("")
    return out_p, _Runner(root, log), Path(tempfile.mkdtemp(prefix=f"visctx-{name}-"))


def _finetune_and_evaluate(run: _Runner, cfg: dict, arms_dir: Path, arms: list[str], init: Path, seed: int,
                           **overrides: Any) -> dict[str, dict]:
    """Fine-tune ``arms`` from ``init`` with ``seed`` as the study's ``train_arm`` jobs do (its
    ``train.arm`` options, with ``overrides`` of them, e.g. ``steps``), evaluate them on the held-out split
    as ``evaluate_arm`` does, in ``arms_dir`` outside the DAG; each arm's evaluation record. One
    training process for the arms of each fine-tune length (``train.arm``'s budget rule,
    :mod:`visctx.budget`, unless ``steps`` is overridden) and one evaluation process for all
    ``arms`` (an arm trains exactly as it would alone)."""
    from visctx.benchmarks import scoring_mode
    from visctx.budget import arm_options

    results, ev = Path(run.root) / cfg["results"], cfg["evaluate"]
    by_options: dict[tuple, list[str]] = {}
    for arm in arms:
        options = {**arm_options(arm, cfg["train"]["arm"]), **overrides}
        by_options.setdefault(tuple(option_args(options)), []).append(arm)
    for options, group in by_options.items():
        run(["visctx", "train-arms", "--arms", *group, "--arms-dir", str(arms_dir),
             "--train-json", str(results / "data/corpus/train.json"), "--features-dir", str(results / "data/features/train"),
             "--threads", str(cfg["train"]["threads"]), "--no-progress-bar",
             *options, "--init", str(init), "--seed", str(seed)])
    run(["visctx", "evaluate-arms", "--arms", *arms, "--arms-dir", str(arms_dir),
         "--eval-json", str(results / "data/corpus/eval.json"),
         "--features-dir", str(results / "data/features/eval"), "--benchmark", "synthetic",
         "--batch-size", str(ev["batch_size"]), "--answer-mode", ev["answer_mode"],
         "--max-new-tokens", str(ev["max_new_tokens"]),
         "--scoring", scoring_mode(ev.get("scoring"), "synthetic"), "--threads", "1"])
    return {arm: json.loads((arms_dir / arm / "eval/synthetic.json").read_text()) for arm in arms}


def finetune_budget(arms: list[str] | None = None, steps: list[int] | None = None, lr: float | None = None,
                    seeds: list[int] | None = None, jobs: int = 2, repo: str = ".",
                    out_dir: str = "results/perf") -> dict:
    """What a longer fine-tune buys each question: on a finished study (its bases, features and
    ceiling), fine-tune each of ``arms`` from every replicate's base for each of ``steps`` (the
    study's ``train.arm`` options otherwise), evaluate on the held-out split, and set each task's
    loss (mean and across-seed SD) beside the arm's information ceiling and the study's own
    fine-tune. It says whether a question the study does not learn is out of the model's reach or
    only out of its budget, and what the budget would cost (seconds per fine-tune). Runs outside
    the DAG (it is a measurement of the training, not a table of the study): writes
    ``finetune-budget.{json,md}`` under ``out_dir``.

    Args:
        arms: the arms to fine-tune (default: the frame study's T = 16 arm at M = 25 of the joint
            grid, T16-M25-pool, and the window arm T32-M4-pool).
        steps: the fine-tune lengths (default 100, 300, 600, 1200).
        lr: their peak learning rate (default: the base's, ``train.base.lr``).
        seeds: the replicates (default: the study's ``seeds``).
        jobs: fine-tunes run side by side (one thread each).
        repo: the checkout with the finished study.
        out_dir: where the report goes (relative to ``repo``).
    """
    import csv
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from visctx.budget import arm_steps
    from visctx.config import load_params
    from visctx.synth import TASKS

    root = Path(repo).resolve()
    cfg = load_params(root / "params.yaml")
    results = root / cfg["results"]
    arm_cfg = dict(cfg["train"]["arm"])
    arms = list(arms or ["T16-M25-pool", "T32-M4-pool"])
    steps = sorted(set(steps or [100, 300, 600, 1200]))
    lr = float(cfg["train"]["base"]["lr"] if lr is None else lr)
    seeds = list(cfg["seeds"] if seeds is None else seeds)
    if min(steps) < 1 or jobs < 1:
        raise ValueError(f"steps must be >= 1 and jobs >= 1; got steps={steps}, jobs={jobs}")
    ceiling_csv = results / "tables/ceiling.csv"
    arms_csv = results / "tables/arms.csv"
    for path in [ceiling_csv, arms_csv] + [results / f"base/seed{s}/model" for s in seeds]:
        if not path.exists():
            raise FileNotFoundError(f"{path}: finetune-budget needs a finished study (bash scripts/run.sh)")
    ceiling = {r["arm"]: r for r in csv.DictReader(ceiling_csv.open())}
    study = [r for r in csv.DictReader(arms_csv.open()) if r["benchmark"] == "synthetic"]
    missing = [a for a in arms if a not in ceiling]
    if missing:
        raise ValueError(f"arms {missing} are not arms of the study (not in {ceiling_csv})")
    out_p, run, tmp = _workspace(root, out_dir, "finetune-budget")

    def one(job: tuple[str, int, int]) -> dict[str, Any]:
        arm, n, seed = job
        arms_dir = tmp / f"seed{seed}-steps{n}"
        result = _finetune_and_evaluate(run, cfg, arms_dir, [arm], results / f"base/seed{seed}/model", seed,
                                        steps=n, lr=lr)[arm]
        summary = json.loads((arms_dir / arm / "model/train_summary.json").read_text())
        return {"arm": arm, "steps": n, "seed": seed, "seconds": round(read_seconds(arms_dir / arm / "model/train_summary.json"), 1),
                "final_train_loss": round(summary["final_loss"], 4), "loss": round(result["loss"], 4),
                **{t: round(result["per_task"][t]["loss"], 4) for t in TASKS}}

    todo = [(a, n, s) for a in arms for n in steps for s in seeds]
    try:
        with ThreadPoolExecutor(jobs) as pool:
            runs = list(pool.map(one, todo))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": round(statistics.fmean(values), 4),
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}

    rows = []
    for arm in arms:
        ref = [r for r in study if r["arm"] == arm and int(r["seed"]) in seeds]
        groups = [("study", arm_steps(arm, arm_cfg), float(arm_cfg["lr"]),
                   [{"loss": float(r["loss"]), **{t: float(r[f"loss_{t}"]) for t in TASKS}} for r in ref], None)]
        for n in steps:
            rs = [r for r in runs if r["arm"] == arm and r["steps"] == n]
            groups.append(("longer", n, lr, rs, statistics.fmean(r["seconds"] for r in rs)))
        for kind, n, rate, rs, seconds in groups:
            rows.append({"arm": arm, "run": kind, "steps": n, "lr": rate, "seeds": len(rs), "seconds": seconds and round(seconds, 1),
                         "loss": stat([r["loss"] for r in rs]),
                         **{t: stat([r[t] for r in rs]) | {"ceiling": round(float(ceiling[arm][f"loss_{t}"]), 4)}
                            for t in TASKS}})
    from visctx import cpu

    report = {"date": dt.date.today().isoformat(), "machine": _machine(), "cpu": cpu.describe_host(),
              "arms": arms, "steps": steps, "lr": lr, "seeds": seeds, "out_dir": out_dir, "rows": rows, "runs": runs}
    (out_p / "finetune-budget.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_p / "finetune-budget.md").write_text(budget_markdown(report))
    return report


def budget_command(r: dict) -> str:
    """The harness command that makes the fine-tune budget record ``r`` again, its options spelled
    out (a record of other arms or lengths than the default is regenerated by its own command)."""
    return (f"bash scripts/perf.sh --finetune-budget --arms {' '.join(r['arms'])} "
            f"--steps {' '.join(map(str, r['steps']))} --lr {r['lr']:g} --seeds {' '.join(map(str, r['seeds']))}"
            + (f" --out-dir {r['out_dir']}" if r.get("out_dir", "results/perf") != "results/perf" else ""))


def budget_markdown(r: dict) -> str:
    """The fine-tune budget report as a table: per arm and budget, each task's loss (mean +- SD
    over seeds) with the arm's ceiling on the header line."""
    from visctx.synth import TASKS

    lines = [f"# What a longer fine-tune buys ({r['date']}, {r['machine']})", "",
             f"Fine-tunes from each replicate's base (seeds {', '.join(map(str, r['seeds']))}); held-out loss per "
             "question type, mean +- SD over seeds; `study`: the study's own fine-tune (results/tables/arms.csv). "
             f"Regenerate: `{budget_command(r)}`.", ""]
    for arm in r["arms"]:
        rows = [x for x in r["rows"] if x["arm"] == arm]
        head = ["run", "steps", "lr", "s / fine-tune", "loss", *TASKS]
        lines += [f"## {arm}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                  "| ceiling | | | | | " + " | ".join(f"{rows[0][t]['ceiling']:.3f}" for t in TASKS) + " |"]
        for x in rows:
            cells = [x["run"], str(x["steps"]), f"{x['lr']:g}", "" if x["seconds"] is None else f"{x['seconds']:.0f}",
                     f"{x['loss']['mean']:.3f} +- {x['loss']['sd']:.3f}",
                     *(f"{x[t]['mean']:.3f} +- {x[t]['sd']:.3f}" for t in TASKS)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _study_effects(results: Path, seeds: list[int], what: str) -> tuple[list[dict[str, str]], dict[tuple[int, str], dict]]:
    """The study's four effects (``report.effect_arms``: each study and method's smallest and
    largest setting) and the evaluation record of each end arm in each of ``seeds`` (the records,
    not ``arms.csv``, which rounds them)."""
    import pandas as pd

    from visctx.report import effect_arms

    design_csv = results / "tables/design.csv"
    if not design_csv.exists():
        raise FileNotFoundError(f"{design_csv}: {what} needs a finished study (bash scripts/run.sh)")
    design = pd.read_csv(design_csv)
    effects = [{"study": study, "method": method, "from": ends[0], "to": ends[1]}
               for study in ("tokens", "frames") for method in ("pool", "sample")
               if (ends := effect_arms(design, study, method))]
    evals = {(s, a): results / f"arms/seed{s}/{a}/eval/synthetic.json"
             for s in seeds for a in sorted({e[k] for e in effects for k in ("from", "to")})}
    for path in evals.values():
        if not path.exists():
            raise FileNotFoundError(f"{path}: {what} needs the study's evaluations of its end arms (bash scripts/run.sh)")
    return effects, {key: json.loads(path.read_text()) for key, path in evals.items()}


def within_and_across(rows: pd.DataFrame) -> dict[str, Any]:
    """The two SDs a noise split compares, from ``rows`` of (``base``, ``finetune``, ``value``): across
    replicates, the SD over bases of the replicates' own fine-tunes (``finetune == base``: base and
    fine-tune drawn together, as the study draws them); within a base, the pooled SD over the
    fine-tunes of each base (the fine-tune's noise alone). ``F`` = across / within variance with
    its p: how likely an F this large is if the base added nothing to the fine-tune's noise."""
    from scipy import stats as st

    own = rows[rows["finetune"] == rows["base"]]
    if own["base"].nunique() < 2 or own["base"].duplicated().any():
        raise ValueError(f"a noise split needs each of >= 2 bases' own fine-tune once; have bases {sorted(own['base'])}")
    across_var, across_df = float(own["value"].var(ddof=1)), len(own) - 1
    groups = rows.groupby("base")["value"]
    within_df = int((groups.count() - 1).sum())
    if within_df < 1:
        raise ValueError("a noise split needs >= 2 fine-tunes of some base")
    within_var = float(((rows["value"] - groups.transform("mean")) ** 2).sum()) / within_df
    f = across_var / within_var if within_var > 0 else float("inf")
    return {"across_sd": math.sqrt(across_var), "across_df": across_df, "within_sd": math.sqrt(within_var),
            "within_df": within_df, "finetune_share": within_var / across_var if across_var > 0 else float("nan"),
            "F": f, "p": float(st.f.sf(f, across_df, within_df))}


def noise_split(bases: list[int] | None = None, finetune_seeds: list[int] | None = None, jobs: int = 2,
                repo: str = ".", out_dir: str = "results/perf") -> dict:
    """Where the across-seed noise of the study's four effects comes from: the base or the fine-tune.
    A replicate draws both, so the study alone cannot tell them apart (``stats.variance_components``
    splits off only what a base gives all its arms alike, which the paired effects cancel). On a
    finished study, fine-tune the two end arms of each effect (as ``report``'s effects: the smallest
    and the largest setting) again from each of ``bases`` with each of ``finetune_seeds``, evaluate,
    and set each effect's SD across fine-tunes of one base beside its SD across replicates
    (:func:`within_and_across`). The first base's own fine-tune is rerun first and must give the
    study's losses exactly. A fine-tune share near 1 says the noise is the fine-tune's, which
    averaging k fine-tunes per base divides by about k at k times the fine-tune compute; near 0,
    the base's, which only more or steadier bases lower. Runs outside the DAG: writes
    ``noise-split.{json,md}`` under ``out_dir``.

    Args:
        bases: the replicates whose bases are fine-tuned again (default: the study's seeds).
        finetune_seeds: the fine-tunes' seeds beside each replicate's own (default 101, 102, 103:
            seeds that no replicate draws).
        jobs: (base, fine-tune seed) groups run side by side (one thread each).
        repo: the checkout with the finished study.
        out_dir: where the report goes (relative to ``repo``).
    """
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    from visctx.config import load_params

    root = Path(repo).resolve()
    cfg = load_params(root / "params.yaml")
    results = root / cfg["results"]
    bases = list(cfg["seeds"] if bases is None else bases)
    finetune_seeds = list(finetune_seeds or [101, 102, 103])
    if set(bases) & set(finetune_seeds) or jobs < 1:
        raise ValueError(f"the fine-tune seeds must differ from the bases' own and jobs >= 1; got bases={bases}, "
                         f"finetune_seeds={finetune_seeds}, jobs={jobs}")
    for path in [results / f"base/seed{b}/model" for b in bases]:
        if not path.exists():
            raise FileNotFoundError(f"{path}: noise-split needs a finished study (bash scripts/run.sh)")
    effects, own = _study_effects(results, bases, "noise-split")
    arms = sorted({e[k] for e in effects for k in ("from", "to")})
    losses = [{"base": b, "finetune": b, "arm": a, "loss": float(r["loss"])} for (b, a), r in own.items()]
    out_p, run, tmp = _workspace(root, out_dir, "noise-split")

    def one(job: tuple[int, int]) -> list[dict[str, Any]]:
        b, f = job
        records = _finetune_and_evaluate(run, cfg, tmp / f"base{b}-ft{f}", arms, results / f"base/seed{b}/model", f)
        return [{"base": b, "finetune": f, "arm": a, "loss": float(records[a]["loss"])} for a in arms]

    # the first base's own fine-tune once more: the harness must fine-tune as the study does, or its
    # within-base SD measures another training
    redo = (bases[0], bases[0])
    try:
        with ThreadPoolExecutor(jobs) as pool:
            parts = list(pool.map(one, [redo] + [(b, f) for b in bases for f in finetune_seeds]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    study_own = {x["arm"]: x["loss"] for x in losses if x["base"] == redo[0]}
    differ = {x["arm"]: (study_own[x["arm"]], x["loss"]) for x in parts[0] if x["loss"] != study_own[x["arm"]]}
    if differ:
        raise RuntimeError(f"the harness's fine-tune of base {redo[0]} is not the study's (study, harness): {differ}; "
                           f"see {out_p / 'noise-split.log'}")
    losses += [x for part in parts[1:] for x in part]
    table = pd.DataFrame(losses)
    wide = table.pivot_table(index=["base", "finetune"], columns="arm", values="loss").reset_index()
    rows = []
    for e in effects:
        value = (wide[e["to"]] - wide[e["from"]]) / wide[e["from"]]
        rows.append({**e, "kind": "effect", **within_and_across(wide[["base", "finetune"]].assign(value=value))})
    for arm in arms:
        rows.append({"arm": arm, "kind": "loss", **within_and_across(wide[["base", "finetune"]].assign(value=wide[arm]))})
    from visctx import cpu

    report = {"date": dt.date.today().isoformat(), "machine": _machine(), "cpu": cpu.describe_host(),
              "bases": bases, "finetune_seeds": finetune_seeds, "out_dir": out_dir, "rows": rows,
              "runs": table.round(6).to_dict("records")}
    (out_p / "noise-split.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_p / "noise-split.md").write_text(noise_split_markdown(report))
    return report


def noise_split_markdown(r: dict) -> str:
    """The noise split as two tables: each effect's SD across replicates and within a base, then
    each end arm's loss the same way."""
    cmd = (f"bash scripts/perf.sh --noise-split --bases {' '.join(map(str, r['bases']))} "
           f"--finetune-seeds {' '.join(map(str, r['finetune_seeds']))}"
           + (f" --out-dir {r['out_dir']}" if r.get("out_dir", "results/perf") != "results/perf" else ""))
    lines = [f"# Where the effects' noise comes from ({r['date']}, {r['machine']})", "",
             f"The end arms of each effect fine-tuned again from the bases of seeds {', '.join(map(str, r['bases']))}, "
             f"each with fine-tune seeds {', '.join(map(str, r['finetune_seeds']))} beside the replicate's own. "
             "Across replicates: the SD over the bases of their own fine-tunes (the study's across-seed SD). "
             "Within a base: the pooled SD over one base's fine-tunes (the fine-tune's noise alone). "
             "Fine-tune share: within / across variance (near 1: the fine-tune's noise; near 0: the base's). "
             "p: of an F this large if the base added nothing. "
             f"Regenerate: `{cmd}`.", "",
             "| effect | from | to | SD across replicates (df) | SD within a base (df) | fine-tune share | F | p |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        if x["kind"] == "effect":
            lines.append(f"| {x['study']} / {x['method']} | {x['from']} | {x['to']} | {100 * x['across_sd']:.2f} % ({x['across_df']}) "
                         f"| {100 * x['within_sd']:.2f} % ({x['within_df']}) | {x['finetune_share']:.2f} | {x['F']:.2f} | {x['p']:.3f} |")
    lines += ["", "| arm | loss SD across replicates (df) | within a base (df) | fine-tune share | F | p |", "|---|---|---|---|---|---|"]
    for x in r["rows"]:
        if x["kind"] == "loss":
            lines.append(f"| {x['arm']} | {x['across_sd']:.4f} ({x['across_df']}) | {x['within_sd']:.4f} ({x['within_df']}) "
                         f"| {x['finetune_share']:.2f} | {x['F']:.2f} | {x['p']:.3f} |")
    return "\n".join(lines) + "\n"


def search_attention(probes: list[str] | None = None, seeds: list[int] | None = None, repo: str = ".",
                     out_dir: str = "results/perf") -> dict:
    """Whether each replicate's arms search for the question's object, beside the study's effects
    (:mod:`visctx.attention`). A probe is ``ARM:task``: the arm's trained model of each seed,
    on every held-out question of that task; the default probes are the far end of the frame
    study's pooling effect on the needle (one flash among all the frames) and of the token study's
    on the detail (one small object among all the tokens). For each probe and seed: per layer, the
    attention mass on the object's tokens, its lift over uniform attention and how often the most
    attended token is the object's, with the probe's task loss and the seed's four effects; across
    seeds, Spearman's rho between the strongest layer's lift and each effect (the noise-split's
    question one step further: what the bases that give larger effects do differently). Reads the
    finished study only (no training): writes ``search-attention.{json,md}`` under ``out_dir``.

    Args:
        probes: ``ARM:task`` pairs (default: the frame pooling effect's largest-T arm on ``needle``,
            the token pooling effect's largest-M arm on ``detail``).
        seeds: the replicates (default: the study's seeds).
        repo: the checkout with the finished study.
        out_dir: where the report goes (relative to ``repo``).
    """
    from scipy import stats as st

    from visctx import cpu
    from visctx.attention import answer_attention, strongest, summarise
    from visctx.config import Arm, load_params
    from visctx.data import EvalRecord
    from visctx.evaluate import _open
    from visctx.model import VideoModel
    from visctx.synth import TASKS, load_videos_json

    root = Path(repo).resolve()
    cfg = load_params(root / "params.yaml")
    results = root / cfg["results"]
    seeds = list(cfg["seeds"] if seeds is None else seeds)
    effects, own = _study_effects(results, seeds, "search-attention")
    ends = {(e["study"], e["method"]): e["to"] for e in effects}
    if probes is None:
        probes = [f"{ends[key]}:{task}" for key, task in ((("frames", "pool"), "needle"), (("tokens", "pool"), "detail"))
                  if key in ends]
    parsed = []
    for p in probes:
        arm_id, _, task = p.partition(":")
        if task not in TASKS:
            raise ValueError(f"probe {p!r}: give ARM:task with a task of {', '.join(TASKS)}")
        parsed.append((Arm.from_id(arm_id), task))
    ex = cfg["data"]["extract"]
    specs = {v["video"]: v for v in load_videos_json(results / "data/corpus/videos.json")["videos"]}
    items, store = _open(str(results / "data/corpus/eval.json"), str(results / "data/features/eval"))
    kernels = cpu.check()
    out_p = (root / out_dir).resolve()
    out_p.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for arm, task in parsed:
        records = [EvalRecord(it.id, it.video, it.question, it.options, it.answer, it.task_type)
                   for it in items if it.task_type == task]
        for seed in seeds:
            model_dir = results / f"arms/seed{seed}/{arm.id}/model"
            ev = results / f"arms/seed{seed}/{arm.id}/eval/synthetic.json"
            if not model_dir.exists() or not ev.exists():
                raise FileNotFoundError(f"{model_dir}: search-attention needs the study's trained and evaluated arm")
            model = VideoModel.load(model_dir)
            cpu.require_same(model.meta.get("cpu"), kernels, str(model_dir))
            layers = summarise(answer_attention(model, records, store, arm, specs, task, ex["fps"], ex["max_frames"],
                                                cfg["evaluate"]["batch_size"]))
            effect = {f"{e['study']}/{e['method']}": own[(seed, e["to"])]["loss"] / own[(seed, e["from"])]["loss"] - 1
                      for e in effects}
            rows.append({"arm": arm.id, "task": task, "seed": seed, "layers": layers,
                         "task_loss": json.loads(ev.read_text())["per_task"][task]["loss"], "effects": effect})
    correlations = []
    for arm, task in parsed:
        mine = [r for r in rows if (r["arm"], r["task"]) == (arm.id, task)]
        lift = [strongest(r["layers"])["lift"] for r in mine]
        for name in [*mine[0]["effects"], "task_loss"]:
            y = [r["task_loss"] if name == "task_loss" else r["effects"][name] for r in mine]
            rho, p = st.spearmanr(lift, y) if len(mine) > 2 else (math.nan, math.nan)
            correlations.append({"arm": arm.id, "task": task, "with": name, "rho": float(rho), "p": float(p),
                                 "n": len(mine)})
    report = {"date": dt.date.today().isoformat(), "machine": _machine(), "cpu": cpu.describe_host(),
              "seeds": seeds, "probes": probes, "out_dir": out_dir, "rows": rows, "correlations": correlations}
    (out_p / "search-attention.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_p / "search-attention.md").write_text(search_attention_markdown(report))
    return report


def search_attention_markdown(r: dict) -> str:
    """A table per probe (a row per seed: each layer's lift and mass, the strongest layer's hits, the
    task loss, the seed's effects) and the rank correlations across seeds."""
    from visctx.attention import strongest

    cmd = (f"bash scripts/perf.sh --search-attention --probes {' '.join(r['probes'])} "
           f"--seeds {' '.join(map(str, r['seeds']))}"
           + (f" --out-dir {r['out_dir']}" if r.get("out_dir", "results/perf") != "results/perf" else ""))
    lines = [f"# Where the answer looks ({r['date']}, {r['machine']})", "",
             "The attention that the position predicting the answer pays to the visual tokens holding the "
             "question's object (`visctx.attention.target_tokens`: the ceiling's account of the arm's context; "
             "for the needle, only the frames where it shows), heads averaged, on every held-out question of the "
             "task. Mass: the object's share of the attention on visual tokens; lift: the median over questions "
             "of mass / what uniform attention would give (1: no search; below 1: looking away); hits: questions "
             "whose most attended visual token holds the object, at the layer of highest lift. Effects: the "
             "seed's relative loss change from the smallest to the largest setting (the study's). "
             f"Regenerate: `{cmd}`."]
    for probe in r["probes"]:
        arm, _, task = probe.partition(":")
        mine = [x for x in r["rows"] if (x["arm"], x["task"]) == (arm, task)]
        if not mine:
            continue
        n_layers = len(mine[0]["layers"])
        names = list(mine[0]["effects"])
        lines += ["", f"## {arm}, the {task} question ({mine[0]['layers'][0]['n']} questions; uniform mass "
                      f"{mine[0]['layers'][0]['uniform']:.3f})", "",
                  "| seed | " + " | ".join(f"layer {i}: lift (mass)" for i in range(n_layers))
                  + f" | hits | {task} loss | " + " | ".join(names) + " |",
                  "|---" * (3 + n_layers + len(names)) + "|"]
        for x in mine:
            best = strongest(x["layers"])
            lines.append(f"| {x['seed']} | " + " | ".join(f"{y['lift']:.2f} ({y['mass']:.3f})" for y in x["layers"])
                         + f" | {best['hit']:.2f} (layer {best['layer']}) | {x['task_loss']:.3f} | "
                         + " | ".join(f"{100 * x['effects'][k]:.2f} %" for k in names) + " |")
        corr = [c for c in r["correlations"] if (c["arm"], c["task"]) == (arm, task)]
        lines += ["", "Spearman's rho across seeds, the strongest layer's lift against: "
                  + "; ".join(f"{c['with']} {c['rho']:.2f} (p {c['p']:.2f}, n {c['n']})" for c in corr) + "."]
    return "\n".join(lines) + "\n"


def to_markdown(r: dict) -> str:
    lines = [f"Measured {r['date']} on {r['machine']}" + (f", commit {r['commit']}" if "commit" in r else "") + ".", ""]
    if "cpu" in r:
        c = r["cpu"]
        lines += [f"CPU: {c['vendor']} {c['model']}, {c['cpus']} CPUs, instruction sets {' '.join(c['isa'])}; "
                  f"kernels used: torch {c['kernels'].get('torch')}, NumPy {c['kernels']['numpy']} "
                  f"(pin {c['kernels']['pin']}).", ""]
    if "fresh_clone_s" in r:
        lines += ["| fresh clone, stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["fresh_clone_s"].items()] + [""]
    lines += ["| no-op rerun | seconds |", "|---|---|"] + [f"| {k} | {v} |" for k, v in r["noop_s"].items()] + [""]
    lines += ["| change | jobs a dry run schedules | as expected |", "|---|---|---|"]
    for k, v in r["reruns"].items():
        if isinstance(v, dict):
            jobs = ", ".join(f"{rule} {n}" for rule, n in v["jobs"].items()) or "none"
            lines.append(f"| {k} | {jobs} | {'yes' if v['as_expected'] else 'NO'} |")
    if "temp_experiment" in r:
        t = r["temp_experiment"]
        jobs = ", ".join(f"{rule} {n}" for rule, n in t["jobs"].items()) or "none"
        lines.append(f"| `dvc exp run --temp -S {t['change']}` ({t['seconds']} s) | {jobs} (run) | "
                     f"{'yes' if t['as_expected'] else 'NO'} |")
    lines.append("")
    if "decode" in r:
        d = r["decode"]
        lines += [f"Decoding {d['videos']} videos: 1 fps with sorted indices {d['selective_s']} s "
                  f"({d['frames_kept']} frames kept), every frame {d['full_decode_s']} s "
                  f"({d['frames_in_videos']} frames): {d['speedup']}x.", ""]
    e = r["encoder"]
    lines += [f"Vision encoder: {e['encoded_frames']} frames encoded for {e['distinct_frames']} distinct frames "
              f"= {e['passes_per_frame']} passes per frame.", ""]
    s = r["startup"]
    lines += ["| one training job (1 step) | wall s | start-up overhead s |", "|---|---|---|"]
    lines += [f"| {k} | {s[f'{k}_wall_s']} | {s[f'{k}_overhead_s']} |" for k in ("plain", "preload_cold", "preload_warm")]
    if "kernels" in r:
        k = r["kernels"]
        lines += ["", f"| CPU kernels, base mixture, {k['steps']} steps | torch kernels | BLAS | seconds | ratio |",
                  "|---|---|---|---|---|",
                  f"| pinned (default) | {k['pinned_torch']} | {k.get('pinned_blas', '')} | {k['pinned_s']} | 1 |",
                  f"| native (`VISCTX_CPU_PIN=off`) | {k['native_torch']} | {k.get('native_blas', '')} | {k['native_s']} | "
                  f"{k['native_ratio']} |",
                  f"| torch and NumPy pinned, MKL native | {k['mkl_native_torch']} | {k.get('mkl_native_blas', '')} | "
                  f"{k['mkl_native_s']} | {k['mkl_native_ratio']} |"]
    return "\n".join(lines) + "\n"
