"""visctx.fit: recovery of known laws, the optimum, model selection, prediction check, errors."""

from __future__ import annotations

import json

import math

import numpy as np
import pandas as pd
import pytest
from synthetic_study import JOINT, STUDIES, write_study

from visctx import fit as F
from visctx.fit import (FitError, bootstrap_fit, fit_law, joint_loss, lagrange_residual, model_selection, optimum,
                        optimum_brute_force, optimum_closed_form, run_fits)

N_BOOT = 150


# ---------------------------------------------------------------------------------------------
# Recovery


@pytest.mark.parametrize("noise", [0.0, 0.005, 0.02])
def test_recovers_1d_power_law(noise):
    true = {"E": 1.0, "A": 2.0, "alpha": 0.5}
    x = np.geomspace(1, 256, 12).round()
    y = (true["E"] + true["A"] * x ** -true["alpha"]) * np.exp(noise * np.random.default_rng(1).normal(size=len(x)))
    f = fit_law("power_offset", x, y)
    assert f.converged and f.opt.grad_norm <= F.GTOL
    boot = bootstrap_fit(f, N_BOOT, seed=0)
    assert boot["n_ok"] >= 0.9 * N_BOOT
    for k, v in true.items():
        if noise == 0:
            assert f.params[k] == pytest.approx(v, rel=1e-6)
        else:
            lo, hi = boot["ci"][k]
            assert lo <= v <= hi, (k, v, lo, hi)
            lo, hi = f.inference["wald_ci"][k]
            assert lo < f.params[k] < hi
    if noise == 0:
        assert f.inference["r2"] == pytest.approx(1.0)


@pytest.mark.parametrize("noise", [0.0, 0.005, 0.02])
def test_recovers_joint_law(noise):
    T, M = np.meshgrid([1, 2, 4, 8, 16, 32.0], [1, 4, 9, 16, 36, 81.0])
    X = np.column_stack([T.ravel(), M.ravel()])
    y = joint_loss(JOINT, X[:, 0], X[:, 1]) * np.exp(noise * np.random.default_rng(0).normal(size=len(X)))
    f = fit_law("joint", X, y)
    assert f.converged and f.at_bound() == []
    boot = bootstrap_fit(f, N_BOOT, seed=0)
    for k, v in JOINT.items():
        if noise == 0:
            assert f.params[k] == pytest.approx(v, rel=1e-5)
        else:
            lo, hi = boot["ci"][k]
            assert lo <= v <= hi, (k, v, lo, hi)


def test_linear_and_offset_free_forms_recover():
    x = np.array([1, 2, 4, 6, 8, 12, 16, 32.0])
    f = fit_law("linear", x, 2.0 - 0.02 * x)
    assert f.params["a"] == pytest.approx(2.0, rel=1e-6) and f.params["b"] == pytest.approx(-0.02, rel=1e-5)
    f = fit_law("power", x, 2.0 * x ** -0.3)
    assert f.params["A"] == pytest.approx(2.0, rel=1e-6) and f.params["alpha"] == pytest.approx(0.3, rel=1e-6)


def test_bootstrap_is_seeded():
    x = np.geomspace(1, 196, 9)
    y = (1 + 2 * x ** -0.5) * np.exp(0.01 * np.random.default_rng(3).normal(size=9))
    a, b = fit_law("power_offset", x, y), fit_law("power_offset", x, y)
    assert bootstrap_fit(a, 50, seed=7)["ci"] == bootstrap_fit(b, 50, seed=7)["ci"]
    assert bootstrap_fit(b, 50, seed=8)["ci"] != bootstrap_fit(a, 50, seed=7)["ci"]


# ---------------------------------------------------------------------------------------------
# Model selection


@pytest.mark.parametrize("truth,fn", [("linear", lambda x: 2.0 - 0.02 * x),
                                      ("power_offset", lambda x: 1 + 2 * x ** -0.5),
                                      ("power", lambda x: 2 * x ** -0.3)])
