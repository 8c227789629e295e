"""The workflow itself: rules run on a micro configuration, then the whole DAG through DVC.

One copy of the project is made per module; rule-level tests run single Snakemake targets in it
and check what they wrote; the smoke test kills a first `dvc repro` halfway, runs it again end to
end, checks that a second
`dvc repro` is a no-op and that `dvc exp run -S window=...` moves the optimum without
retraining any arm.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from visctx.benchmarks import LOADERS
from visctx.budget import arm_steps
from visctx.config import deep_merge, load_params, raw_params, study_points, unique_arms
from visctx.synth import write_mp4

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MICRO = {
    "seeds": [0, 1],  # two training replicates: every table and fit then carries an across-seed interval
    "data": {
        "synthetic": {"n_train": 48, "n_eval": 16, "seconds": 12, "fps": 2, "size": 108, "max_side": 8},  # needles big enough for M = 4 to read (NIAH)
        "shards": {"train": 2, "eval": 1},
        "extract": {"fps": 1.0, "max_frames": 8, "size": 54},
    },
    "studies": {
        "tokens": {"frames": 2, "tokens": [1, 9, 49], "methods": ["sample", "pool"]},
        "frames": {"tokens": 4, "token_method": "pool", "frames": [1, 2, 4, 8], "methods": ["sample", "pool"],
                   "pool_source": 8},
        "joint": {"token_method": "pool", "tokens": [9], "frames": [4, 8]},
        "window": {"token_method": "pool", "combos": [[4, 9], [8, 4]]},
        # one window, every way to spend it (LongViViT's masking, Video-XL's summary tokens)
        "methods": {"combos": [[8, 4]], "summary_ratio": 4, "summary_window": 0,
                    "methods": ["sample", "pool", "mask", "tube", "masktrain", "tubetrain", "summary"]},
    },
    "train": {"threads": 1, "base": {"steps": 30, "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 5},
              # a budget that grows with the context (visctx.budget): 4, 5 or 6 steps by arm
              "arm": {"steps": 4, "token_steps": 0.25, "max_steps": 6, "batch_size": 8, "lr": 1.0e-3, "warmup_steps": 1}},
    "evaluate": {"benchmarks": ["synthetic", *LOADERS]},
    "window": 40,  # the window L: combos inside it, the optimum for it
    "analysis": {"n_boot": 50, "seed": 0},
}


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC copy of the project with the micro params."""
    dst = tmp_path_factory.mktemp("project")
    for item in ("Snakefile", "dvc.yaml", "workflow", "profiles", "src", ".dvc", ".dvcignore", ".gitignore", "config", "data"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / item,
                                                             **({"ignore": shutil.ignore_patterns("tmp", "cache", "__pycache__")} if src.is_dir() else {}))
    params = deep_merge(raw_params(ROOT / "params.yaml"), MICRO)
    params["benchmarks"] = bench_fixtures(dst)
    knobs = {k: params.pop(k) for k in ("preset", "results", "window", "seeds")}  # as the repository splits them
    (dst / "config/config.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dst / "params.yaml").write_text(yaml.safe_dump(knobs, sort_keys=False))
    load_params(dst / "params.yaml")  # the micro config is itself valid
    run(["git", "init", "-q"], dst)
    run(["dvc", "add", "-q", "data/benchmarks"], dst)  # as data/README.md asks: --temp workspaces then have it
    run(["git", "add", "-A"], dst)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "micro"], dst)
    return dst


FIXTURES = ROOT / "tests/fixtures/benchmarks"
ANNOTATIONS = {"eventbench": "eventbench/test.jsonl", "vnbench": "vnbench/VNBench-main-4try.json", "mlvu": "mlvu",
               "longvideobench": "longvideobench/lvb_val.json", "videomme": "videomme/videomme.json"}


