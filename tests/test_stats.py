"""Across-seed statistics, the noise bootstrap of the fits, and the benchmark table's intervals."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from visctx import fit as F
from visctx.stats import paired_effect, seed_interval, summarise


def test_seed_interval_is_students_t():
    s = seed_interval([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["n"] == 3
    half = 4.302652729911275 / math.sqrt(3)  # t(2) at 97.5 %
    assert s["lo"] == pytest.approx(2 - half) and s["hi"] == pytest.approx(2 + half)
    assert seed_interval([5.0]) == {"mean": 5.0, "sd": None, "lo": None, "hi": None, "n": 1}
    assert seed_interval([]) ["n"] == 0


def test_summarise_and_paired_effects_pair_within_a_seed():
    # the seeds differ a lot, but within every seed arm b is 10 % below arm a: the paired effect is exact
    rows = [{"arm": arm, "seed": s, "loss": base * (0.9 if arm == "b" else 1.0)}
            for s, base in enumerate([1.0, 1.5, 2.0]) for arm in ("a", "b")]
    df = pd.DataFrame(rows)
    e = paired_effect(df, "a", "b", relative=True)
    assert e["mean"] == pytest.approx(-0.1) and e["sd"] == pytest.approx(0.0, abs=1e-12)
    assert e["per_seed"] == pytest.approx([-0.1] * 3)
    s = summarise(df, ["arm"], ["loss"]).set_index("arm")
    assert s.loc["a", "loss"] == pytest.approx(1.5) and s.loc["a", "seeds"] == 3
    assert s.loc["a", "loss_lo"] < 1.0 < 2.0 < s.loc["a", "loss_hi"]  # unpaired, the seeds' spread shows
    with pytest.raises(KeyError, match="needs arms a and c"):
        paired_effect(df, "a", "c")


def _replicates(tmp_path, seeds=(0, 1, 2), videos=4):
    rng = np.random.default_rng(0)
    arms, vids = [], []
    for arm, level in (("x", 1.0), ("y", 2.0)):
        for s in seeds:
            nll = level * (1 + 0.1 * rng.normal(size=videos)) * 4
            vids += [{"arm": arm, "seed": s, "benchmark": "synthetic", "video": f"v{v}", "n": 4, "nll": nll[v],
                      "ntok": 4, "correct": 2} for v in range(videos)]
            arms.append({"arm": arm, "T": 1, "M": 1, "token_op": "pool", "frame_op": "sample", "seed": s,
                         "benchmark": "synthetic", "loss": nll.sum() / (4 * videos)})
    pd.DataFrame(arms).to_csv(tmp_path / "arms.csv", index=False)
    pd.DataFrame(vids).to_csv(tmp_path / "videos.csv", index=False)
    return F.load_replicates(tmp_path / "arms.csv")


def test_noise_draws_resample_seeds_and_videos(tmp_path):
    reps = _replicates(tmp_path)
    Y = F.noise_draws(reps, ["x", "y"], 400, seed=1, videos_csv=tmp_path / "videos.csv")
    point = reps.groupby("arm")["loss"].mean()
    assert Y.shape == (400, 2) and np.isfinite(Y).all()
    assert np.mean(Y, 0) == pytest.approx(point[["x", "y"]].to_numpy(), rel=0.03)  # centred on the estimate
    assert Y[:, 0].std() > 0 and len(np.unique(Y[:, 0])) > 50  # videos and seeds both vary
    seeds_only = F.noise_draws(reps, ["x", "y"], 400, seed=1)
    assert len(np.unique(seeds_only[:, 0].round(12))) <= 10  # 3 seeds: at most 10 multisets
    assert F.noise_draws(reps[reps["seed"] == 0], ["x"], 10) is None  # nothing to resample
    assert np.array_equal(Y, F.noise_draws(reps, ["x", "y"], 400, seed=1, videos_csv=tmp_path / "videos.csv"))


def test_fits_with_replicates_bootstrap_the_noise(tmp_path):
    from synthetic_study import write_study

    arms, design = write_study(tmp_path, seeds=(0, 1, 2), seed_noise=0.01)
    res = F.run_fits(arms, design, 160, n_boot=100, seed=0)
    assert res["bootstrap"] == {"kind": "noise", "resampled": ["seeds"]}
    f = res["fits"]["frames"]["pool"]["forms"]["power"]
    assert f["bootstrap"]["kind"] == "noise" and f["bootstrap"]["n_ok"] > 90
    assert f["n"] == 8  # the points are the arms (means over seeds), not arm x seed rows


def test_benchmark_scores_average_seeds_and_pair_arms(tmp_path):
    from visctx.collect import benchmark_scores

    questions = [{"id": f"q{v}{t}", "video": f"v{v}", "question": "q", "options": ["a", "b", "c", "d"],
                  "answer": 0, "task_type": t} for v in range(6) for t in ("needle", "count")]
    (tmp_path / "eval.json").write_text(json.dumps(questions))
    evals = []
    for arm, right in (("T1-M1-pool", 9), ("T1-M4-pool", 3)):
        for seed in (0, 1):
            preds = [0 if i < right + seed else 1 for i in range(len(questions))]
            p = tmp_path / f"{arm}-{seed}.json"
            p.write_text(json.dumps({"arm": arm, "seed": seed, "benchmark": "synthetic", "n": 12, "loss": 1.0,
                                     "accuracy": 0.5, "predictions": preds, "ids": [q["id"] for q in questions]}))
            evals.append(str(p))
    benchmark_scores(evals, [str(tmp_path / "eval.json")], str(tmp_path / "s.csv"), n_boot=200)
    s = pd.read_csv(tmp_path / "s.csv").set_index("arm")
    from visctx.benchmarks import read_items, score

    items = read_items(tmp_path / "eval.json")
    for arm, right in (("T1-M1-pool", 9), ("T1-M4-pool", 3)):
        per_seed = [score("synthetic", items, [0 if i < right + k else 1 for i in range(12)])["overall"] for k in (0, 1)]
        assert s.loc[arm, "score"] == pytest.approx(np.mean(per_seed), rel=1e-5)  # written with 6 digits
        assert s.loc[arm, "boot_lo"] <= s.loc[arm, "score"] <= s.loc[arm, "boot_hi"]
    assert (s["vs"] == "T1-M1-pool").all() and s.loc["T1-M1-pool", "diff"] == 0
    assert s.loc["T1-M4-pool", "diff_hi"] < 0  # clearly worse than the best arm on the same resamples


def test_lack_of_fit_is_the_anova_of_a_law_against_the_cell_means():
    # a linear law on 8 settings x 3 replicates with curvature: statsmodels' anova_lm of the OLS
    # law against the cell-means model on the raw replicates is the textbook lack-of-fit F test
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    rng = np.random.default_rng(3)
    x = np.repeat(np.arange(1.0, 9.0), 3)
    raw = pd.DataFrame({"x": x, "y": 1.0 + 0.1 * x + 0.01 * (x - 4.5) ** 2 + 0.02 * rng.normal(size=len(x))})
    law, cells = smf.ols("y ~ x", raw).fit(), smf.ols("y ~ C(x)", raw).fit()
    table = anova_lm(law, cells)
    g = raw.groupby("x")["y"]
    fitted = law.predict(pd.DataFrame({"x": g.mean().index}))
    lof = F.lack_of_fit(g.mean(), fitted, g.var(ddof=1), 3, 2)
    assert lof["F"] == pytest.approx(table["F"].iloc[1], rel=1e-9)
    assert lof["p"] == pytest.approx(table["Pr(>F)"].iloc[1], rel=1e-9)
    assert (lof["df_lof"], lof["df_pure"]) == (6, 16)
    assert F.lack_of_fit(g.mean(), fitted, g.var(ddof=1), 1, 2) is None  # no replicates, no pure error


def test_lack_of_fit_keeps_a_true_law_and_flags_arms_the_noise_does_not_explain(tmp_path):
    from synthetic_study import write_study

    def lof(noise, seed_noise, name):
        (tmp_path / name).mkdir()
        res = F.run_fits(*write_study(tmp_path / name, seeds=(0, 1, 2), noise=noise, seed_noise=seed_noise),
                         160, n_boot=0)
        rows = {(r["study"], r["method"], r["form"]): r for r in res["model_selection"]}
        out = {}
        for key, form in ((("frames", "sample"), "power_offset"), (("joint", "pool"), "joint")):
            entry = res["fits"][key[0]] if key[0] == "joint" else res["fits"][key[0]][key[1]]
            f = entry["forms"][form]
            assert rows[(*key, form)]["lof_p"] == f["lack_of_fit"]["p"]
            out[key] = f
        return out

    # the losses follow the law, seeds scatter them: the test does not object, R^2 is near what the noise allows
    for f in lof(0.0, 0.01, "true").values():
        assert f["lack_of_fit"]["p"] > 0.01 and f["lack_of_fit"]["replicates"] == 3
        assert f["r2"] == pytest.approx(f["lack_of_fit"]["r2_attainable"], abs=0.05)
    # each arm off the law by more than its seeds' spread: flagged, and R^2 falls far short of what the noise allows
    for f in lof(0.03, 0.003, "bumpy").values():
        assert f["lack_of_fit"]["p"] < 0.001 and 1 - f["r2"] > 10 * (1 - f["lack_of_fit"]["r2_attainable"])


def test_the_sds_upper_bound_is_the_chi_square_interval_and_shrinks_with_seeds():
    from scipy.stats import chi2

    from visctx.stats import sd_upper

    # two degrees of freedom: (n - 1) s^2 / sigma^2 ~ chi2(2), whose 2.5 % point is 0.0506
    assert sd_upper(1.0, 3) == pytest.approx(math.sqrt(2 / chi2.ppf(0.025, 2)))
    assert sd_upper(1.0, 3) == pytest.approx(6.285, abs=1e-3)
    assert 1 < sd_upper(1.0, 10) < sd_upper(1.0, 5) < sd_upper(1.0, 3)
    rng = np.random.default_rng(0)  # it covers the true SD about 97.5 % of the time (one-sided)
    s = rng.normal(size=(20000, 3)).std(axis=1, ddof=1)
    assert np.mean(sd_upper(s, 3) >= 1.0) == pytest.approx(0.975, abs=0.005)


def test_variance_components_are_the_two_way_anova_of_arms_by_seeds():
    """The mean squares equal statsmodels' ANOVA of ``loss ~ arm + seed``; on a draw with a known
    shared (base) and own (fine-tune) noise the components come back, and a seed-free draw gives a
    shared part of zero, not a negative variance."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    from visctx.stats import variance_components

    rng = np.random.default_rng(0)
    arms, seeds = 40, 30
    level = rng.normal(1.5, 0.2, arms)
    shared, own = 0.02, 0.01
    base = rng.normal(0, shared, seeds)
    df = pd.DataFrame([{"arm": f"a{i}", "seed": s, "loss": level[i] + base[s] + rng.normal(0, own)}
                       for i in range(arms) for s in range(seeds)])
    v = variance_components(df)
    table = anova_lm(smf.ols("loss ~ C(arm) + C(seed)", df).fit())
    assert v["ms_seed"] == pytest.approx(table.loc["C(seed)", "mean_sq"], rel=1e-9)
    assert v["ms_own"] == pytest.approx(table.loc["Residual", "mean_sq"], rel=1e-9)
    assert v["seed_sd"] == pytest.approx(shared, rel=0.35) and v["own_sd"] == pytest.approx(own, rel=0.1)
    assert 0.6 < v["seed_share"] < 0.95 and (v["arms"], v["seeds"]) == (arms, seeds)

    flat = df.assign(loss=[level[int(a[1:])] + rng.normal(0, own) for a in df["arm"]])
    f = variance_components(flat)
    assert f["seed_sd"] < 0.3 * own and f["own_sd"] == pytest.approx(own, rel=0.1)
    centred = flat.assign(loss=flat["loss"] - flat.groupby("seed")["loss"].transform("mean"))  # MS_seed = 0
    c = variance_components(centred)
    assert c["ms_seed"] < c["ms_own"] and c["seed_sd"] == 0.0 and c["seed_share"] == 0.0

    one_arm_in_every_seed = df[(df["arm"] == "a0") | (df["seed"] == 0)]
    with pytest.raises(ValueError, match="1 arms x 30 seeds"):
        variance_components(one_arm_in_every_seed)
