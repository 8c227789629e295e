"""The performance harness's own arithmetic (the harness itself runs on demand, not in CI)."""

import json

from visctx.perf import _job_counts, encoder_passes, to_markdown

DRY_RUN = """Job stats:
job             count
------------  -------
train_arm           2
evaluate_arm        4
all                 1
total               7
"""


def test_job_counts_read_snakemakes_job_stats():
    assert _job_counts(DRY_RUN) == {"train_arm": 2, "evaluate_arm": 4, "all": 1}
    assert _job_counts("Nothing to be done.") == {}


def test_a_frame_encoded_twice_is_counted(tmp_path):
    def shard(split, name, videos, root):
        for kind in ("frames", "features"):
            d = tmp_path / kind / split
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(json.dumps({"videos": videos, "frames": 4, "video_root": root}))

    shard("train", "shard-000.json", ["a.mp4", "b.mp4"], "/v")
    shard("eval", "shard-000.json", ["c.mp4"], "/v")
    assert encoder_passes(tmp_path) == {"encoded_frames": 12, "distinct_frames": 12, "passes_per_frame": 1.0}
    shard("eval", "shard-001.json", ["a.mp4"], "/v")  # the same file in a second shard: encoded again
    assert encoder_passes(tmp_path)["passes_per_frame"] == round(16 / 12, 3)


def test_report_renders_every_measurement():
    r = {"date": "2026-11-21", "machine": "2 cores", "fresh_clone_s": {"install": 30.0, "total": 30.0},
         "noop_s": {"dvc repro": 2.0}, "reruns": {"x": {"jobs": {"fits": 1}, "as_expected": True}, "new arms": []},
         "encoder": {"encoded_frames": 8, "distinct_frames": 8, "passes_per_frame": 1.0},
         "startup": {f"{k}_{m}": 1.0 for k in ("plain", "preload_cold", "preload_warm") for m in ("wall_s", "overhead_s")}}
    md = to_markdown(r)
    assert "| install | 30.0 |" in md and "| x | fits 1 | yes |" in md and "1.0 passes per frame" in md


def test_a_temporary_experiment_is_judged_by_the_jobs_it_ran():
    """The harness's `dvc exp run --temp` count: rules read from the Snakemake output DVC relays;
    one training job in it makes the analysis-only change a failure."""
    from visctx.perf import temp_experiment

    def runner(outputs):
        calls = []

        def run(cmd, check=True, combined=False):
            calls.append(cmd)
            return 3.0, outputs.pop(0) if cmd[:3] == ["dvc", "exp", "run"] else ""
        return run, calls

    log = "Running stage 'analyze':\n> snakemake --nolock analysis_all\nrule fits:\n    jobid: 2\nlocalrule all:\n"
    run, calls = runner([log])
    got = temp_experiment(run, {"window": 160})
    assert got == {"change": "window=320", "seconds": 3.0, "jobs": {"fits": 1, "all": 1}, "as_expected": True}
    assert calls[0][-2:] == ["-S", "window=320"] and calls[-1][:3] == ["dvc", "exp", "remove"]
    run, _ = runner([log + "rule train_arm:\n"])
    assert temp_experiment(run, {"window": 160})["as_expected"] is False
    run, _ = runner(["Stage 'analyze' didn't change, skipping\n"])
    assert temp_experiment(run, {"window": 160})["as_expected"] is False  # nothing ran: the change was lost
    md = to_markdown({"date": "d", "machine": "m", "noop_s": {}, "reruns": {}, "temp_experiment": got,
                      "encoder": {"encoded_frames": 8, "distinct_frames": 8, "passes_per_frame": 1.0},
                      "startup": {f"{k}_{m}": 1.0 for k in ("plain", "preload_cold", "preload_warm")
                                  for m in ("wall_s", "overhead_s")}})
    assert "| `dvc exp run --temp -S window=320` (3.0 s) | fits 1, all 1 (run) | yes |" in md