def test_model_selection_picks_the_generating_form(truth, fn):
    x = np.array([1, 2, 4, 6, 8, 12, 16, 32.0])
    y = fn(x) * np.exp(0.005 * np.random.default_rng(0).normal(size=len(x)))
    rows = model_selection({f: fit_law(f, x, y) for f in F.FORMS_1D}, "frames", "pool")
    assert [r["form"] for r in rows if r["selected"]] == [truth]
    assert {r["criterion"] for r in rows} == {"loo_mae_1se"}
    sel = next(r for r in rows if r["selected"])
    assert all(r["loo_n"] == len(x) for r in rows) and sel["within_1se"]


def test_selection_is_by_held_out_error_not_gaussian_aicc_at_the_huber_optimum():
    """A pure power law with one outlying arm: the Gaussian likelihood evaluated at the Huber
    optimum (what AICc used to be computed from) prefers the power law with offset; predicting each
    arm from the others does not (the criterion the old code used picks the wrong form here)."""
    x = np.array([1, 4, 9, 16, 25, 36, 49, 81, 196.0])
    rng = np.random.default_rng(1)
    y = 1.7 * x ** -0.08 * np.exp(0.003 * rng.normal(size=9))
    for _ in range(rng.integers(1, 3)):
        j = rng.integers(0, 9)
        y[j] *= math.exp(rng.choice([-1, 1]) * rng.uniform(0.02, 0.08))
    fits = {f: fit_law(f, x, y) for f in F.FORMS_1D}
    aicc = {f: fits[f].inference["aicc"] for f in fits}
    assert min(aicc, key=aicc.get) == "power_offset"  # the old criterion's (wrong) pick
    rows = model_selection(fits)
    assert [r["form"] for r in rows if r["selected"]] == ["power"]
    loo = F.loo_error(fits["power"])
    assert loo["loo_n"] == 9 and loo["loo_mae"] == pytest.approx(np.mean(loo["loo_errors"]))


def test_non_converged_fit_is_never_selected(monkeypatch, tmp_path):
    x = np.array([1, 2, 4, 6, 8, 12, 16, 32.0])
    y = 1 + 2 * x ** -0.5
    o = F._minimize(F.LAWS["power_offset"], np.log(x)[:, None], np.log(y), np.ones(8), np.array([0.0, 0.0, 1.0]),
                    F.HUBER_DELTA, maxiter=1)
    assert not o.converged
    monkeypatch.setattr(F, "GTOL", -1.0)  # nothing can pass the gradient check
    f = fit_law("power_offset", x, y)
    assert not f.converged and f.to_dict()["converged"] is False
    assert not any(r["selected"] for r in model_selection({"power_offset": f}))
    arms, design = write_study(tmp_path)
    res = run_fits(arms, design, 160, n_boot=0)
    assert res["errors"] and all("did not converge" in e["error"] for e in res["errors"])
    with pytest.raises(FitError, match="did not converge"):
        run_fits(arms, design, 160, n_boot=0, strict=True)


# ---------------------------------------------------------------------------------------------
# The optimum


@pytest.mark.parametrize("budget", [160, 6000])
def test_closed_form_satisfies_lagrange_and_is_the_iso_window_minimum(budget):
    cf = optimum_closed_form(JOINT, budget)
    assert cf["T"] * cf["M"] == pytest.approx(budget)
    assert abs(cf["lagrange_residual"]) < 1e-12
    assert abs(lagrange_residual(JOINT, cf["T"], cf["M"])) < 1e-12
    T = np.geomspace(1, budget, 20001)  # dense search along T*M = L
    loss = joint_loss(JOINT, T, budget / T)
    assert cf["loss"] <= loss.min() + 1e-12
    assert cf["T"] == pytest.approx(T[np.argmin(loss)], rel=1e-3)


@pytest.mark.parametrize("method", ["pool", "sample"])
def test_brute_force_agrees_with_closed_form(method):
    res = optimum(JOINT, 160, method)
    bf, cf = res["brute_force"], res["closed_form"]
    assert res["agree"] and bf["M"] in res["bracketing_M"]
    assert bf["tokens"] <= 160 and bf["M"] in F.allowed_token_counts(method)
    assert 0 <= res["loss_gap"] < 0.01 * cf["loss"]
    # brute force is really the minimum over its candidate set
    T, M = F._candidates(160, method, None)
    assert bf["loss"] == pytest.approx(joint_loss(JOINT, T, M).min())
    assert (bf["T"], bf["M"]) == (10, 16) if method == "pool" else bf["M"] in (9, 16)


