"""The README's results section is what the committed artifacts render to (no number typed by hand)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from visctx.readme import BEGIN, END, PERF_BEGIN, PERF_END, readme, render, render_perf

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_readme_is_what_the_committed_results_render_to():
    assert readme(str(ROOT / "README.md"), str(ROOT), check=True) == {"current": True}


def test_a_changed_artifact_makes_the_check_fail(tmp_path):
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("data", "models", "base",
                                                                                            "arms", "*.html"))
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    assert readme(str(tmp_path / "README.md"), str(tmp_path), check=True)["current"]
    m = json.loads((tmp_path / "results/metrics_full.json").read_text())
    m["tokens"]["pool"]["effect"] += 0.01  # one more percent of effect than the tables hold
    (tmp_path / "results/metrics_full.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="not what results/ renders to"):
        readme(str(tmp_path / "README.md"), str(tmp_path), check=True)
    readme(str(tmp_path / "README.md"), str(tmp_path))  # regenerating fixes it
    text = (tmp_path / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and render(tmp_path) in text


def test_the_performance_section_is_the_harness_record(tmp_path):
    """The harness's tables in the README are perf.json rendered, not typed: a changed record fails."""
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("data", "models", "base",
                                                                                            "arms", "*.html"))
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    assert text.count(PERF_BEGIN) == 1 and text.count(PERF_END) == 1 and render_perf(tmp_path) in text
    p = json.loads((tmp_path / "results/perf/perf.json").read_text())
    p["noop_s"]["dvc status"] += 1.0
    (tmp_path / "results/perf/perf.json").write_text(json.dumps(p))
    with pytest.raises(ValueError, match="not what results/ renders to"):
        readme(str(tmp_path / "README.md"), str(tmp_path), check=True)


def test_the_ceilings_effects_are_read_over_each_studys_own_arms(tmp_path):
    from visctx.readme import _ceiling_effects

    (tmp_path / "tables").mkdir()
    (tmp_path / "tables/design.csv").write_text(
        "study,method,T,M,arm\ntokens,pool,1,4,T1-M4-pool\ntokens,pool,1,1,T1-M1-pool\n"
        "frames,sample,8,4,T8-M4-pool\nframes,sample,1,4,T1-M4-pool\nwindow,pool,32,4,T32-M4-pool\n")
    (tmp_path / "tables/ceiling.csv").write_text(
        "arm,loss\nT1-M1-pool,2.0\nT1-M4-pool,1.5\nT8-M4-pool,0.5\nT32-M4-pool,0.1\n")
    assert _ceiling_effects(tmp_path) == {"tokens/pool": -0.25, "frames/sample": -2 / 3}
    assert _ceiling_effects(tmp_path / "missing") == {}
    assert _ceiling_effects(tmp_path, "loss_known") == {}  # a ceiling table from before the reader
    (tmp_path / "tables/ceiling.csv").write_text(
        "arm,loss,loss_known\nT1-M1-pool,2.0,1.0\nT1-M4-pool,1.5,1.0\nT8-M4-pool,0.5,0.25\nT32-M4-pool,0.1,0.1\n")
    assert _ceiling_effects(tmp_path, "loss_known") == {"tokens/pool": 0.0, "frames/sample": -0.75}


def test_the_trained_share_of_the_ceilings_effect_carries_the_trained_effects_interval():
    from visctx.readme import _ceiling_shares

    metrics = {"tokens": {"pool": {"effect": -0.06, "effect_sd": 0.01}},
               "frames": {"pool": {"effect": -0.02}, "sample": {"effect": 0.01, "effect_sd": 0.01}}}
    got = _ceiling_shares(metrics, {"tokens/pool": -0.15, "frames/pool": -0.4, "frames/sample": -0.5,
                                    "tokens/sample": -0.2}, seeds=3)
    half = 4.302653 * 0.01 / 3 ** 0.5  # Student's t, 2 degrees of freedom
    assert got["tokens/pool"] == pytest.approx((0.4, (0.06 - half) / 0.15, (0.06 + half) / 0.15), rel=1e-6)
    assert got["frames/pool"][0] == pytest.approx(0.05) and got["frames/pool"][1:] == (None, None)  # no SD: no interval
    share, lo, hi = got["frames/sample"]  # a trained effect of the wrong sign: a negative share, interval ordered
    assert share == pytest.approx(-0.02) and lo < share < hi
    assert "tokens/sample" not in got  # no trained effect
    assert _ceiling_shares(metrics, {"tokens/pool": -0.15}, seeds=1)["tokens/pool"][1:] == (None, None)


def test_a_selected_laws_fit_is_shown_beside_what_the_noise_allows():
    from visctx.readme import _noise_fit

    lof = {"F": 3.4, "p": 0.0237, "r2_attainable": 0.9664}
    entry = {"selected": "power", "forms": {"power": {"lack_of_fit": lof}, "linear": {"lack_of_fit": None}}}
    assert _noise_fit(entry) == " (0.966 attainable given the replicate noise; lack of fit p = 0.024)"
    assert "p < 0.001" in _noise_fit(entry | {"forms": {"power": {"lack_of_fit": lof | {"p": 1e-9}}}})
    assert _noise_fit(entry | {"selected": "linear"}) == ""  # one seed: no pure error, nothing claimed
    assert _noise_fit(None) == ""


