"""The paper preset on a SLURM cluster, dry-run: every job of the four studies, GPUs on training."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from visctx.config import load_params, study_points, unique_arms

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/benchmarks"
ANNOTATION = {"eventbench": "test.jsonl", "vnbench": "VNBench-main-4try.json", "longvideobench": "lvb_val.json"}
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def paper_project(tmp_path_factory) -> Path:
    """A copy of the project with one-record annotation files where the paper preset expects them,
    holding the embedded default's committed artifacts (its results/ as a clone has it)."""
    dst = tmp_path_factory.mktemp("paper")
    for item in ("Snakefile", "params.yaml", "config", "workflow", "profiles", "src", "results"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / item)
    shutil.copy2(ROOT / "slurm", dst / "slurm", follow_symlinks=False)  # the repository's link to profiles/slurm
    ann = dst / "data/instruct"
    ann.mkdir(parents=True)
    (ann / "train.json").write_text(json.dumps([{"id": "a", "video": "a.mp4", "conversations": [
        {"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "x"}]}]))
    (ann / "eval.json").write_text(json.dumps([{"id": "b", "video": "b.mp4", "question": "q",
                                                "options": ["a", "b", "c", "d"], "answer": 0, "task_type": "t"}]))
    params = load_params(ROOT / "params.yaml", {"preset": "paper"})
    for name, b in params["benchmarks"].items():  # each benchmark's published files where the preset expects them
        target = dst / b["annotations"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "mlvu":
            shutil.copytree(FIXTURES / "mlvu", target)
        elif name == "videomme":
            pd.read_json(FIXTURES / "videomme/videomme.json").to_parquet(target)
        else:
            shutil.copy2(FIXTURES / name / ANNOTATION[name], target)
    return dst


def snakemake_dry(project: Path, *profile: str) -> str:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["snakemake", "-n", *profile, "--config", "preset=paper"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def dry_run(paper_project) -> str:
    """`snakemake -n` with the paper preset and profiles/slurm, on one-record annotation files."""
    return snakemake_dry(paper_project, "--workflow-profile", "profiles/slurm")


def test_the_cluster_profile_by_its_name(paper_project, dry_run):
    """`snakemake --profile slurm` (what a cluster user types) finds the repository's profile and
    plans the same jobs with the same resources; the laptop's workflow profile (profiles/default,
    applied too) sets nothing the cluster profile sets."""
    import yaml

    by_name = snakemake_dry(paper_project, "--profile", "slurm")
    assert jobs(by_name) == jobs(dry_run)
    laptop = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    cluster = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert not set(laptop) & set(cluster) - {"rerun-incomplete", "printshellcmds", "show-failed-logs"}
    assert all(laptop[k] == cluster[k] for k in set(laptop) & set(cluster))  # shared keys agree


def jobs(out: str) -> dict[str, list[dict[str, str]]]:
    """rule -> the resources of each of its jobs, parsed from the dry run's job blocks."""
    found: dict[str, list[dict[str, str]]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        m = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"resources: (.*)", block)
        if m:
            found.setdefault(m.group(1), []).append(
                dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {})
    return found


def test_every_job_of_the_paper_is_listed(dry_run):
    params = load_params(ROOT / "params.yaml", {"preset": "paper"})
    arms = unique_arms(study_points(params["studies"]))
    found = jobs(dry_run)
    benches = params["evaluate"]["benchmarks"]
    assert len(found["train_arm"]) == len(arms) == 45 + 9 + 6 and len(benches) == 6  # + 9 masked token arms, 6 new window methods; T = 96 pools 128 frames
    assert len(found["evaluate_arm"]) == len(arms) * len(benches)  # one job per (arm, benchmark)
    assert len(found["benchmark_items"]) == 5
    shards = params["data"]["shards"]["train"] + params["data"]["shards"]["eval"]
    shards += sum(params["benchmarks"][b]["shards"] for b in benches if b != "synthetic")
    assert len(found["extract_frames"]) == shards
    # model.vision_features: forward -- the tower runs in the model, no feature cache is written
    assert params["model"]["vision_features"] == "forward" and "encode_features" not in found
    assert "train_base" not in found  # train.base.steps = 0: every arm starts from Qwen2-7B, as in the paper
    for rule in ("collect", "fits", "tables", "figures", "metrics"):
        assert len(found[rule]) == 1


def test_the_paper_preset_writes_under_its_own_root(paper_project, dry_run):
    """Presets apart: in a clone holding the embedded default's results, the paper's dry run plans
    its whole study (above) and every job it plans reads and writes under results-paper/, none
    under the default's results/."""
    assert (paper_project / "results/tables/arms.csv").is_file()  # the default's artifacts are there
    paths = re.findall(r"^\s+(?:input|output|log): (.*)$", dry_run, flags=re.M)
    files = [f for line in paths for f in line.split(", ") if f.startswith("results")]
    assert files and all(f.startswith("results-paper/") for f in files), [f for f in files if not f.startswith("results-paper/")][:5]


def test_training_and_evaluation_read_frames_and_name_the_tower(dry_run):
    blocks = {m.group(1): block for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run)
              if (m := re.match(r"(?:local)?rule (\w+):", block))}
    assert "results-paper/data/frames/train/shard-000.npy" in blocks["train_arm"]
    assert "/data/features/" not in dry_run
    params = load_params(ROOT / "params.yaml", {"preset": "paper"})
    assert params["model"]["vision_trainable"] is False  # frozen, as in the paper


def test_gpu_resources_on_training_and_evaluation(dry_run):
    found = jobs(dry_run)
    for res in found["train_arm"]:
        assert (res["gpu"], res["cpus_per_gpu"], res["tasks_per_gpu"]) == ("8", "8", "1")
        assert "gpu" in res["slurm_partition"]  # the GPU partition, not the CPU default
        assert int(res["runtime"]) >= 24 * 60
    assert all(res["gpu"] == "1" for res in found["evaluate_arm"])
    assert all("gpu" not in res for res in found["extract_frames"] + found["fits"])
    assert all("slurm_account" in res for rules in found.values() for res in rules if res)