def test_brute_force_respects_t_max_and_vectorises():
    assert optimum_brute_force(JOINT, 6000, "pool", t_max=32)["T"] <= 32
    draws = np.array([[0.8, 1.5, 0.4, 2.0, 0.6], [0.8, 3.0, 0.4, 2.0, 0.6]])
    b = optimum_brute_force(draws, 160, "pool")
    assert b["T"][0] == 10 and b["T"][1] >= b["T"][0]  # a larger A favours more frames
    c = optimum_closed_form(draws, 160)
    assert c["T"][0] == pytest.approx(optimum_closed_form(JOINT, 160)["T"])


def test_optimum_clipped_to_the_window_edge_does_not_agree():
    """Frames barely matter (A ~ 0): the closed form puts T* at 1 and M* = L, the window's edge. The
    old check called that agreement because the brute force picked the largest M too."""
    flat = {"E": 1e-13, "A": 2.6e-13, "alpha": 0.15, "B": 1.75, "beta": 0.06}
    res = optimum(flat, 160, "pool")
    assert res["closed_form"]["clipped"] and res["brute_force"]["M"] in res["bracketing_M"]
    assert res["agree"] is False and any("clipped" in d for d in res["disagree"])
    assert "NO agreement" in F.format_optimum(res)


def test_optimum_outside_the_trained_range_is_flagged():
    """No arm above M = 196 or T = 32 was trained: an answer at (1, 729) is an extrapolation."""
    tokens_heavy = {"E": 0.5, "A": 0.01, "alpha": 0.2, "B": 2.0, "beta": 0.5}
    res = optimum(tokens_heavy, 6000, "pool", trained={"T": [1, 32], "M": [1, 196]})
    assert res["brute_force"]["M"] == 729
    assert res["extrapolated"] and any("M = 729 outside" in w for w in res["warnings"])
    assert "warning: extrapolated" in F.format_optimum(res)
    inside = optimum(JOINT, 160, "pool", trained={"T": [1, 32], "M": [1, 196]})
    assert inside["extrapolated"] is False and inside["agree"]


def test_brute_force_memory_stays_small_for_huge_windows():
    T, M = F._candidates(10 ** 9, "pool", None)
    assert len(T) == len(F.allowed_token_counts("pool"))  # one (largest) T per producible M
    res = optimum(JOINT, 10 ** 9, "pool")
    assert res["brute_force"]["tokens"] <= 10 ** 9


def test_optimum_intervals_from_draws():
    draws = np.array([[0.8, 1.5 * s, 0.4, 2.0, 0.6] for s in np.linspace(0.8, 1.2, 41)])
    res = optimum(JOINT, 160, draws=draws)
    b = res["bootstrap"]
    assert b["n"] == 41
    assert b["T_star"]["lo"] < res["closed_form"]["T"] < b["T_star"]["hi"]
    assert sum(b["M_freq"].values()) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# Degenerate inputs


def test_too_few_points():
    with pytest.raises(FitError, match="needs at least 4 distinct points"):
        fit_law("power_offset", [1, 4, 9], [3.0, 2.0, 1.5])
    with pytest.raises(FitError, match="needs at least 6 distinct points"):
        fit_law("joint", [[1, 1], [2, 4], [4, 9]], [3.0, 2.0, 1.5])


def test_joint_needs_two_T_and_two_M():
    X = [[4, m] for m in (1, 4, 9, 16, 25, 36, 49)]
    with pytest.raises(FitError, match="2 distinct T"):
        fit_law("joint", X, [3.0, 2.5, 2.0, 1.8, 1.7, 1.65, 1.6])


def test_constant_losses():
    with pytest.raises(FitError, match="constant"):
        fit_law("power_offset", [1, 2, 4, 8, 16], [1.5] * 5)


