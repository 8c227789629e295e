"""The paper's findings (paper-notes §3) evaluated on this run: holds / fails / inconclusive, with
the numbers that decide, judged against the replicates' noise -- and, beside it, on the information
ceiling (what the arms' contexts allow, no training noise): a finding that holds on the ceiling but
not on the trained arms is the tiny model's shortfall, one that fails on both is this corpus's
answer.

A comparison "beyond the noise" is a paired difference (within each seed: the arms of one replicate
share its base) whose across-seed interval excludes 0 (:func:`visctx.stats.paired_effect`). The
findings are reported as they come out; nothing is tuned to make them hold.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from visctx.stats import paired_effect

HOLDS, FAILS, UNCLEAR = "holds", "fails", "inconclusive"


def _diff(reps: pd.DataFrame, a: str, b: str, value: str = "loss") -> dict[str, Any]:
    """value(b) - value(a), paired within seeds, with its interval (lo/hi None with one seed)."""
    return paired_effect(reps, a, b, value)


def _sign(e: dict[str, Any]) -> int:
    """+1 / -1 when the interval excludes 0 on that side, 0 when it does not (or there is none)."""
    if e["lo"] is None:
        return 0
    return 1 if e["lo"] > 0 else -1 if e["hi"] < 0 else 0


def _ceiling_reps(inp) -> pd.DataFrame | None:
    """The ceiling as a one-'seed' replicate table (exact: no noise, so any difference decides)."""
    r = inp.replicates
    if "ceiling_loss" not in r:
        return None
    c = r[r["seed"] == r["seed"].min()][["arm", "ceiling_loss", "ceiling_accuracy"]]
    return c.rename(columns={"ceiling_loss": "loss", "ceiling_accuracy": "accuracy"}).assign(seed=0)


def _exact(reps: pd.DataFrame, a: str, b: str, value: str = "loss") -> float:
    v = reps.set_index("arm")[value]
    return float(v[b] - v[a])


def pooling_below_sampling(inp, reps: pd.DataFrame, exact: bool = False) -> tuple[str, str]:
    d = inp.study("tokens")
    pool = d[d["method"] == "pool"].set_index("M")["arm"]
    samp = d[d["method"] == "sample"].set_index("M")["arm"]
    Ms = sorted(set(pool.index) & set(samp.index))
    pairs = [(m, samp[m], pool[m]) for m in Ms if samp[m] != pool[m]]
    if not pairs:
        return UNCLEAR, "no M with both methods"
    if exact:
        signs = [(-1 if _exact(reps, s, p) < 0 else 1 if _exact(reps, s, p) > 0 else 0) for _, s, p in pairs]
    else:
        signs = [_sign(_diff(reps, s, p)) for _, s, p in pairs]
    below, above = signs.count(-1), signs.count(1)
    text = f"pool - sample < 0 at {below} of {len(pairs)} M, > 0 at {above}" + ("" if exact else " (beyond the noise)")
    verdict = HOLDS if below > len(pairs) / 2 and above == 0 else FAILS if above > len(pairs) / 2 else UNCLEAR
    return verdict, text


def sampling_accuracy_peaks(inp, reps: pd.DataFrame, exact: bool = False) -> tuple[str, str]:
    d = inp.study("tokens")
    s = d[d["method"] == "sample"].drop_duplicates("arm").sort_values("M")
    if len(s) < 3:
        return UNCLEAR, "fewer than 3 sampling arms"
    acc = reps.groupby("arm")["accuracy"].mean().loc[s["arm"]]
    peak, top = acc.idxmax(), s["arm"].iloc[-1]
    m_peak = int(s.set_index("arm").loc[peak, "M"])
    if peak == top:
        return FAILS, f"accuracy is highest at the largest M ({int(s['M'].iloc[-1])}): no interior peak"
    drop = _exact(reps, peak, top, "accuracy") if exact else None
    loss_falls = _exact(reps, peak, top, "loss") if exact else None
    if not exact:
        e, lf = _diff(reps, peak, top, "accuracy"), _diff(reps, peak, top, "loss")
        drop, loss_falls = e["mean"], lf["mean"]
        if _sign(e) == -1 and _sign(lf) <= 0:
            return HOLDS, (f"accuracy peaks at M = {m_peak} and is {-drop:.3f} lower at the largest M beyond the "
                           f"noise, while the loss there is {-loss_falls:+.3f} lower")
        return UNCLEAR, (f"accuracy is highest at M = {m_peak}, but its drop to the largest M ({-drop:.3f}) is within "
                         f"the noise")
    verdict = HOLDS if drop < 0 and loss_falls <= 0 else UNCLEAR
    return verdict, f"accuracy peaks at M = {m_peak} ({-drop:.3f} above the largest M); loss change {loss_falls:+.3f}"


def frames_beat_tokens(inp, reps: pd.DataFrame, exact: bool = False) -> tuple[str, str]:
    d = inp.study("window").drop_duplicates("arm")
    if len(d) < 2:
        return UNCLEAR, "fewer than 2 window arms"
    most_t = d.sort_values(["T", "M"]).iloc[-1]
    most_m = d.sort_values(["M", "T"]).iloc[-1]
    a, b = most_m["arm"], most_t["arm"]
    if exact:
        diff = _exact(reps, a, b)
        verdict = HOLDS if diff < 0 else FAILS if diff > 0 else UNCLEAR
        return verdict, f"loss({b}) - loss({a}) = {diff:+.3f}"
    e = _diff(reps, a, b)
    sign = _sign(e)
    verdict = HOLDS if sign == -1 else FAILS if sign == 1 else UNCLEAR
    return verdict, (f"loss({b}) - loss({a}) = {e['mean']:+.3f}"
                     + (f" [{e['lo']:+.3f}, {e['hi']:+.3f}]" if e["lo"] is not None else "") + " at equal window")


def frame_laws(fits: dict[str, Any]) -> tuple[str, str]:
    """The paper: a power law for frame sampling, a linear one for frame compression."""
    rows = {(r["study"], r["method"], r["form"]): r for r in fits.get("model_selection") or []}
    want = {"sample": ("power", "power_offset"), "pool": ("linear",)}
    picked, near = {}, {}
    for method, forms in want.items():
        sel = [f for (st, m, f), r in rows.items() if st == "frames" and m == method and r["selected"]]
        picked[method] = sel[0] if sel else None
        near[method] = any(rows.get(("frames", method, f), {}).get("within_1se") for f in forms)
    if not all(picked.values()):
        return UNCLEAR, "a frame-study fit is missing"
    text = f"selected: sampling {picked['sample']}, compression {picked['pool']}"
    if picked["sample"] in want["sample"] and picked["pool"] in want["pool"]:
        return HOLDS, text
    if not (near["sample"] and near["pool"]):
        return FAILS, text + " (the paper's form is not within one SE of the best)"
    return UNCLEAR, text + " (the paper's form is within one SE of the best)"


def optimum_near_best_window(fits: dict[str, Any]) -> tuple[str, str]:
    p, o = fits.get("prediction"), fits.get("optimum")
    if not p or not o:
        return UNCLEAR, "no joint fit or no window study"
    best = next(r for r in p["arms"] if r["arm"] == p["best_observed"])
    b = o.get("bootstrap") or {}
    inside = bool(b) and all(b[k]["lo"] <= best[k] <= b[k]["hi"] for k in ("T", "M"))
    text = (f"best window arm {best['arm']}; predicted best {p['best_predicted']}; optimum ({o['brute_force']['T']}, "
            f"{o['brute_force']['M']})" + (f", interval T {b['T']['lo']:.0f}-{b['T']['hi']:.0f}, M {b['M']['lo']:.0f}-"
                                           f"{b['M']['hi']:.0f}" if b else ""))
    # an optimum of a law with a parameter at its bound, or beyond the trained T and M, is the
    # fitter's edge, not a measurement: it can neither confirm the finding nor refute it
    caveats = ([f"{', '.join(o['at_bound'])} at a bound"] if o.get("at_bound") else []) + \
        (["outside the trained T, M"] if o.get("extrapolated") else [])
    if caveats:
        return UNCLEAR, f"{text}; the optimum is {' and '.join(caveats)}"
    if p["best_match"] and inside:
        return HOLDS, text
    if not p["best_match"] and not inside:
        return FAILS, text
    return UNCLEAR, text


FINDINGS = [
    ("pooling below sampling at equal M (token study)", "pooling"),
    ("token sampling's accuracy peaks while its loss keeps falling", "peak"),
    ("more frames help more than more tokens at equal window", "frames"),
    ("power law for frame sampling, linear for frame compression", "laws"),
    ("the joint optimum lands near the best window arm", "optimum"),
]


def findings_table(inp) -> pd.DataFrame:
    """One row per finding: the verdict on the trained replicates and the numbers that decide, and
    the verdict on the information ceiling."""
    reps, ceil = inp.replicates, _ceiling_reps(inp)
    rows = []
    for text, key in FINDINGS:
        try:
            if key == "pooling":
                v, why = pooling_below_sampling(inp, reps)
                cv = pooling_below_sampling(inp, ceil, exact=True) if ceil is not None else None
            elif key == "peak":
                v, why = sampling_accuracy_peaks(inp, reps)
                cv = sampling_accuracy_peaks(inp, ceil, exact=True) if ceil is not None else None
            elif key == "frames":
                v, why = frames_beat_tokens(inp, reps)
                cv = frames_beat_tokens(inp, ceil, exact=True) if ceil is not None else None
            elif key == "laws":
                v, why = frame_laws(inp.fits)
                cv = frame_laws(inp.ceiling) if inp.ceiling else None
            else:
                v, why = optimum_near_best_window(inp.fits)
                cv = optimum_near_best_window(inp.ceiling) if inp.ceiling else None
        except (KeyError, ValueError) as e:  # a study this design lacks
            v, why, cv = UNCLEAR, f"cannot be evaluated here ({e})", None
        rows.append({"finding": text, "verdict": v, "evidence": why,
                     "ceiling": cv[0] if cv else "n/a", "ceiling_evidence": cv[1] if cv else ""})
    return pd.DataFrame(rows)
