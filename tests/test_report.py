"""visctx.report: every declared table, figure and metric is written from a small synthetic study."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from synthetic_study import JOINT, STUDIES, write_study

from visctx import report as R
from visctx.fit import FitError, write_fits


def run_all(tmp, studies=STUDIES, n_boot=100):
    arms, design = write_study(tmp, studies, seeds=(0, 1, 2))
    fits = tmp / "fits.json"
    write_fits(arms, design, 160, n_boot=n_boot, seed=0, out_json=fits)
    out = tmp / "report"
    tables = R.write_tables(arms, design, fits, out)
    figures = R.write_figures(arms, design, fits, out)
    metrics = R.write_metrics(arms, design, fits, out / "metrics.json")
    return out, tables, figures, metrics


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("report"))


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= flatten(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def test_every_declared_file_is_written(full):
    out, tables, figures, _ = full
    declared = R.output_paths(out)
    assert sorted(tables) == sorted(declared["tables"])
    assert figures == declared["figures"]
    assert len(tables) == 3 * len(R.TABLES) and len(figures) == 2 * len(R.FIGURES)
    for p in tables + figures:
        assert p.exists() and p.stat().st_size > 0, p
    for p in figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" if p.suffix == ".png" else p.read_bytes()[:5] == b"%PDF-"
    for t in R.TABLES:
        assert (out / f"{t}.tex").read_text().lstrip().startswith("\\begin{tabular}")
        assert (out / f"{t}.md").read_text().startswith("|")


def test_table1_and_table2_rows(full):
    out, *_ = full
    t1 = pd.read_csv(out / "table1_tokens.csv")
    assert len(t1) == 18
    assert set(zip(t1["method"], t1["M"])) == {(m, M) for m in ("sample", "pool")
                                               for M in STUDIES["tokens"]["tokens"]}
    assert {"loss", "loss_lo", "loss_hi", "fit", "law", "accuracy", "accuracy_lo", "acc_needle", "acc_order_hi",
            "seeds"} <= set(t1.columns)
    assert (t1["T"] == 4).all() and t1["fit"].notna().all() and (t1["seeds"] == 3).all()
    assert (t1["loss_lo"] < t1["loss"]).all() and (t1["loss"] < t1["loss_hi"]).all()
    md = (out / "table1_tokens.md").read_text()  # the mean and its interval in one cell
    r = t1.iloc[0]
    assert f"{r['loss']:.4g} [{r['loss_lo']:.4g}, {r['loss_hi']:.4g}]" in md
    t2 = pd.read_csv(out / "table2_frames.csv")
    assert len(t2) == 16 and (t2["M"] == 9).all()
    assert set(t2.loc[t2["method"] == "pool", "pooled_from"]) == {32, 0}  # 0: T = 32 pools nothing
    assert "T4-M196-pool" in (out / "table1_tokens.md").read_text()


def test_table3_and_table4(full):
    out, *_ = full
    t3 = pd.read_csv(out / "table3_joint.csv")
    assert len(t3) == 22  # 24 pool x frame-sample arms less the two that are also window arms
    assert (t3["residual_%"].abs() < 3).all()
    assert "T8-M25-pool" in set(t3["arm"]) and "T10-M16-pool" not in set(t3["arm"])
    t4 = pd.read_csv(out / "table4_window.csv")
    assert set(t4["arm"]) == {"T4-M36-pool", "T6-M25-pool", "T10-M16-pool", "T16-M9-pool", "T32-M4-pool",
                              "rank check"}
    check = t4.set_index("arm").loc["rank check", "mark"]
    assert "best predicted = best observed: yes" in check and "Spearman rho" in check
    t4 = t4[t4["arm"] != "rank check"]
    assert (t4["T*M"] <= 160).all() and (t4["loss_lo"] < t4["loss"]).all()
    best = t4.loc[t4["arm"] == "T10-M16-pool", "mark"].item()
    assert "best observed" in best and "predicted best" in best and "predicted optimum" in best


def test_table5_and_model_selection(full):
    out, *_ = full
    t5 = pd.read_csv(out / "table5_fits.csv")
    # 4 one-dimensional fits x (3 + 2 + 2 parameters) + joint (5) + joint without offset (4)
    assert len(t5) == 4 * 7 + 9
    assert {"estimate", "boot_lo", "boot_hi", "interval", "r2", "loo_mae", "converged"} <= set(t5.columns)
    assert set(t5["interval"]) == {"seeds"}  # three replicates: the bootstrap resamples the seeds
    assert t5["converged"].all() and (t5["boot_lo"] <= t5["estimate"]).all() and (t5["estimate"] <= t5["boot_hi"]).all()
    ms = pd.read_csv(out / "model_selection.csv")
    assert len(ms) == 4 * 3 + 2 and set(ms["criterion"]) == {"loo_mae_1se"}
    assert ms.groupby(["study", "method"])["selected"].sum().eq(1).all()
    assert ms.loc[ms["study"] == "joint"].set_index("form").loc["joint", "selected"]  # the law that made the data


def test_the_headline_is_what_dvc_exp_show_shows_first(full, tmp_path):
    out, *_, metrics = full
    m = R.write_metrics(out.parent / "arms.csv", out.parent / "design.csv", out.parent / "fits.json", tmp_path / "m.json",
                        full_json=str(tmp_path / "full.json"))
    head = json.loads((tmp_path / "m.json").read_text())
    assert json.loads((tmp_path / "full.json").read_text()) == m == metrics and head == R.headline(m)
    assert list(head) == ["optimum", "effect", "loss_sd", "findings_hold"]
    assert head["optimum"]["T"] == m["optimum"]["T"] and head["effect"]["tokens_pool"] == m["tokens"]["pool"]["effect"]
    assert len(flatten(head)) <= 14


def test_metrics_keys(full):
    out, *_, metrics = full
    assert json.loads((out / "metrics.json").read_text()) == metrics
    flat = flatten(metrics)
    for key in ("seeds", "tokens.pool.law", "tokens.pool.alpha", "tokens.pool.alpha_lo", "tokens.pool.effect",
                "tokens.pool.effect_sd", "frames.sample.effect", "joint.law", "joint.alpha", "joint.beta",
                "joint.beta_lo", "optimum.T", "optimum.M", "optimum.budget", "optimum.T_lo", "optimum.M_hi",
                "optimum.agree", "optimum.extrapolated", "prediction.best_match", "prediction.spearman",
                "best_arm.window", "noise.loss_sd_median", "converged"):
        assert key in flat, key
    assert flat["seeds"] == 3 and len(flat) <= 64  # a dvc exp show a person can read
    assert (flat["optimum.T"], flat["optimum.M"], flat["optimum.budget"]) == (10, 16, 160)
    assert flat["prediction.best_match"] is True and flat["converged"] is True
    assert flat["best_arm.window"] == "T10-M16-pool"
    assert flat["joint.beta"] == pytest.approx(JOINT["beta"], rel=0.15)
    # the token study's effect: loss at M = 196 vs M = 1, relative, per seed then averaged
    t1 = pd.read_csv(out / "table1_tokens.csv").set_index(["method", "M"])
    assert flat["tokens.pool.effect"] == pytest.approx(t1.loc[("pool", 196), "loss"] / t1.loc[("pool", 1), "loss"] - 1,
                                                      abs=0.01)
    assert 0 < flat["tokens.pool.effect_sd"] < 0.02


def test_absent_studies_still_write_every_file(tmp_path):
    out, tables, figures, metrics = run_all(tmp_path, {k: STUDIES[k] for k in ("tokens", "frames")}, n_boot=20)
    for p in R.output_paths(out)["tables"] + R.output_paths(out)["figures"]:
        assert p.exists() and p.stat().st_size > 0, p
    t4 = pd.read_csv(out / "table4_window.csv")
    assert list(t4.columns) == ["note"] and "no window study" in t4["note"].item()
    assert "prediction" not in metrics and "window" not in metrics["best_arm"]
    assert "optimum" in metrics  # the tokens x frames cross still fits the joint law


def test_cli_all(full, tmp_path):
    out, *_ = full
    arms, design = write_study(tmp_path)
    fits = out.parent / "fits.json"
    dest = tmp_path / "cli"
    from visctx.cli import main

    common = ["--arms-csv", str(arms), "--design-csv", str(design)]
    assert main(["tables", *common, "--fits-json", str(fits), "--out-dir", str(dest)]) == 0
    assert main(["metrics", *common, "--fits-json", str(fits), "--out-json", str(dest / "m.json")]) == 0
    assert (dest / "m.json").exists() and (dest / "table4_window.tex").exists()
    assert main(["tables", *common, "--fits-json", str(tmp_path / "none.json"), "--out-dir", str(dest)]) == 1


def test_missing_arm_is_a_clear_error(full, tmp_path):
    out, *_ = full
    arms, design = write_study(tmp_path)
    df = pd.read_csv(arms)
    df[df["arm"] != "T4-M9-sample"].to_csv(arms, index=False)
    with pytest.raises(FitError, match="T4-M9-sample"):
        R.write_tables(arms, design, out.parent / "fits.json", tmp_path / "t")


def test_benchmarks_table_has_a_column_per_benchmark(tmp_path):
    arms, design = write_study(tmp_path, seeds=(0, 1))
    fits = tmp_path / "fits.json"
    write_fits(arms, design, 160, n_boot=0, seed=0, out_json=fits)
    ids = list(dict.fromkeys(pd.read_csv(arms)["arm"]))
    scores = pd.DataFrame([{"benchmark": b, "arm": a, "seeds": 2, "score": 0.5 + 0.01 * i - 0.2 * j,
                            "boot_lo": 0.4, "boot_hi": 0.6, "vs": ids[-1], "diff": 0.01 * (i - len(ids) + 1),
                            "diff_lo": -0.1, "diff_hi": 0.05}
                           for j, b in enumerate(["synthetic", "mlvu"]) for i, a in enumerate(ids)])
    scores.to_csv(tmp_path / "scores.csv", index=False)
    t = R.build_tables(arms, design, fits, tmp_path / "scores.csv")["benchmarks"]
    assert list(t.columns[:3]) == ["arm", "studies", "synthetic"]
    assert {"synthetic_lo", "synthetic_hi", "synthetic_vs_best", "synthetic_vs_best_lo", "synthetic_loss",
            "synthetic_loss_lo", "mlvu", "mlvu_vs_best_hi"} <= set(t.columns)
    assert sorted(t["arm"]) == sorted(ids) and t["arm"].iloc[0] == pd.read_csv(design)["arm"].iloc[0]
    row = t.set_index("arm").loc["T4-M9-pool"]
    i = ids.index("T4-M9-pool")
    assert row["mlvu"] == pytest.approx(0.3 + 0.01 * i)
    assert row["synthetic_loss"] == pytest.approx(pd.read_csv(arms).query("arm == 'T4-M9-pool'")["loss"].mean())
    assert set(row["studies"].split(",")) == {"tokens", "frames"}


def test_every_report_output_has_a_caption():
    """`snakemake --report` refuses an output whose caption file is missing (it is read at DAG time)."""
    from pathlib import Path

    captions = Path(__file__).resolve().parents[1] / "workflow" / "report"
    missing = [n for n in [*R.TABLES, *R.FIGURES, "arms", "niah"] if not (captions / f"{n}.rst").is_file()]
    assert not missing, f"no caption file in {captions} for {missing}"


def test_every_table_is_a_dvc_output():
    """A table the report writes but dvc.yaml does not declare is untracked: `dvc repro` would not
    restore it, and a fresh run leaves it beside the committed artifacts."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    # dvc.yaml's paths are under ${results}, params.yaml's results root (results/ for the default)
    stages = yaml.safe_load((root / "dvc.yaml").read_text().replace("${results}", "results"))["stages"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for stage in stages.values() for o in stage.get("outs", [])}
    missing = [str(p) for p in R.output_paths("results/tables")["tables"] if str(p) not in outs]
    assert not missing, f"report tables not declared in dvc.yaml: {missing}"
    assert "results/figures" in outs  # and each PNG a plot of `dvc plots show` (the PDFs are not data series)
    plots = {p.replace("${results}", "results") for p in yaml.safe_load((root / "dvc.yaml").read_text())["plots"]}
    assert {str(p) for p in R.output_paths("results/figures")["figures"] if p.suffix == ".png"} <= plots