def test_nan_and_nonpositive_losses():
    with pytest.raises(FitError, match="NaN"):
        fit_law("power", [1, 2, 4, 8], [2.0, np.nan, 1.5, 1.4])
    with pytest.raises(FitError, match="> 0"):
        fit_law("power", [1, 2, 4, 8], [2.0, 0.0, 1.5, 1.4])
    with pytest.raises(FitError, match="unknown form"):
        fit_law("exponential", [1, 2, 4, 8], [2.0, 1.6, 1.5, 1.4])


def test_missing_arm_and_nan_loss_name_the_arm(tmp_path):
    arms, design = write_study(tmp_path)
    df = pd.read_csv(arms)
    df[df["arm"] != "T4-M16-sample"].to_csv(arms, index=False)
    with pytest.raises(FitError, match="T4-M16-sample"):
        run_fits(arms, design, 160, n_boot=0)
    df.loc[df["arm"] == "T8-M25-pool", "loss"] = np.nan
    df.to_csv(arms, index=False)
    with pytest.raises(FitError, match=r"NaN/missing for arm\(s\) \['T8-M25-pool'\]"):
        run_fits(arms, design, 160, n_boot=0)
    with pytest.raises(FitError, match="no rows for benchmark 'mlvu'"):
        run_fits(arms, design, 160, n_boot=0, benchmark="mlvu")
    with pytest.raises(FitError, match="no such arms file"):
        run_fits(tmp_path / "nope.csv", design, 160)


# ---------------------------------------------------------------------------------------------
# The whole analysis


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    arms, design = write_study(tmp)
    out = tmp / "fits.json"
    res = F.write_fits(arms, design, 160, n_boot=N_BOOT, seed=0, out_json=out)
    return res, out


def test_run_fits_structure_and_json(full):
    res, out = full
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["errors"] == []
    for study in ("tokens", "frames"):
        assert set(res["fits"][study]) == {"sample", "pool"}
        for entry in res["fits"][study].values():
            assert set(entry["forms"]) == set(F.FORMS_1D)
            assert entry["selected"] in F.FORMS_1D
            for f in entry["forms"].values():
                assert f["converged"] and f["bootstrap"]["n_ok"] > 0.9 * N_BOOT
                assert {"r2", "aic", "aicc", "bic", "se", "wald_ci"} <= set(f)
                assert len(f["curve"]["x"]) == len(f["curve"]["lo"])
    j = res["fits"]["joint"]
    # 24 pool x frame-sample arms; two window arms (T4-M36, T16-M9) are also token/frame arms and
    # stay held out of the fit so the prediction check is honest
    assert sorted(j["held_out_overlap"]) == ["T16-M9-pool", "T4-M36-pool"]
    assert len(j["arms"]) == 22 and len(j["held_out"]) == 5
    assert not set(j["arms"]) & set(j["held_out"])
    assert len(j["forms"]["joint"]["draws"]) == j["forms"]["joint"]["bootstrap"]["n_ok"]
    for k, v in JOINT.items():
        lo, hi = j["forms"]["joint"]["bootstrap"]["ci"][k]
        assert lo <= j["forms"]["joint"]["params"][k] <= hi
        assert j["forms"]["joint"]["params"][k] == pytest.approx(v, rel=0.15)
    studies = {(r["study"], r["method"]) for r in res["model_selection"]}
    assert studies == {("tokens", "sample"), ("tokens", "pool"), ("frames", "sample"), ("frames", "pool"),
                       ("joint", "pool")}


def test_prediction_check_flags_the_best_window_arm(full):
    res, _ = full
    p = res["prediction"]
    assert p["best_observed"] == p["best_predicted"] == "T10-M16-pool"
    assert p["best_match"] and p["optimum_matches_best"]
    assert p["mape"] < 0.02
    assert {r["arm"] for r in p["arms"]} == {"T4-M36-pool", "T6-M25-pool", "T10-M16-pool", "T16-M9-pool",
                                             "T32-M4-pool"}
    assert sum(r["p_best"] for r in p["arms"]) == pytest.approx(1.0)
    opt = res["optimum"]
    assert (opt["brute_force"]["T"], opt["brute_force"]["M"]) == (10, 16) and opt["agree"]
    b = opt["bootstrap"]
    assert b["T_star"]["lo"] <= opt["closed_form"]["T"] <= b["T_star"]["hi"]
    assert opt["closed_form"]["T"] == pytest.approx(optimum_closed_form(JOINT, 160)["T"], rel=0.1)