def bench_fixtures(project: Path) -> dict:
    """Each benchmark's fixture in its published format under ``data/benchmarks/<name>/`` (where
    the paper preset keeps them), with a small real mp4 for every video it names (8 s at 2 fps, a
    different colour per video): the benchmarks run through the same rules as a full run."""
    rng = np.random.default_rng(0)
    out = {}
    for name, rel in ANNOTATIONS.items():
        home = Path("data/benchmarks") / name
        annotations = home / Path(rel).name
        (project / home).mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (FIXTURES / rel).is_dir() else shutil.copy2)(FIXTURES / rel, project / annotations)
        for video in sorted({it.video for it in LOADERS[name](FIXTURES / rel)}):
            frames = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (16, 108, 108, 3))
            (project / home / "videos" / video).parent.mkdir(parents=True, exist_ok=True)
            write_mp4(project / home / "videos" / video, np.ascontiguousarray(frames), fps=2)
        out[name] = {"annotations": str(annotations), "video_root": str(home / "videos"), "shards": 1}
    return out


def micro_arms() -> list[str]:
    return [a.id for a in unique_arms(study_points(deep_merge({"studies": {}}, MICRO)["studies"]))]


def test_dry_run_lists_every_job(project):
    out = run(["snakemake", "-n", "--quiet", "rules"], project).stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    n, seeds = len(micro_arms()), len(MICRO["seeds"])
    assert counts["train_arm"] == n * seeds  # a job per (arm, seed) and per (arm, seed, benchmark)
    assert counts["evaluate_arm"] == n * seeds * (1 + len(LOADERS))
    assert counts["train_base"] == seeds and counts["render_videos"] == 3 and counts["niah"] == seeds
    assert counts["benchmark_items"] == len(LOADERS) and counts["encode_features"] == 3 + len(LOADERS)


def test_bad_params_stop_before_any_job(project, tmp_path):
    bad = raw_params(project / "params.yaml")
    bad["studies"]["window"]["combos"].append([8, 9])  # 72 > window 40
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["snakemake", "-n", "--configfile", str(cfg)], cwd=project, env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "studies.window.combos[2]=[8, 9]" in proc.stderr + proc.stdout
    assert not (project / "results").exists()


def test_data_rules_write_frames_and_features(project):
    run(["snakemake", "--cores", "2", "results/data/features/eval/shard-000.npy"], project)
    data = project / "results/data"
    corpus = json.loads((data / "corpus/eval.json").read_text())
    meta = json.loads((data / "frames/eval/shard-000.json").read_text())
    frames = np.load(data / "frames/eval/shard-000.npy")
    assert sorted(meta["videos"]) == sorted({r["video"] for r in corpus})
    assert frames.shape == (len(meta["videos"]), 8, 54, 54, 3) and frames.dtype == np.uint8
    assert frames.std() > 1  # real decoded pixels, not a blank buffer
    fmeta = json.loads((data / "features/eval/shard-000.json").read_text())
    feats = np.load(data / "features/eval/shard-000.npy", mmap_mode="r")
    assert fmeta["videos"] == meta["videos"]
    assert feats.shape[:4] == (len(meta["videos"]), 8, 27, 27) and feats.dtype == np.float16
    assert np.isfinite(np.asarray(feats[:2], dtype=np.float32)).all()