def test_the_study_cost_sums_each_runs_timing_by_method(tmp_path):
    """Seconds from the timing sidecars, per base and per way of spending the window: a summary
    arm counts as summary whatever its pooling, a masking arm as mask; wrong results are not read."""
    import pytest

    from visctx.files import write_timing
    from visctx.perf import study_cost, study_cost_markdown

    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "config", tmp_path / "config")
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text().split("seeds:")[0] + "seeds: [0, 1]\n")
    res = tmp_path / "results"
    for seed in (0, 1):
        base = res / f"base/seed{seed}/model/train_summary.json"
        base.parent.mkdir(parents=True)
        base.write_text("{}")
        write_timing(base, 10.0 + seed)
        for arm, train_s, eval_s in (("T1-M4-pool", 1.0, 0.5), ("T32-M16-pool-vst4w16", 5.0, 2.0),
                                     ("T4-M4-mask", 2.0, 1.0)):
            summary = res / f"arms/seed{seed}/{arm}/model/train_summary.json"
            summary.parent.mkdir(parents=True)
            summary.write_text("{}")
            write_timing(summary, train_s)
            (summary.parent.parent / "eval").mkdir()
            write_timing(summary.parent.parent / "eval/synthetic.json", eval_s)
            (summary.parent.parent / "eval/.fresh.json").write_text("{}")  # a stamp: no timing beside it
    r = study_cost(str(tmp_path), write=False)
    assert r["bases"] == 2 and r["base_s"] == 21.0 and r["total_s"] == 21.0 + 2 * (1.5 + 7.0 + 3.0)
    assert r["methods"] == {"mask": {"arms": 2, "fine_tune_s": 4.0, "evaluate_s": 2.0},
                            "pool": {"arms": 2, "fine_tune_s": 2.0, "evaluate_s": 1.0},
                            "summary": {"arms": 2, "fine_tune_s": 10.0, "evaluate_s": 4.0}}
    assert "| `summary` arms | 2 | 10.0 | 4.0 | 32 % |" in study_cost_markdown(r)
    assert "schedule" not in r and "kept its" not in study_cost_markdown(r)  # no Snakemake log here
    logs = tmp_path / ".snakemake/log"
    logs.mkdir(parents=True)
    (logs / "2026-12-07T200000.0.snakemake.log").write_text(_snakemake_log([
        (0, "localrule train_base:|    jobid: 1|    wildcards: seed=0"), (5, "Finished jobid: 1 (Rule: train_base)")]))
    (logs / "2026-12-07T210000.0.snakemake.log").write_text(_snakemake_log([  # a later run without bases
        (0, "rule fit:|    jobid: 2"), (1, "Finished jobid: 2 (Rule: fit)")]))
    assert study_cost(str(tmp_path), write=False)["schedule"]["span_s"] == 5  # the train stage's run
    (res / "base").rename(tmp_path / "gone")
    (res / "arms").rename(tmp_path / "gone2")
    with pytest.raises(FileNotFoundError, match="no trained base or arm"):
        study_cost(str(tmp_path), write=False)


def _snakemake_log(events: list[tuple[int, str]]) -> str:
    """A Snakemake 9 log (the lines the schedule reads, as the pinned version writes them)."""
    lines = ["Building DAG of jobs...", "Using shell: /usr/bin/bash", "Provided cores: 2", "Job stats:",
             "job           count", "train_base        2", "Select jobs to execute..."]
    for second, text in events:
        lines.append(f"[Mon Dec  7 20:{second // 60:02d}:{second % 60:02d} 2026]")
        lines += text.split("|")
    return "\n".join(lines) + "\n"


def test_the_schedule_counts_the_cores_left_idle_and_when_each_base_ran(tmp_path):
    """Two cores; a base and a fine-tune start at 0, the fine-tune ends at 10, the second base
    starts only at 40 and ends at 140, the first at 100: idle 30 + 40 core-s of 280."""
    import pytest

    from visctx.perf import snakemake_schedule, study_cost_markdown

    log = tmp_path / "run.snakemake.log"
    log.write_text(_snakemake_log([
        (0, "localrule train_base:|    output: results/base/seed0/model|    jobid: 7|    wildcards: seed=0"),
        (0, "rule train_arm:|    jobid: 9|    wildcards: seed=0, arm=T1-M4-pool"),
        (10, "Finished jobid: 9 (Rule: train_arm)|1 of 3 steps (33%) done"),
        (40, "localrule train_base:|    jobid: 8|    reason: Missing output files|    wildcards: seed=1"),
        (100, "Finished jobid: 7 (Rule: train_base)"),
        (140, "Finished jobid: 8 (Rule: train_base)|3 of 3 steps (100%) done"),
    ]))
    r = snakemake_schedule(log)
    assert (r["cores"], r["jobs"], r["span_s"], r["busy_core_s"], r["idle_core_s"], r["idle_share"]) == \
        (2, 3, 140, 210, 70, 0.25)
    assert [(j["wildcards"], j["start_s"], j["end_s"]) for j in r["rule_jobs"]] == [("seed=0", 0, 100),
                                                                                  ("seed=1", 40, 140)]
    md = study_cost_markdown({"seeds": [0, 1], "commit": "c", "date": "d", "machine": "m", "base_s": 1.0,
                              "methods": {}, "total_s": 1.0, "schedule": r})
    assert "3 jobs over 140 s, 210 core-s running, 70 core-s idle (25 %)" in md
    assert "seed=0 0-100 s, seed=1 40-140 s" in md
    (tmp_path / "notes.txt").write_text("Finished jobid: 1 (Rule: x)\n")
    with pytest.raises(ValueError, match="notes.txt: no 'Provided cores'"):
        snakemake_schedule(tmp_path / "notes.txt")