def test_prediction_check_detects_a_mismatch(tmp_path):
    arms, design = write_study(tmp_path)
    df = pd.read_csv(arms)
    df.loc[df["arm"] == "T32-M4-pool", "loss"] = 1.0  # empirically best, but the law says otherwise
    df.to_csv(arms, index=False)
    p = run_fits(arms, design, 160, n_boot=0)["prediction"]
    assert p["best_observed"] == "T32-M4-pool" and p["best_predicted"] == "T10-M16-pool"
    assert not p["best_match"]


def test_absent_studies(tmp_path):
    micro = {k: STUDIES[k] for k in ("tokens", "frames")}
    arms, design = write_study(tmp_path, micro)
    res = run_fits(arms, design, 160, n_boot=0)
    assert res["optimum"] is not None and res["prediction"] is None  # the tokens x frames cross suffices
    arms, design = write_study(tmp_path, {"tokens": STUDIES["tokens"]})
    res = run_fits(arms, design, 160, n_boot=10)
    assert "frames" not in res["fits"] and "joint" not in res["fits"] and res["optimum"] is None
    assert any("2 distinct T" in e["error"] for e in res["errors"])
    with pytest.raises(FitError, match="2 distinct T"):
        run_fits(arms, design, 160, n_boot=0, strict=True)


def test_small_study_records_forms_it_cannot_fit(tmp_path):
    small = {"tokens": {"frames": 4, "tokens": [1, 4, 16], "methods": ["pool"]}}
    arms, design = write_study(tmp_path, small)
    res = run_fits(arms, design, 160, n_boot=20)
    forms = res["fits"]["tokens"]["pool"]["forms"]
    assert set(forms) == {"power", "linear"}  # 3 points: too few for E + A*x^-alpha
    assert any("tokens/pool/power_offset" in e["fit"] for e in res["errors"])


def test_workers_do_not_change_results():
    x = np.geomspace(1, 196, 9)
    y = (1 + 2 * x ** -0.5) * np.exp(0.01 * np.random.default_rng(3).normal(size=9))
    one = [fit_law(f, x, y, label=f) for f in F.FORMS_1D]
    two = [fit_law(f, x, y, label=f) for f in F.FORMS_1D]
    F.bootstrap_all(one, 30, seed=1, workers=1)
    F.bootstrap_all(two, 30, seed=1, workers=2)
    assert [f.boot for f in one] == [f.boot for f in two]
    assert all(np.array_equal(a.draws, b.draws) for a, b in zip(one, two))


def test_cli_optimum(full, capsys):
    from visctx.cli import main

    _, out = full
    assert main(["optimum", "--fits", str(out), "--budget", "160"]) == 0
    text = capsys.readouterr().out
    assert "best (T, M) = (10, 16)" in text and "closed form (Lagrange)" in text
    assert main(["optimum", "--fits", str(out), "--budget", "6000", "--t-max", "32", "--as-json"]) == 0
    ans = json.loads(capsys.readouterr().out)
    assert ans["brute_force"]["T"] <= 32 and ans["bootstrap"]["n"] > 0
    assert main(["optimum", "--fits", str(out.parent / "missing.json"), "--budget", "160"]) == 1
    assert "missing.json" in capsys.readouterr().err


def test_cli_fits(tmp_path):
    from visctx.cli import main

    arms, design = write_study(tmp_path, {"tokens": STUDIES["tokens"]})
    out = tmp_path / "fits.json"
    assert main(["fits", "--arms-csv", str(arms), "--design-csv", str(design), "--out-json", str(out),
                 "--budget", "160", "--n-boot", "10"]) == 0
    assert json.loads(out.read_text())["n_boot"] == 10