@pytest.fixture(scope="module")
def repro(project):
    """The whole micro study through DVC, as the README's main command runs it -- after a first
    `dvc repro` was killed (SIGKILL to DVC, Snakemake and every job) in the middle of training the
    arms: the rerun must not be blocked by a lock and must finish the work, redoing only what was
    not done (the finished base model is kept)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    killed = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    arms = project / "results/arms"
    deadline = time.monotonic() + 900
    while killed.poll() is None and time.monotonic() < deadline:
        if arms.is_dir() and any(arms.glob("seed*/*/train.log")):  # arm jobs are running
            break
        time.sleep(0.2)
    assert killed.poll() is None, "dvc repro ended before the arms were trained: nothing was killed"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    seed_dir = next(arms.glob("seed*/*/train.log")).parent.parent.name  # a replicate whose arms had started
    base = project / f"results/base/{seed_dir}/model/model.json"
    base_mtime = base.stat().st_mtime_ns
    run(["dvc", "repro"], project, timeout=1500)
    assert base.stat().st_mtime_ns == base_mtime  # finished work is kept, not redone
    return project


def test_dvc_repro_produces_every_artifact(repro):
    arms = pd.read_csv(repro / "results/tables/arms.csv")
    syn = arms[arms["benchmark"] == "synthetic"]
    assert sorted(syn["arm"]) == sorted(micro_arms() * len(MICRO["seeds"]))  # a row per (arm, seed)
    assert all(sorted(g) == MICRO["seeds"] for _, g in syn.groupby("arm")["seed"])
    assert syn.groupby("arm")["loss"].nunique().gt(1).all()  # the replicates are independent draws
    assert arms["loss"].gt(0).all() and arms["accuracy"].between(0, 1).all()
    videos = pd.read_csv(repro / "results/tables/videos.csv")
    sv = videos[videos["benchmark"] == "synthetic"]
    assert len(sv) == len(syn) * MICRO["data"]["synthetic"]["n_eval"]  # a row per (arm, seed, video)
    per = sv.groupby(["arm", "seed"])[["nll", "ntok"]].sum()  # the per-video sums add up to the arm's loss
    assert (per["nll"] / per["ntok"]).to_numpy() == pytest.approx(syn.set_index(["arm", "seed"]).loc[per.index, "loss"]
                                                                  .to_numpy(), rel=1e-4)
    t1 = pd.read_csv(repro / "results/tables/table1_tokens.csv")
    assert (t1["seeds"] == 2).all() and t1["loss_lo"].lt(t1["loss"]).all() and t1["loss"].lt(t1["loss_hi"]).all()
    for name in ("table1_tokens", "table2_frames", "table3_joint", "table4_window", "table5_fits", "model_selection",
                 "benchmarks"):
        for ext in ("md", "csv", "tex"):
            assert (repro / f"results/tables/{name}.{ext}").stat().st_size > 0
    for name in ("tokens_loss", "frames_loss", "joint_contour", "accuracy_by_task"):
        assert (repro / f"results/figures/{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (repro / f"results/figures/{name}.pdf").read_bytes()[:5] == b"%PDF-"
    metrics = json.loads((repro / "results/metrics_full.json").read_text())
    opt = metrics["optimum"]
    assert opt["budget"] == MICRO["window"] and opt["T"] * opt["M"] <= opt["budget"]
    assert metrics["seeds"] == 2 and metrics["tokens"]["pool"]["effect_sd"] > 0
    headline = json.loads((repro / "results/metrics.json").read_text())  # what dvc exp show shows
    assert list(headline) == ["optimum", "effect", "loss_sd", "findings_hold"]
    assert headline["optimum"]["T"] == opt["T"] and headline["effect"]["tokens_pool"] == metrics["tokens"]["pool"]["effect"]
    curves = pd.read_csv(repro / "results/tables/curves.csv")  # one place, one format: a DVC plot
    runs = set(map(tuple, curves[["run", "seed"]].drop_duplicates().values.tolist()))
    assert runs == {(a, s) for a in [*micro_arms(), "base"] for s in MICRO["seeds"]}
    rows = curves.groupby(["run", "seed"]).size()  # Lightning logs every min(10, steps) steps
    base_steps = MICRO["train"]["base"]["steps"]
    assert (rows.loc["base"] == base_steps // min(10, base_steps)).all()
    steps = {a: arm_steps(a, MICRO["train"]["arm"]) for a in micro_arms()}  # each arm its own budget
    assert len(set(steps.values())) > 1
    assert all(rows.loc[a].eq(n // min(10, n)).all() for a, n in steps.items())
    for arm, n in steps.items():  # the rule's steps, run by the workflow, as the arm's training records them
        for seed in MICRO["seeds"]:
            assert json.loads((repro / f"results/arms/seed{seed}/{arm}/model/train_summary.json").read_text())["steps"] == n
    assert all(syn.loc[syn["arm"] == a, "steps"].eq(n).all() for a, n in steps.items())  # and the tidy table's
    assert curves["loss"].gt(0).all() and curves.groupby(["run", "seed"])["step"].max().loc["base"].eq(base_steps).all()
    for arm in micro_arms():  # one job, one log per (arm, seed)
        for seed in MICRO["seeds"]:
            assert f"{arm}: " in (repro / f"results/arms/seed{seed}/{arm}/train.log").read_text()
            assert (repro / f"results/arms/seed{seed}/{arm}/train/metrics.csv").is_file()


def test_a_new_fine_tune_budget_reruns_only_the_fine_tunes_it_changes(repro, tmp_path):
    """The budget rule is the workflow's, outside the training's import graph (visctx.budget): a
    lower cap replans the fine-tunes it shortens and what reads them, never a base or another arm."""
    arm = {**MICRO["train"]["arm"], "max_steps": 5}
    changed = [a for a in micro_arms() if arm_steps(a, arm) != arm_steps(a, MICRO["train"]["arm"])]
    assert 0 < len(changed) < len(micro_arms())
    over = tmp_path / "budget.yaml"
    over.write_text(yaml.safe_dump({"train": {"arm": {"max_steps": 5}}}))
    out = run(["snakemake", "-n", "--quiet", "rules", "--configfile", str(over)], repro).stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts.get("train_arm") == len(changed) * len(MICRO["seeds"])
    assert "train_base" not in counts
    planned = run(["snakemake", "-n", "--configfile", str(over)], repro).stdout
    steps = dict(re.findall(r"visctx train-arms --arms (\S+) .*? --steps (\d+) ", planned))
    assert steps == {a: "5" for a in changed}


def test_dvc_plots_show_draws_every_curve_and_figure(repro):
    """`dvc plots show`: the training curves through .dvc/plots/curves.json (a line per run and
    seed, coloured by run, the base beside the arms) and every PNG the study draws; no PDF or
    stamp offered to DVC as a data series (they made it report errors)."""
    out = json.loads(run(["dvc", "plots", "show", "--json", "-o", str(repro / ".dvc/tmp/plots")], repro).stdout)
    assert not out.get("errors"), out.get("errors")
    pngs = {str(p.relative_to(repro)) for d in ("results/figures", "results/niah") for p in (repro / d).glob("*.png")}
    assert pngs and set(out["data"]) == pngs | {"results/tables/curves.csv"}
    spec = out["data"]["results/tables/curves.csv"][0]["content"]
    enc = spec["spec"]["encoding"]
    assert enc["color"]["field"] == "run" and enc["x"]["field"] == "step" and enc["y"]["field"] == "loss"
    assert {d["field"] for d in enc["detail"]} == {"seed"} and spec["facet"]["column"]["field"] == "training"
    values = spec["data"]["values"]
    assert {(v["run"], str(v["seed"])) for v in values} == {(a, str(s)) for a in [*micro_arms(), "base"]
                                                             for s in MICRO["seeds"]}


def test_every_benchmark_is_scored_by_its_official_rule(repro):
    """The five published formats go through the same rules as the held-out split: items,
    frames, features, per-(arms, benchmark) evaluation, the tidy table, the benchmark table."""
    from visctx.benchmarks import read_items, score

    arms = pd.read_csv(repro / "results/tables/arms.csv")
    for name, rel in ANNOTATIONS.items():
        items = read_items(repro / f"results/data/benchmarks/{name}.json")
        assert items == LOADERS[name](FIXTURES / rel)  # the published format, converted losslessly
        rows = arms[(arms["benchmark"] == name) & (arms["seed"] == 0)].set_index("arm")
        assert sorted(rows.index) == sorted(micro_arms())
        arm = micro_arms()[0]
        ev = json.loads((repro / f"results/arms/seed0/{arm}/eval/{name}.json").read_text())
        assert ev["n"] == len(items) and rows.loc[arm, "score"] == pytest.approx(ev["official"]["overall"])
        # the recorded score is the official rule applied to the recorded per-item predictions
        assert len(ev["predictions"]) == len(items)
        assert ev["official"] == score(name, items, ev.get("generations") or ev["predictions"], scoring=ev["scoring"])
    table = pd.read_csv(repro / "results/tables/benchmarks.csv")
    assert {"synthetic", *ANNOTATIONS} <= set(table.columns) and len(table) == len(micro_arms())
    scores = pd.read_csv(repro / "results/tables/benchmark_scores.csv")
    mean = arms.groupby(["benchmark", "arm"])["score"].mean()
    for _, r in scores.iterrows():  # the table's score is the mean over seeds, inside its own interval
        assert r["score"] == pytest.approx(mean[r["benchmark"], r["arm"]], rel=1e-5)  # 6 digits in both CSVs
        assert r["boot_lo"] <= r["score"] + 1e-9 and r["score"] <= r["boot_hi"] + 1e-9
        assert r["diff"] <= 1e-9 and (r["arm"] != r["vs"] or r["diff"] == 0)  # vs the benchmark's best arm


def test_needle_in_a_haystack_scores_every_frame_arm_at_every_depth(repro):
    niah = pd.read_csv(repro / "results/niah/niah.csv")
    frames = MICRO["studies"]["frames"]
    seeds = [pd.read_csv(repro / f"results/niah/seed{s}.csv") for s in MICRO["seeds"]]
    assert niah["accuracy"].tolist() == pytest.approx(
        ((seeds[0].set_index(["arm", "depth"])["accuracy"] + seeds[1].set_index(["arm", "depth"])["accuracy"]) / 2)
        .loc[list(zip(niah["arm"], niah["depth"]))].tolist())
    assert sorted(set(niah["T"])) == sorted(frames["frames"]) and set(niah["M"]) == {frames["tokens"]}
    assert set(niah["depth"]) == {0, 25, 50, 75, 100} and len(niah) == 5 * len(frames["frames"])
    assert niah["accuracy"].between(0, 1).all() and (niah["haystack"] == niah["T"] - 1).all()
    one = niah[niah["T"] == 1]  # no haystack: the depth cannot matter
    assert one["accuracy"].nunique() == 1
    assert (repro / "results/niah/niah_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # the methods' maps are over the same needles: every method is asked as many at each depth
    methods = pd.concat(pd.read_csv(repro / f"results/niah/methods/seed{s}.csv") for s in MICRO["seeds"])
    assert set(methods["method"]) == set(MICRO["studies"]["methods"]["methods"])
    assert (methods.groupby(["seed", "depth"])["n"].nunique() == 1).all()


def test_second_repro_is_a_no_op(repro):
    stamps = {p: p.stat().st_mtime for p in (repro / "results/arms").rglob("*.json")}
    out = run(["dvc", "repro"], repro).stdout
    assert "didn't change" in out or "up to date" in out.lower()
    assert {p: p.stat().st_mtime for p in stamps} == stamps
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repro).stdout


def test_new_window_budget_moves_the_optimum_without_retraining(repro):
    run(["git", "add", "-A"], repro)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results"], repro)
    models = {p: p.stat().st_mtime for p in (repro / "results/arms").glob("seed*/*/model")}
    assert len(models) == len(micro_arms()) * len(MICRO["seeds"])
    before = json.loads((repro / "results/metrics_full.json").read_text())
    run(["dvc", "exp", "run", "-S", "window=400"], repro)  # the window is one key
    after = json.loads((repro / "results/metrics_full.json").read_text())
    assert before["optimum"]["budget"] == 40 and after["optimum"]["budget"] == 400
    from visctx.fit import optimum_from_fits  # the optimum is the fitted law's answer for the new window

    want = optimum_from_fits(repro / "results/fits/fits.json", 400, t_max=MICRO["data"]["extract"]["max_frames"])
    assert (after["optimum"]["T"], after["optimum"]["M"]) == (want["brute_force"]["T"], want["brute_force"]["M"])
    assert {p: p.stat().st_mtime for p in models} == models  # no arm retrained
    show = run(["dvc", "exp", "show", "--md"], repro).stdout
    assert "optimum" in show and "400" in show


def test_dvc_exp_show_fits_a_200_column_terminal_with_the_optimum(repro):
    """Stages depend on their resolved params files, not on 150 keys of params.yaml, and the
    declared metrics are the headline: the default table is readable (it once had 328 columns)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", COLUMNS="200")
    proc = subprocess.run(["dvc", "exp", "show", "--no-pager"], cwd=repro, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 200
    header = " ".join(lines[:4])
    for column in ("optimum.T", "optimum.M", "optimum.T_lo", "optimum.M_hi", "preset"):
        assert column in header, proc.stdout
    full = run(["dvc", "metrics", "show", "results/metrics_full.json", "--json"], repro).stdout  # the rest, one command away
    assert "joint" in full and "prediction" in full


def test_the_snakemake_report_is_built_on_demand(repro):
    """Not committed (it changed on every run): `snakemake --report` writes it from the artifacts."""
    run(["snakemake", "--report", "report.html"], repro)
    assert "tokens_loss" in (repro / "report.html").read_text(errors="ignore")


ANALYSIS_RULES = set(re.findall(r"^\s*rule (\w+):", (ROOT / "workflow/rules/analysis.smk").read_text(), re.M))


def jobs_in(output: str) -> set[str]:
    """The rules of the jobs a Snakemake log says it ran (or, dry, would run)."""
    return set(re.findall(r"^\s*(?:local)?rule (\w+):", output, re.M))


def test_a_temporary_experiment_runs_the_analysis_only(repro):
    """`dvc exp run --temp`: a fresh workspace (no .snakemake/, every mtime new) where an
    analysis-only change once scheduled the whole study; the stamps (visctx.fresh) date the
    restored results by content, so only analysis jobs run."""
    run(["git", "add", "-A"], repro)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results", "--allow-empty"], repro)
    out = run(["dvc", "exp", "run", "--temp", "-n", "temp200", "-S", "window=200"], repro, timeout=900)
    jobs = jobs_in(out.stdout + out.stderr)
    assert jobs and jobs <= ANALYSIS_RULES, jobs
    show = json.loads(run(["dvc", "exp", "show", "--json"], repro).stdout)
    assert "temp200" in json.dumps(show)


def test_a_queued_experiment_runs_the_analysis_only(repro):
    """The way sweeps are run: `dvc exp run --queue`, then `dvc queue start` (a worker in its own
    temporary workspace); its log lists analysis jobs only."""
    run(["dvc", "exp", "run", "--queue", "-n", "queued300", "-S", "window=300"], repro)
    run(["dvc", "queue", "start"], repro)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repro).stdout
        line = next((ln for ln in status.splitlines() if "queued300" in ln), "")
        if "Success" in line or "Failed" in line:
            break
        time.sleep(2)
    run(["dvc", "queue", "stop", "--kill"], repro)
    assert "Success" in line, status
    jobs = jobs_in(run(["dvc", "queue", "logs", "queued300"], repro).stdout)
    assert jobs and jobs <= ANALYSIS_RULES, jobs