def test_table6_compares_each_method_with_pooling_at_the_same_window(tmp_path):
    """Table 6: a row per (method, T, M); the loss relative to pooling at the same (T, M) is the
    mean of the per-seed paired ratios; the best (T, M) per method is its lowest loss."""
    studies = dict(STUDIES, methods={"combos": [[32, 4], [16, 9]], "summary_ratio": 4,
                                     "methods": ["sample", "pool", "mask", "summary"]})
    arms, design = write_study(tmp_path, studies=studies, seeds=(0, 1, 2))
    fits = tmp_path / "fits.json"
    write_fits(arms, design, 160, n_boot=20, seed=0, out_json=fits)
    t6 = R.build_tables(arms, design, fits)["table6_methods"]
    assert set(t6["method"]) == {"sample", "pool", "mask", "summary"} and len(t6) == 8
    reps = pd.read_csv(arms)
    for _, r in t6[t6["method"] != "pool"].iterrows():
        ref = t6[(t6["method"] == "pool") & (t6["T"] == r["T"]) & (t6["M"] == r["M"])]["arm"].iloc[0]
        w = reps.pivot_table(index="seed", columns="arm", values="loss")
        assert r["vs_pool_%"] == pytest.approx(100 * ((w[r["arm"]] - w[ref]) / w[ref]).mean())
        assert r["vs_pool_%_lo"] < r["vs_pool_%"] < r["vs_pool_%_hi"]
    assert t6[t6["method"] == "pool"]["vs_pool_%"].isna().all()
    vst = t6[t6["method"] == "summary"]
    assert set(vst["arm"]) == {"T32-M16-pool-vst4w16", "T16-M36-pool-vst4w36"} and (vst["kept"] == vst["T"] * vst["M"]).all()
    for _, g in t6.groupby("method"):
        assert (g["best"] == "best (T, M)").sum() == 1 and g.loc[g["best"] != "", "loss"].iloc[0] == g["loss"].min()