def test_a_misfit_is_traced_to_the_ceilings_own_when_the_residuals_agree_arm_by_arm():
    from visctx.readme import _misfit_rho, _noise_fit

    arms = [f"a{i}" for i in range(6)]
    bumps = [0.0, 0.03, -0.02, 0.01, -0.04, 0.02]

    def entry(level, scale, names=arms):
        fitted = [level] * 6
        observed = [level * (1 + scale * b) for b in bumps]
        return {"selected": "power", "forms": {"power": {"arms": names, "observed": observed, "fitted": fitted,
                                                         "lack_of_fit": {"p": 0.5, "r2_attainable": 0.9}}}}

    trained, ceiling = entry(1.4, 0.5), entry(1.1, 2.0)
    assert _misfit_rho(trained, ceiling) == pytest.approx(1.0)  # the trained arms miss where the known answer does
    flipped = entry(1.1, -1.0)
    assert _misfit_rho(trained, flipped) == pytest.approx(-1.0)
    assert _misfit_rho(trained, entry(1.1, 2.0, arms[::-1])) is None  # other arms: nothing to compare
    assert "Spearman rho 1.00" in _noise_fit(trained, ceiling) and "Spearman" not in _noise_fit(trained)


def test_the_ceilings_optimum_is_measured_against_the_trained_one_in_the_trained_loss():
    import pandas as pd
    from visctx.readme import _optimum_arms

    rows = [{"arm": arm, "T": T, "M": M, "token_op": "pool", "frame_op": "sample", "pooled_from": 0, "seed": s,
             "loss": loss + 0.01 * s + (0.02 * s if arm == "T17-M9-pool" else 0)}
            for s in range(3) for arm, T, M, loss in (("T32-M4-pool", 32, 4, 1.30), ("T17-M9-pool", 17, 9, 1.35))]
    reps = pd.DataFrame(rows)
    got = _optimum_arms(reps, {"T": 32, "M": 4}, {"brute_force": {"T": 17, "M": 9}})
    assert "T17-M9-pool differs in loss from the trained optimum's arm T32-M4-pool by +0.070 [" in got
    assert _optimum_arms(reps, {"T": 32, "M": 4}, {"brute_force": {"T": 32, "M": 4}}) == ""  # the same arm
    assert _optimum_arms(reps, {"T": 32, "M": 4}, {"brute_force": {"T": 10, "M": 16}}) == ""  # not trained


def test_an_effects_sd_is_shown_with_how_large_its_few_seeds_allow_it_to_be():
    from visctx.readme import _pct

    assert _pct(-0.033, 0.003, 3) == ("-3.3 % (SD 0.3 % across 3 seeds, up to 1.9 % at 95 %; "
                                      "the effect is 11.0x the SD, 1.8x that bound)")
    assert _pct(-0.033, 0.003, 10).endswith("across 10 seeds, up to 0.5 % at 95 %; the effect is 11.0x the SD, 6.0x that bound)")
    assert _pct(-0.033, 0.003) == "-3.3 % (SD 0.3 % across seeds)" and _pct(-0.033) == "-3.3 %"


def test_the_noise_is_split_into_the_bases_share_and_the_arms_own():
    from visctx.readme import _noise_split

    rows = [{"arm": a, "seed": s, "loss": 1.0 + 0.1 * s + 0.01 * ((s + i) % 2)}
            for i, a in enumerate("abcd") for s in range(4)]
    text = _noise_split(pd.DataFrame(rows))  # every seed shifts all arms by 0.1 s; each arm wobbles by 0.01
    share = int(text.removeprefix(" Of an arm's across-seed variance, ").split(" %")[0])
    assert share >= 99 and "is shared by every arm of a seed" in text and "4 arms x 4 seeds" in text
    own = [{**r, "loss": 1.0 + 0.1 * ((r["seed"] + "abcd".index(r["arm"])) % 2)} for r in rows]  # seeds' means equal
    assert _noise_split(pd.DataFrame(own)).startswith(" Of an arm's across-seed variance, 0 % is shared")
    assert _noise_split(pd.DataFrame(rows).query("seed == 0")) == ""


def test_the_pairs_that_beat_the_ceiling_are_named_not_only_counted():
    from visctx.readme import _ceiling_check

    ck = pd.DataFrame({"arm": ["A", "B", "C"], "task": ["detail", "needle", "order"],
                       "trained": [0.994, 0.50, 0.30], "ceiling": [0.990, 0.60, 0.20],
                       "readable": [False, True, True], "within": [True, True, True],
                       "excess": [-0.006, -0.2, -0.1]})
    text = _ceiling_check(ck)
    assert "1 beat the ceiling" in text and "(A detail, 0.994 trained vs 0.990)" in text
    assert "closest" not in text and "C order" not in text
    # none beyond the noise: the one that comes closest, as such
    text = _ceiling_check(ck.assign(readable=True))
    assert "0 beat the ceiling" in text and "(closest: C order, 0.300 trained vs 0.200)" in text