def test_the_budget_records_command_makes_that_record_again():
    """The fine-tune budget report names the harness call with its own options: parsed by the CLI, it
    asks for the same arms, lengths, learning rate, seeds and folder (not the default's)."""
    import shlex

    from visctx import cli
    from visctx.perf import budget_command, budget_markdown, finetune_budget

    r = {"date": "2026-12-07", "machine": "m", "arms": ["T1-M196-pool", "T1-M4-pool"], "steps": [100, 300],
         "lr": 0.001, "seeds": [0, 2], "out_dir": "results/perf/finetune-budget-tokens", "rows": [], "runs": []}
    argv = shlex.split(budget_command(r))
    assert argv[:3] == ["bash", "scripts/perf.sh", "--finetune-budget"]
    got = cli.parse_command("finetune-budget", finetune_budget, argv[3:])
    assert {k: got[k] for k in ("arms", "steps", "lr", "seeds", "out_dir")} == \
        {k: r[k] for k in ("arms", "steps", "lr", "seeds", "out_dir")}
    empty = dict(r, arms=[])  # the header alone
    assert f"Regenerate: `{budget_command(empty)}`" in budget_markdown(empty)
    older = {k: v for k, v in r.items() if k != "out_dir"}  # a record from before the folder was kept
    assert "--out-dir" not in budget_command(older)
    assert "--out-dir" not in budget_command(dict(r, out_dir="results/perf"))  # the default folder


def test_a_noise_split_tells_the_bases_noise_from_the_fine_tunes():
    """Within a base is the one-way ANOVA's residual SD over its fine-tunes; across replicates the SD
    of the bases' own fine-tunes. A draw whose bases differ (and whose fine-tunes barely do) gives a
    fine-tune share near 0 and a small p; a draw of fine-tune noise alone a share near 1."""
    import numpy as np
    import pandas as pd
    import pytest
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    from visctx.perf import noise_split_markdown, within_and_across

    rng = np.random.default_rng(1)

    def draw(base_sd, ft_sd, bases=12, fts=(0, 101, 102, 103)):
        shift = rng.normal(0, base_sd, bases)
        return pd.DataFrame([{"base": b, "finetune": b if f == 0 else f, "value": shift[b] + rng.normal(0, ft_sd)}
                             for b in range(bases) for f in fts])

    d = draw(0.05, 0.005)
    s = within_and_across(d)
    resid = anova_lm(smf.ols("value ~ C(base)", d).fit()).loc["Residual"]
    assert s["within_sd"] ** 2 == pytest.approx(resid["mean_sq"], rel=1e-9) and s["within_df"] == resid["df"] == 36
    assert s["across_sd"] == pytest.approx(d[d["finetune"] == d["base"]]["value"].std(), rel=1e-12) and s["across_df"] == 11
    assert s["finetune_share"] < 0.05 and s["p"] < 1e-6
    f = within_and_across(draw(0.0, 0.01))
    assert 0.3 < f["finetune_share"] < 3 and f["p"] > 0.001
    with pytest.raises(ValueError, match="own fine-tune once"):
        within_and_across(d[d["base"] == 0])
    report = {"date": "d", "machine": "m", "bases": [0, 1], "finetune_seeds": [101], "out_dir": "results/perf",
              "rows": [{"kind": "effect", "study": "frames", "method": "pool", "from": "a", "to": "b", **s},
                       {"kind": "loss", "arm": "a", **f}]}
    md = noise_split_markdown(report)
    assert "`bash scripts/perf.sh --noise-split --bases 0 1 --finetune-seeds 101`" in md
    assert f"| frames / pool | a | b | {100 * s['across_sd']:.2f} % (11) |" in md


def test_the_search_attention_record_names_its_own_command_and_reads_each_seed():
    """The report's command, parsed by the CLI, asks for the same probes, seeds and folder; each seed's
    row shows every layer's lift and the strongest layer's hits, and the correlations follow."""
    import shlex

    from visctx import cli
    from visctx.perf import search_attention, search_attention_markdown

    layers = [{"layer": 0, "n": 200, "mass": 0.11, "uniform": 0.025, "lift": 0.56, "hit": 0.15},
              {"layer": 1, "n": 200, "mass": 0.15, "uniform": 0.025, "lift": 3.81, "hit": 0.22}]
    r = {"date": "d", "machine": "m", "seeds": [0, 3], "probes": ["T32-M4-pool:needle"], "out_dir": "results/perf/x",
         "rows": [{"arm": "T32-M4-pool", "task": "needle", "seed": s, "layers": layers, "task_loss": 1.6,
                   "effects": {"frames/pool": -0.0441}} for s in (0, 3)],
         "correlations": [{"arm": "T32-M4-pool", "task": "needle", "with": "frames/pool", "rho": -0.6, "p": 0.28, "n": 2}]}
    md = search_attention_markdown(r)
    cmd = md.split("Regenerate: `")[1].split("`")[0]
    argv = shlex.split(cmd)
    assert argv[:3] == ["bash", "scripts/perf.sh", "--search-attention"]
    got = cli.parse_command("search-attention", search_attention, argv[3:])
    assert {k: got[k] for k in ("probes", "seeds", "out_dir")} == {k: r[k] for k in ("probes", "seeds", "out_dir")}
    assert "| 3 | 0.56 (0.110) | 3.81 (0.150) | 0.22 (layer 1) | 1.600 | -4.41 % |" in md
    assert "frames/pool -0.60 (p 0.28, n 2)" in md
