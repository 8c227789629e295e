"""Across-seed statistics: every number the study reports is a mean over training replicates with
its interval, because one training run is one draw (two machines once differed by 7 % per arm).

The interval over R seeds is Student's t: mean +- t(R-1) * sd / sqrt(R), wide on purpose with
three seeds (t = 4.30). Pure numpy/pandas: the tables, figures, metrics and the NIAH map use it.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

LEVEL = 0.95


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def t_half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """Half the t interval of a mean of ``n`` replicates with sample SD ``sd``."""
    return t_quantile(n - 1, level) * sd / math.sqrt(n)


def sd_upper(sd: float, n: int, level: float = LEVEL) -> float:
    """The upper end of the two-sided chi-square interval of an SD estimated from ``n`` replicates:
    how large the noise may be. Three seeds estimate an SD on 2 degrees of freedom, so the true one
    may be 6.3x the estimate at 95 %: an "effect is 10x its SD" read from three seeds is itself
    one noisy draw (five seeds once gave 2.6x where three gave 11x)."""
    from scipy.stats import chi2

    return sd * math.sqrt((n - 1) / chi2.ppf((1 - level) / 2, n - 1))


def seed_interval(values: Iterable[float], level: float = LEVEL) -> dict[str, float | int | None]:
    """mean, sd (ddof 1), the t interval of the mean (None with one seed) and n over replicates."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"mean": None, "sd": None, "lo": None, "hi": None, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "sd": None, "lo": None, "hi": None, "n": 1}
    sd = float(v.std(ddof=1))
    half = t_half_width(sd, n, level)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": n}


def summarise(df: pd.DataFrame, by: Sequence[str], columns: Sequence[str], level: float = LEVEL) -> pd.DataFrame:
    """One row per ``by`` group: ``<col>`` (the across-seed mean), ``<col>_sd``, ``<col>_lo``,
    ``<col>_hi`` for each of ``columns``, and ``seeds`` (how many replicates)."""
    rows = []
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for c in columns:
            s = seed_interval(g[c], level) if c in g else seed_interval([])
            row |= {c: s["mean"], f"{c}_sd": s["sd"], f"{c}_lo": s["lo"], f"{c}_hi": s["hi"]}
        row["seeds"] = int(g["seed"].nunique()) if "seed" in g else 1
        rows.append(row)
    return pd.DataFrame(rows)


def paired_effect(df: pd.DataFrame, a: str, b: str, value: str = "loss", level: float = LEVEL,
                  relative: bool = False) -> dict[str, float | int | None]:
    """Effect ``value[b] - value[a]`` (``relative``: divided by ``value[a]``) per seed, paired within
    a seed (the arms of one replicate share its base), then :func:`seed_interval` over seeds.
    ``df`` has columns ``arm``, ``seed`` and ``value``."""
    wide = df.pivot_table(index="seed", columns="arm", values=value)
    if a not in wide or b not in wide:
        raise KeyError(f"paired effect needs arms {a} and {b}; have {sorted(wide.columns)}")
    d = wide[b] - wide[a]
    if relative:
        d = d / wide[a]
    out = seed_interval(d.to_numpy(), level)
    out["per_seed"] = [float(x) for x in d.to_numpy()]
    return out


def variance_components(df: pd.DataFrame, value: str = "loss") -> dict[str, float | int]:
    """Split the across-seed variance of an arm's ``value`` into the part every arm of a seed shares
    (its base: one replicate's base is better or worse for all arms alike) and the part that is the
    arm's own in that seed (its fine-tune, and how the base suits that arm). Effects are paired
    within a seed, so only the arm's own part reaches them; the shared part widens the arms'
    unpaired intervals. The two-way ANOVA of arms x seeds without replication, by its expected mean
    squares (MS_seed = var_own + arms * var_seed): ``seed_sd`` is 0 when MS_seed <= MS_own. Arms not
    trained in every seed are left out; ``df`` has columns ``arm``, ``seed`` and ``value``."""
    wide = df.pivot_table(index="arm", columns="seed", values=value).dropna()
    r, c = wide.shape
    if r < 2 or c < 2:
        raise ValueError(f"variance components need >= 2 arms in >= 2 seeds each; have {r} arms x {c} seeds")
    y = wide.to_numpy(float)
    grand, arm_m, seed_m = y.mean(), y.mean(axis=1, keepdims=True), y.mean(axis=0, keepdims=True)
    ms_seed = r * float(((seed_m - grand) ** 2).sum()) / (c - 1)
    ms_own = float(((y - arm_m - seed_m + grand) ** 2).sum()) / ((r - 1) * (c - 1))
    var_seed = max(0.0, (ms_seed - ms_own) / r)
    return {"arms": r, "seeds": c, "ms_seed": ms_seed, "ms_own": ms_own, "seed_sd": math.sqrt(var_seed),
            "own_sd": math.sqrt(ms_own), "seed_share": var_seed / (var_seed + ms_own) if var_seed + ms_own else 0.0}


def compare_runs(old: str, new: str, benchmark: str = "synthetic", level: float = LEVEL) -> dict:
    """Does an earlier run's arms.csv (one value per arm, or means over its seeds) fall inside this
    run's across-seed intervals? The arms outside, per measure: what a replication should report.

    Args:
        old: the earlier run's arms.csv (e.g. ``git show <commit>:results/tables/arms.csv``).
        new: this run's arms.csv, with a row per (arm, seed).
        benchmark: which benchmark's rows to compare.
        level: the interval's level.
    """
    o = pd.read_csv(old)
    o = o[o["benchmark"] == benchmark].groupby("arm")[["loss", "accuracy"]].mean()
    n = pd.read_csv(new)
    s = summarise(n[n["benchmark"] == benchmark], ["arm"], ["loss", "accuracy"], level).set_index("arm")
    common = sorted(set(o.index) & set(s.index))
    out: dict = {"arms": len(common), "only_old": sorted(set(o.index) - set(s.index)),
                 "only_new": sorted(set(s.index) - set(o.index))}
    for m in ("loss", "accuracy"):
        outside = [a for a in common if not s.loc[a, f"{m}_lo"] <= o.loc[a, m] <= s.loc[a, f"{m}_hi"]]
        out[f"{m}_outside"] = {a: {"old": float(o.loc[a, m]), "lo": float(s.loc[a, f"{m}_lo"]),
                                   "hi": float(s.loc[a, f"{m}_hi"])} for a in outside}
    return out
