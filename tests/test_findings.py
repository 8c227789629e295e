"""The findings' verdicts on hand-built fits: a verdict says holds only when the numbers decide it."""

from visctx.findings import FAILS, HOLDS, UNCLEAR, optimum_near_best_window


def _fits(best_predicted="T32-M4-pool", T=32, M=4, lo=(16, 1), hi=(32, 9), **optimum):
    arms = [{"arm": "T32-M4-pool", "T": 32, "M": 4}, {"arm": "T3-M49-pool", "T": 3, "M": 49}]
    return {"prediction": {"arms": arms, "best_observed": "T32-M4-pool", "best_predicted": best_predicted,
                           "best_match": best_predicted == "T32-M4-pool"},
            "optimum": {"brute_force": {"T": T, "M": M}, "at_bound": [], "extrapolated": False,
                        "bootstrap": {"T": {"lo": lo[0], "hi": hi[0]}, "M": {"lo": lo[1], "hi": hi[1]}}} | optimum}


def test_the_optimum_near_the_best_window_arm_holds_fails_or_is_inconclusive():
    assert optimum_near_best_window(_fits())[0] == HOLDS
    assert optimum_near_best_window(_fits("T3-M49-pool", 3, 49, (1, 25), (6, 81)))[0] == FAILS
    assert optimum_near_best_window(_fits("T3-M49-pool"))[0] == UNCLEAR  # the interval holds it, the ranking not
    assert optimum_near_best_window({"prediction": None})[0] == UNCLEAR


def test_an_optimum_at_a_bound_or_beyond_the_trained_range_decides_nothing():
    """What the default study's degenerate joint law gave: beta at its bound, the optimum at the
    window's edge -- inconclusive, and the text says why, even with the best arm matched."""
    verdict, why = optimum_near_best_window(_fits(at_bound=["beta"]))
    assert verdict == UNCLEAR and "beta at a bound" in why
    verdict, why = optimum_near_best_window(_fits(extrapolated=True))
    assert verdict == UNCLEAR and "outside the trained T, M" in why