def test_a_byte_identical_restore_reruns_nothing(repro):
    """A checkout that rewrites the corpus with the same bytes (new mtimes) once made
    `snakemake -n train_all` plan 85 jobs."""
    for f in sorted((repro / "results/data").rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            f.unlink()
            f.write_bytes(data)
    out = run(["snakemake", "-n", "train_all", "analysis_all"], repro).stdout
    assert jobs_in(out) == set(), out[-2000:]


def test_a_truncated_video_is_noticed_and_quarantined(repro):
    """Videos are inputs (frame extraction's depfile): one truncated in place, dated older than
    everything, reruns its shard's extraction, and the quarantine names it; the original bytes put
    back rerun that extraction only (the same frames: nothing downstream)."""
    video = sorted((repro / "results/data/videos/train").glob("*.mp4"))[0]
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 3])
    os.utime(video, (1_000_000, 1_000_000))
    target = "results/data/quarantine/train.json"
    assert "extract_frames" in jobs_in(run(["snakemake", "-n", target], repro).stdout)
    run(["snakemake", "--cores", "2", target], repro)
    report = json.loads((repro / target).read_text())
    assert video.name in json.dumps(report), report
    video.write_bytes(data)
    proc = run(["snakemake", "--cores", "2", target], repro)
    assert jobs_in(proc.stdout + proc.stderr) == {"extract_frames", "quarantine_split"}
    assert video.name not in json.dumps(json.loads((repro / target).read_text()))
    assert jobs_in(run(["snakemake", "-n", "train_all"], repro).stdout) == set()