def test_learned_by_task_counts_the_arms_below_each_answer_prior():
    """A task at its prior in every arm (count: ln 4) is reported as learned by none; one that two
    arms beat beyond their seeds' noise (needle, vs ln 6) by those two; the episodic prior is ln 5
    (its question names a colour that is not the answer)."""
    import math
    from types import SimpleNamespace

    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for arm, needle in (("A", 1.2), ("B", 1.5), ("C", math.log(6)), ("D", math.log(6) + 0.01)):
        for seed in (0, 1, 2):
            rows.append({"arm": arm, "seed": seed, "loss_count": math.log(4) + rng.normal(0, 0.01),
                         "loss_needle": needle + rng.normal(0, 0.01), "loss_episodic": math.log(5) - 0.2,
                         "acc_count": 0.25, "acc_needle": 0.5, "acc_episodic": 0.3})
    t = R.learned_by_task(SimpleNamespace(replicates=pd.DataFrame(rows))).set_index("task")
    assert list(t.index) == ["needle", "count", "episodic"]  # the corpus's order, only the tasks measured
    assert t.loc["count", "below_prior"] == 0 and t.loc["count", "prior"] == pytest.approx(math.log(4))
    assert t.loc["needle", "below_prior"] == 2 and t.loc["needle", "best_arm"] == "A"
    assert t.loc["needle", "loss_lo"] < t.loc["needle", "loss"] < t.loc["needle", "loss_hi"] < math.log(6)
    assert t.loc["episodic", "prior"] == pytest.approx(math.log(5)) and t.loc["episodic", "below_prior"] == 4
    assert (t["arms"] == 4).all() and (t["seeds"] == 3).all()