def test_a_truncated_video_under_the_data_root_is_noticed_by_dvc(repro):
    """data/ is a DVC dependency of the stages that read real data (data/README.md): a benchmark
    video truncated in place makes `dvc status` name the data stage and `dvc repro` rerun it; the
    extraction quarantines the video and, a third of the benchmark lost (> max_quarantined), the
    run stops, naming it, before any arm is evaluated on it. The bytes put back, `dvc repro`
    reruns the data stage and nothing after it (the same frames: the same features)."""
    video = sorted((repro / "data/benchmarks/videomme/videos").glob("*.mp4"))[0]
    data = video.read_bytes()
    before = (repro / "results/tables/arms.csv").read_bytes()
    video.write_bytes(data[: len(data) // 3])
    status = json.loads(run(["dvc", "status", "--json"], repro).stdout)
    assert {"changed deps": {"data": "modified"}} in status["data"], status
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    failed = subprocess.run(["dvc", "repro"], cwd=repro, env=env, capture_output=True, text=True, timeout=900)
    assert failed.returncode != 0, failed.stdout[-2000:]
    log = (repro / "results/logs/quarantine/videomme.log").read_text()
    assert video.name in log and "could not be" in log, log
    video.write_bytes(data)
    out = run(["dvc", "repro"], repro, timeout=900).stdout
    assert "Running stage 'data'" in out and "Running stage 'train'" not in out, out[-3000:]
    assert (repro / "results/tables/arms.csv").read_bytes() == before
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repro).stdout


def test_each_dvc_stage_that_runs_library_code_depends_on_the_library(project):
    """Snakemake reruns a job when its command's import graph changes (visctx.imports); DVC only
    calls Snakemake when a stage's deps change, so every stage that runs `visctx` depends on the
    whole library (a missing module would leave DVC saying 'up to date' over stale results)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if stage["cmd"].split()[-1].endswith(".html"):
            continue
        assert "src/visctx" in stage["deps"], name


FORWARD = {  # the tower in the forward, on the smallest study that still has a base, arms and NIAH
    "model": {"vision_features": "forward", "vision_trainable": True},
    "studies": {
        "tokens": {"frames": 1, "tokens": [4], "methods": ["pool"]},
        "frames": {"tokens": 4, "token_method": "pool", "frames": [1, 2], "methods": ["sample"], "pool_source": 2},
        "joint": {"token_method": "pool", "tokens": [4], "frames": [2]},
        "window": {"token_method": "pool", "combos": [[2, 4]]},
    },
    "seeds": [0],
    "train": {"base": {"steps": 4}},
    "evaluate": {"benchmarks": ["synthetic"]},
}


def test_the_rules_run_the_tower_in_the_forward(tmp_path):
    """model.vision_features: forward through Snakemake: no feature cache is written, the base and
    the arms train their tower on frames (vision_trainable), evaluation and NIAH read frames."""
    shutil.copy2(ROOT / "Snakefile", tmp_path)
    for item in ("workflow", "profiles", "src"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    params = deep_merge(deep_merge(raw_params(ROOT / "params.yaml"), MICRO), FORWARD)
    (tmp_path / "config").mkdir()
    for path in ("config/config.yaml", "params.yaml"):  # the whole config in both: params.yaml wins anyway
        (tmp_path / path).write_text(yaml.safe_dump(params, sort_keys=False))
    run(["snakemake", "--cores", "2", "train_all", "niah_all"], tmp_path, timeout=1200)
    results = tmp_path / "results"
    assert not (results / "data/features").exists()
    base = json.loads((results / "base/seed0/model/model.json").read_text())
    assert base["vision"] == {"layer": -2, "trainable": True}
    for arm in ("T1-M4-pool", "T2-M4-pool"):
        summary = json.loads((results / f"arms/seed0/{arm}/model/train_summary.json").read_text())
        assert summary["vision"] == "trainable" and summary["init_kind"] == "model"
        assert (results / f"arms/seed0/{arm}/model/vision/model.safetensors").is_file()
        ev = json.loads((results / f"arms/seed0/{arm}/eval/synthetic.json").read_text())
        assert ev["n"] == len(json.loads((results / "data/corpus/eval.json").read_text())) and np.isfinite(ev["loss"])
    niah = pd.read_csv(results / "niah/niah.csv")
    assert sorted(set(niah["arm"])) == ["T1-M4-pool", "T2-M4-pool"]
