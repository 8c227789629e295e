"""Tables, figures and metrics of the study from ``arms.csv``, ``design.csv`` and ``fits.json``.

The tables mirror the paper (Du et al. 2024): Table 1 (token study), Table 2 (frame study), Table 3
(joint grid with the fitted law), Table 4 (fixed window, predicted by the law fitted without those
arms), plus every fit with its bootstrap intervals and the model-selection table. Each table is
written as Markdown, CSV and LaTeX under fixed names, and every declared file is always written (a
study absent from the design gives a one-row "note" table or a placeholder figure), so a workflow
can name all outputs up front from :data:`TABLES`, :data:`FIGURES` and :func:`output_paths`.

Figures use matplotlib's object API with the Agg canvas (no pyplot state, no backend switch).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from visctx.config import WINDOW_METHODS
from visctx.fit import LAWS, STUDY_X, FitError, joint_loss, load_arms, load_design, load_fits, load_replicates
from visctx.stats import paired_effect, seed_interval, summarise

TABLES = ["table1_tokens", "table2_frames", "table3_joint", "table4_window", "table5_fits", "model_selection",
          "benchmarks", "findings", "table6_methods", "learned_by_task"]
FIGURES = ["tokens_loss", "frames_loss", "joint_contour", "accuracy_by_task", "ceiling_gap", "methods_window"]
TABLE_FORMATS = ("md", "csv", "tex")
FIGURE_FORMATS = ("png", "pdf")
DPI = 120
METHOD_ORDER = WINDOW_METHODS
METHOD_COLORS = {"sample": "#d95f02", "pool": "#1b9e77", "mask": "#7570b3", "tube": "#e7298a",
                 "masktrain": "#66a61e", "tubetrain": "#e6ab02", "summary": "#a6761d"}


def output_paths(out_dir: str | Path) -> dict[str, list[Path]]:
    """Every file :func:`write_tables` and :func:`write_figures` write into ``out_dir``."""
    out = Path(out_dir)
    return {"tables": [out / f"{t}.{ext}" for t in TABLES for ext in TABLE_FORMATS],
            "figures": [out / f"{f}.{ext}" for f in FIGURES for ext in FIGURE_FORMATS]}


# ---------------------------------------------------------------------------------------------
# Inputs


class _Inputs:
    """The inputs, read once; arms restricted to the benchmark the fits were made on. ``arms``: one
    row per arm (means over the training seeds, :func:`visctx.fit.load_arms`); ``replicates``: one
    row per (arm, seed); ``summary``: per arm the across-seed mean and interval of every measure."""

    def __init__(self, arms_csv: str | Path, design_csv: str | Path, fits_json: str | Path,
                 scores_csv: str | Path | None = None, ceiling_fits: str | Path | None = None) -> None:
        self.fits = load_fits(fits_json)
        self.ceiling = load_fits(ceiling_fits) if ceiling_fits else None
        self.arms_csv = arms_csv
        self.scores_csv = scores_csv
        self.benchmark = self.fits.get("benchmark", "synthetic")
        self.replicates = load_replicates(arms_csv, self.benchmark)
        self.arms = load_arms(arms_csv, self.benchmark)
        self.design = load_design(design_csv)
        self.tasks = [c for c in self.arms.columns if c.startswith("acc_") and self.arms[c].notna().any()]
        self.seeds = sorted(self.replicates["seed"].unique().tolist())
        extra = [c for c in ("ceiling_loss", "ceiling_accuracy", "gap") if c in self.replicates]
        self.summary = summarise(self.replicates, ["arm"], ["loss", "accuracy", *self.tasks, *extra]).set_index("arm")

    def study(self, study: str) -> pd.DataFrame:
        """Design rows of one study joined with the arms' measurements (means over seeds with
        ``_sd``/``_lo``/``_hi``; missing arms: an error)."""
        d = self.design[self.design["study"] == study]
        missing = sorted(set(d["arm"]) - set(self.arms.index))
        if missing:
            raise FitError(f"design study {study!r}: arm(s) {missing} not in arms.csv for benchmark "
                           f"{self.benchmark!r}")
        cols = [c for c in ("pooled_from", "tokens", "n") if c in self.arms.columns]
        out = d.merge(self.arms[cols], left_on="arm", right_index=True, how="left")
        return out.merge(self.summary, left_on="arm", right_index=True, how="left")

    def fit_entry(self, study: str, method: str | None = None) -> dict[str, Any] | None:
        f = self.fits.get("fits", {}).get(study)
        if f is None:
            return None
        return f.get(method) if method is not None else f

    def fitted_value(self, study: str, method: str | None, arm: str, form: str | None = None) -> float | None:
        e = self.fit_entry(study, method)
        if not e:
            return None
        form = form or e.get("selected") or next(iter(e.get("forms", {})), None)
        f = e.get("forms", {}).get(form)
        if not f or arm not in f["arms"]:
            return None
        return f["fitted"][f["arms"].index(arm)]


def _with_ci(row: dict, r: pd.Series | dict, name: str) -> dict:
    """``name`` (the across-seed mean) and its interval ``name_lo``/``name_hi`` from ``r``."""
    return row | {name: r.get(name), f"{name}_lo": r.get(f"{name}_lo"), f"{name}_hi": r.get(f"{name}_hi")}


def _note(text: str) -> pd.DataFrame:
    return pd.DataFrame({"note": [text]})


def _methods(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["method"]))
    return [m for m in METHOD_ORDER if m in present] + [m for m in present if m not in METHOD_ORDER]


# ---------------------------------------------------------------------------------------------
# Tables


def _study_table(inp: _Inputs, study: str, x: str) -> pd.DataFrame:
    d = inp.study(study)
    if d.empty:
        return _note(f"no {study} study in design.csv")
    rows = []
    for method in _methods(d):
        sub = d[d["method"] == method].drop_duplicates("arm").sort_values(x)
        e = inp.fit_entry(study, method) or {}
        for _, r in sub.iterrows():
            row = {"method": method, "T": int(r["T"]), "M": int(r["M"])}
            if "pooled_from" in r:
                row["pooled_from"] = int(r["pooled_from"])
            row["arm"] = r["arm"]
            row = _with_ci(row, r, "loss")
            row |= {"fit": inp.fitted_value(study, method, r["arm"]), "law": e.get("selected")}
            if "ceiling_loss" in r:  # what the arm's context allows, and how far the trained arm is from it
                row["ceiling"] = r["ceiling_loss"]
                row = _with_ci(row, r, "gap")
            row = _with_ci(row, r, "accuracy")
            if "ceiling_accuracy" in r:
                row["ceiling_accuracy"] = r["ceiling_accuracy"]
            for t in inp.tasks:
                row = _with_ci(row, r, t)
            rows.append(row | {"seeds": int(r["seeds"])})
    return pd.DataFrame(rows)


def table1_tokens(inp: _Inputs) -> pd.DataFrame:
    """Token study: one row per (method, M) at fixed T; loss, fitted loss (the method's selected
    law), accuracy, per-task accuracy."""
    return _study_table(inp, "tokens", "M")


def table2_frames(inp: _Inputs) -> pd.DataFrame:
    """Frame study: one row per (method, T) at fixed M."""
    return _study_table(inp, "frames", "T")


def _draw_band(f: dict, X: np.ndarray, level: float = 0.95) -> tuple[list, list]:
    """Percentile band of a fitted law at ``X`` over its bootstrap draws (None without draws)."""
    draws = np.asarray(f.get("draws") or [], float)
    if not len(draws):
        return [None] * len(X), [None] * len(X)
    P = LAWS[f["form"]].predict_natural(draws.reshape(len(draws), -1), X)
    lo, hi = np.percentile(P, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return lo.tolist(), hi.tolist()


def table3_joint(inp: _Inputs) -> pd.DataFrame:
    """Arms of the joint fit (token pool x frame sample, window arms held out): observed (mean over
    seeds, interval) vs fitted by the selected joint law (bootstrap band)."""
    e = inp.fit_entry("joint")
    form = (e or {}).get("selected")
    if not e or form not in e.get("forms", {}):
        return _note("no joint fit (needs token-pool x frame-sample arms varying both T and M)")
    f = e["forms"][form]
    studies = inp.design.groupby("arm")["study"].agg(lambda s: ",".join(dict.fromkeys(s)))
    lo, hi = _draw_band(f, np.asarray(f["x"], float))
    rows = []
    for i, (arm, fit) in enumerate(zip(f["arms"], f["fitted"])):
        a, m = inp.arms.loc[arm], inp.summary.loc[arm]
        row = {"arm": arm, "T": int(a["T"]), "M": int(a["M"]), "tokens": int(a["T"] * a["M"]),
               "studies": studies.get(arm, "")}
        row = _with_ci(row, m, "loss")
        row |= {"fitted": fit, "fitted_lo": lo[i], "fitted_hi": hi[i], "law": form,
                "residual_%": 100 * (fit - m["loss"]) / m["loss"]}
        rows.append(_with_ci(row, m, "accuracy"))
    return pd.DataFrame(rows).sort_values(["M", "T"]).reset_index(drop=True)


def table4_window(inp: _Inputs) -> pd.DataFrame:
    """Fixed-window arms: observed loss (mean over seeds, interval) vs predicted (the selected joint
    law fitted without them, bootstrap band), the best observed and predicted arms, their rank
    correlation, and the predicted optimum at the analysis budget."""
    p = inp.fits.get("prediction")
    d = inp.study("window")
    if d.empty or not p:
        why = "no window study in design.csv" if d.empty else "no joint fit to predict the window arms"
        return _note(why)
    opt = inp.fits.get("optimum") or {}
    bf = opt.get("brute_force") or {}
    rows = []
    for r in p["arms"]:
        marks = []
        if r["arm"] == p["best_observed"]:
            marks.append("best observed")
        if r["arm"] == p["best_predicted"]:
            marks.append("predicted best")
        if bf and (r["T"], r["M"]) == (bf.get("T"), bf.get("M")):
            marks.append("predicted optimum")
        ci = r.get("predicted_ci") or [None, None]
        m = inp.summary.loc[r["arm"]]
        row = _with_ci({"arm": r["arm"], "T": r["T"], "M": r["M"], "T*M": r["tokens"]}, m, "loss")
        row |= {"predicted": r["predicted"], "predicted_lo": ci[0], "predicted_hi": ci[1],
                "error_%": 100 * r["rel_error"], "p_best": r.get("p_best")}
        rows.append(_with_ci(row, m, "accuracy") | {"mark": ", ".join(marks)})
    if bf and not any("predicted optimum" in r["mark"] for r in rows):
        b = opt.get("bootstrap") or {}
        rows.append({"arm": f"optimum (L={opt['budget']})", "T": bf["T"], "M": bf["M"], "T*M": bf["tokens"],
                     "predicted": bf["loss"], "predicted_lo": (b.get("loss") or {}).get("lo"),
                     "predicted_hi": (b.get("loss") or {}).get("hi"),
                     "mark": "predicted optimum (not trained)" + ("" if opt.get("agree") else "; closed form disagrees")
                     + ("; extrapolated" if opt.get("extrapolated") else "")})
    rho = p.get("spearman")
    rows.append({"arm": "rank check", "mark": f"best predicted = best observed: {'yes' if p['best_match'] else 'no'}; "
                                              f"Spearman rho (predicted vs observed) = "
                                              f"{'n/a' if rho is None else f'{rho:.2f}'}"})
    return pd.DataFrame(rows)


def table6_methods(inp: _Inputs) -> pd.DataFrame:
    """Every way to spend one window (the ``methods`` study: sampling, pooling, LongViViT's random
    masking, Video-XL's summary tokens) at the same (T, M): loss and accuracy (mean over seeds,
    interval), the information ceiling and the gap to it, and the loss relative to pooling at the
    same (T, M) paired within each seed (interval over seeds); per method its best (T, M)."""
    d = inp.study("methods")
    if d.empty:
        return _note("no methods study in design.csv")
    reps = inp.replicates
    rows = []
    for method in _methods(d):
        sub = d[d["method"] == method].drop_duplicates("arm").sort_values(["T", "M"])
        best = sub.loc[sub["loss"].idxmin(), "arm"] if len(sub) > 1 else None  # one (T, M): nothing to choose
        for _, r in sub.iterrows():
            ref = d[(d["method"] == "pool") & (d["T"] == r["T"]) & (d["M"] == r["M"])]["arm"]
            row = {"method": method, "T": int(r["T"]), "M": int(r["M"]), "arm": r["arm"],
                   "kept": int(r["T"] * r["M"]), "raw": int(r["tokens"]) if "tokens" in r else None}
            row = _with_ci(row, r, "loss")
            if "ceiling_loss" in r:
                row["ceiling"] = r["ceiling_loss"]
                row = _with_ci(row, r, "gap")
            if len(ref) and ref.iloc[0] != r["arm"] and len(inp.seeds) > 0:
                e = paired_effect(reps, ref.iloc[0], r["arm"], "loss", relative=True)
                row |= {"vs_pool_%": 100 * e["mean"] if e["mean"] is not None else None,
                        "vs_pool_%_lo": 100 * e["lo"] if e["lo"] is not None else None,
                        "vs_pool_%_hi": 100 * e["hi"] if e["hi"] is not None else None}
            row = _with_ci(row, r, "accuracy")
            for t in inp.tasks:
                row = _with_ci(row, r, t)
            rows.append(row | {"best": "best (T, M)" if r["arm"] == best else "", "seeds": int(r["seeds"])})
    return pd.DataFrame(rows)


def table5_fits(inp: _Inputs) -> pd.DataFrame:
    """Every fit, one row per parameter: estimate, bootstrap percentile interval (``interval``: what
    was resampled: training seeds and evaluation videos, or arms), Wald SE/interval (Gaussian, for
    reference), R^2 beside the R^2 the replicate noise allows and the lack-of-fit test's p
    (``fit.lack_of_fit``), leave-one-arm-out error, convergence, parameters at a bound."""
    rows = []
    resampled = "+".join((inp.fits.get("bootstrap") or {}).get("resampled") or ["arms"])
    for study, method, entry in _fit_entries(inp.fits):
        for form, f in entry.get("forms", {}).items():
            boot = f.get("bootstrap") or {}
            for name, value in f["params"].items():
                ci = (boot.get("ci") or {}).get(name) or [None, None]
                wald = (f.get("wald_ci") or {}).get(name) or [None, None]
                rows.append({"study": study, "method": method, "form": form, "formula": f["formula"],
                             "selected": form == entry.get("selected"), "param": name, "estimate": value,
                             "boot_lo": ci[0], "boot_hi": ci[1], "interval": resampled,
                             "se": (f.get("se") or {}).get(name), "wald_lo": wald[0], "wald_hi": wald[1],
                             "n": f["n"], "r2": f.get("r2"),
                             "r2_attainable": (f.get("lack_of_fit") or {}).get("r2_attainable"),
                             "lof_p": (f.get("lack_of_fit") or {}).get("p"),
                             "loo_mae": (f.get("loo") or {}).get("loo_mae"),
                             "converged": f["converged"], "at_bound": ",".join(f.get("at_bound") or []),
                             "n_boot_ok": boot.get("n_ok")})
    return pd.DataFrame(rows) if rows else _note("no fits")


def model_selection_table(inp: _Inputs) -> pd.DataFrame:
    """Per study and method, each law's leave-one-arm-out error (the criterion: the simplest law within
    one standard error of the best), with the Gaussian AICc at the Huber optimum for reference and
    the lack-of-fit F test against the training noise (``fit.lack_of_fit``: a small p says the law
    misses the arm means by more than the seeds' spread explains)."""
    rows = inp.fits.get("model_selection") or []
    if not rows:
        return _note("no fits")
    df = pd.DataFrame(rows).rename(columns={"aicc": "aicc_gaussian"})
    cols = ["study", "method", "form", "formula", "n", "n_params", "loo_mae", "delta", "within_1se", "criterion",
            "selected", "r2", "lof_F", "lof_p", "aicc_gaussian", "converged"]
    return df[[c for c in cols if c in df.columns]]


def benchmarks_table(inp: _Inputs) -> pd.DataFrame:
    """The paper's benchmark columns: one row per arm (studies that use it), per benchmark its
    official score (each benchmark's own rule, ``visctx.benchmarks``) as the mean over seeds with
    the bootstrap interval over seeds and (clustered) videos, and its paired difference to the
    benchmark's best arm with its interval (``collect.benchmark_scores``); and the held-out loss."""
    if inp.scores_csv is None:
        return _note("no benchmark scores (collect.benchmark_scores)")
    sc = pd.read_csv(inp.scores_csv)
    loss = summarise(pd.read_csv(inp.arms_csv), ["arm", "benchmark"], ["loss"])
    out = pd.DataFrame({"arm": list(dict.fromkeys(sc["arm"]))})
    studies = inp.design.groupby("arm")["study"].agg(lambda s: ",".join(dict.fromkeys(s)))
    out["studies"] = out["arm"].map(studies).fillna("")
    for b in dict.fromkeys(sc["benchmark"]):
        s = sc[sc["benchmark"] == b].set_index("arm")
        lb = loss[loss["benchmark"] == b].set_index("arm")
        out[b] = out["arm"].map(s["score"])
        for k in ("boot_lo", "boot_hi"):
            if k in s:
                out[f"{b}_{k.replace('boot_', '')}"] = out["arm"].map(s[k])
        if "diff" in s:
            out[f"{b}_vs_best"] = out["arm"].map(s["diff"])
            out[f"{b}_vs_best_lo"] = out["arm"].map(s["diff_lo"])
            out[f"{b}_vs_best_hi"] = out["arm"].map(s["diff_hi"])
        for k, col in (("loss", f"{b}_loss"), ("loss_lo", f"{b}_loss_lo"), ("loss_hi", f"{b}_loss_hi")):
            out[col] = out["arm"].map(lb[k])
    order = {a: i for i, a in enumerate(dict.fromkeys(inp.design["arm"]))}
    return out.sort_values("arm", key=lambda c: c.map(order).fillna(len(order))).reset_index(drop=True)


def learned_by_task(inp: _Inputs) -> pd.DataFrame:
    """Which question types the training learned at all: per task, the loss of answering from no
    evidence (the answer prior: the ceiling's loss for a question of which nothing is seen,
    :func:`visctx.ceiling.item_ceiling`), how many arms are below it beyond the noise (the upper
    bound of their across-seed interval under it), and the best arm's loss and accuracy with their
    intervals. A task no arm gets below its prior is one the flat curves of its study cannot speak
    for: the context's effect on it is unmeasured, not zero."""
    from visctx.ceiling import item_ceiling
    from visctx.synth import MAX_COUNT, TASKS

    unseen = dict.fromkeys(("needle", "count", "order0", "order1", "detail", "episodic0", "episodic1", "episodic2"),
                           np.array([], dtype=int))
    counts = [str(n) for n in range(1, MAX_COUNT + 1)]  # options the count rule can read; the others ignore them

    reps = inp.replicates
    tasks = [t for t in TASKS if f"loss_{t}" in reps and reps[f"loss_{t}"].notna().any()]
    if not tasks:
        return _note("no per-task losses in arms.csv")
    summary = summarise(reps, ["arm"], [c for t in tasks for c in (f"loss_{t}", f"acc_{t}")]).set_index("arm")
    rows = []
    for t in tasks:
        prior = item_ceiling(t, {}, unseen, counts, 0)[0]
        loss, hi = summary[f"loss_{t}"], summary[f"loss_{t}_hi"]
        best = loss.idxmin()
        b = summary.loc[best]
        row = {"task": t, "prior": prior, "arms": len(summary), "below_prior": int((hi < prior).sum()), "best_arm": best}
        row = _with_ci(row, {"loss": b[f"loss_{t}"], "loss_lo": b[f"loss_{t}_lo"], "loss_hi": b[f"loss_{t}_hi"]}, "loss")
        row = _with_ci(row, {"accuracy": b[f"acc_{t}"], "accuracy_lo": b[f"acc_{t}_lo"],
                             "accuracy_hi": b[f"acc_{t}_hi"]}, "accuracy")
        rows.append(row | {"seeds": int(b["seeds"])})
    return pd.DataFrame(rows)


def _fit_entries(fits: dict[str, Any]):
    for study in ("tokens", "frames"):
        for method, entry in (fits.get("fits", {}).get(study) or {}).items():
            yield study, method, entry
    if fits.get("fits", {}).get("joint"):
        yield "joint", "pool", fits["fits"]["joint"]


def build_tables(arms_csv: str | Path, design_csv: str | Path, fits_json: str | Path,
                 scores_csv: str | Path | None = None, ceiling_fits: str | Path | None = None) -> dict[str, pd.DataFrame]:
    from visctx.findings import findings_table

    inp = _Inputs(arms_csv, design_csv, fits_json, scores_csv, ceiling_fits)
    builders = {"table1_tokens": table1_tokens, "table2_frames": table2_frames, "table3_joint": table3_joint,
                "table4_window": table4_window, "table5_fits": table5_fits, "model_selection": model_selection_table,
                "benchmarks": benchmarks_table, "findings": findings_table, "table6_methods": table6_methods,
                "learned_by_task": learned_by_task}
    assert list(builders) == TABLES
    return {name: fn(inp) for name, fn in builders.items()}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def _with_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """For reading: every ``x`` that has ``x_lo``/``x_hi`` becomes one cell ``x [lo, hi]``."""
    out = df.copy()
    for c in list(df.columns):
        lo, hi = f"{c}_lo", f"{c}_hi"
        if lo in df.columns and hi in df.columns:
            out[c] = [_fmt(v) if pd.isna(a) or pd.isna(b) else f"{_fmt(v)} [{_fmt(a)}, {_fmt(b)}]"
                      for v, a, b in zip(df[c], df[lo], df[hi])]
            out = out.drop(columns=[lo, hi])
    return out


def _latex(df: pd.DataFrame) -> str:
    return df.to_latex(index=False, float_format="%.4g", escape=True, na_rep="--")


def write_tables(arms_csv: str | Path, design_csv: str | Path, fits_json: str | Path,
                 out_dir: str | Path, scores_csv: str | None = None, ceiling_fits: str | None = None) -> list[Path]:
    """Write every table in :data:`TABLES` as ``.md``, ``.csv`` and ``.tex`` into ``out_dir``: the CSV
    with every interval bound as its own column, Markdown and LaTeX as ``value [lo, hi]`` cells.

    Args:
        arms_csv: ``collect``'s tidy table (one row per arm x seed x benchmark).
        design_csv: ``collect``'s design table.
        fits_json: the fits (``visctx fits``).
        out_dir: where the tables go.
        scores_csv: ``benchmark-scores``' table (the benchmark table's scores and intervals).
        ceiling_fits: the fits of the information ceiling (``visctx fits`` on ``visctx ceiling``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in build_tables(arms_csv, design_csv, fits_json, scores_csv, ceiling_fits).items():
        shown = _with_intervals(df)
        p = out / f"{name}.md"
        p.write_text(shown.to_markdown(index=False, floatfmt=".4g", missingval="–") + "\n")
        paths.append(p)
        p = out / f"{name}.csv"
        df.to_csv(p, index=False, float_format="%.6g")
        paths.append(p)
        p = out / f"{name}.tex"
        p.write_text(_latex(shown))
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------
# Figures


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (6.0, 4.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _placeholder(path: Path, text: str) -> Path:
    fig, ax = _figure()
    ax[0, 0].axis("off")
    ax[0, 0].text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    _save(fig, path)
    return path


def _fmt_ci(v: float | None, ci: list | None) -> str:
    if v is None:
        return "?"
    if ci and ci[0] is not None:
        return f"{v:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"
    return f"{v:.3g}"


def _loss_figure(inp: _Inputs, study: str, x: str, path: Path) -> Path:
    import seaborn as sns

    d = inp.study(study)
    if d.empty:
        return _placeholder(path, f"no {study} study in design.csv")
    reps = inp.replicates.set_index("arm")
    with sns.axes_style("whitegrid"):
        fig, axes = _figure()
        ax = axes[0, 0]
        for method in _methods(d):
            sub = d[d["method"] == method].drop_duplicates("arm").sort_values(x)
            color = METHOD_COLORS.get(method)
            e = inp.fit_entry(study, method) or {}
            form = e.get("selected")
            f = (e.get("forms") or {}).get(form) if form else None
            label = f"{method}"
            if f:
                c = f.get("curve") or {}
                boot = (f.get("bootstrap") or {}).get("ci") or {}
                if "alpha" in f["params"]:
                    label += f": {_law_text(f['form'])}, α = {_fmt_ci(f['params']['alpha'], boot.get('alpha'))}"
                else:
                    label += f": {_law_text(f['form'])}, b = {_fmt_ci(f['params']['b'], boot.get('b'))}"
                if not f["converged"]:
                    label += " (NOT converged)"
                if c:
                    ax.plot(c["x"], c["fit"], color=color, lw=1.6)
                    if "lo" in c:
                        ax.fill_between(c["x"], c["lo"], c["hi"], color=color, alpha=0.2, lw=0)
            each = reps.loc[sub["arm"]]  # every replicate, faint; the mean over seeds with its interval
            ax.scatter(each[x], each["loss"], color=color, s=10, alpha=0.35, lw=0, zorder=2)
            err = None
            if sub["loss_lo"].notna().all():
                err = [sub["loss"] - sub["loss_lo"], sub["loss_hi"] - sub["loss"]]
            ax.errorbar(sub[x], sub["loss"], yerr=err, fmt="o", color=color, ms=5, mec="white", mew=0.5,
                        capsize=2, zorder=3, label=label)
        ax.set_xscale("log")
        lo, hi = float(reps.loc[d["arm"], "loss"].min()), float(reps.loc[d["arm"], "loss"].max())
        pad = 0.15 * (hi - lo) if hi > lo else 0.05 * abs(hi)
        ax.set_ylim(lo - pad, hi + pad)  # bootstrap bands can explode between sparse points; keep data in view
        fixed = "T" if x == "M" else "M"
        ax.set_xlabel(f"{x} ({'tokens per frame' if x == 'M' else 'frames'}; {fixed} = {int(d[fixed].iloc[0])})")
        ax.set_ylabel(f"held-out loss ({inp.benchmark})")
        n = len(inp.seeds)
        ax.set_title(f"{study.capitalize()} study: loss against {x}\n"
                     f"{n} seeds (faint), their mean ± 95% CI; selected law with its bootstrap band", fontsize=9)
        ax.legend(fontsize=8)
        _save(fig, path)
    return path


_LAW_TEXT = {"power_offset": r"$E + A\,x^{-\alpha}$", "power": r"$A\,x^{-\alpha}$", "linear": r"$a + b\,x$",
             "joint": r"$E + A/T^{\alpha} + B/M^{\beta}$", "joint_nooffset": r"$A/T^{\alpha} + B/M^{\beta}$"}


def _law_text(form: str) -> str:
    """The law as typeset mathematics (matplotlib mathtext), for legends and titles."""
    return _LAW_TEXT.get(form, form)


def _save(fig, path: Path) -> None:
    """PNG for the README and report, PDF (vector) beside it for papers. Metadata without dates,
    so a figure that did not change is the same file."""
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    fig.savefig(path.with_suffix(".pdf"), metadata={"CreationDate": None, "ModDate": None, "Producer": None,
                                                    "Creator": None})


def _joint_figure(inp: _Inputs, path: Path) -> Path:
    import seaborn as sns
    from matplotlib.colors import Normalize

    e = inp.fit_entry("joint")
    form = (e or {}).get("selected")
    if not e or form not in e.get("forms", {}):
        return _placeholder(path, "no joint fit (needs token-pool x frame-sample arms varying both T and M)")
    f = e["forms"][form]
    opt = inp.fits.get("optimum") or {}
    L = opt.get("budget") or inp.fits.get("budget")
    window = [a for a in e.get("held_out", []) if a in inp.arms.index]
    pts = inp.arms.loc[f["arms"]]
    wpts = inp.arms.loc[window] if window else pts.iloc[:0]
    Tmax = max(float(pts["T"].max()), float(wpts["T"].max()) if len(wpts) else 1.0,
               (opt.get("closed_form") or {}).get("T") or 1.0) * 1.5
    Mmax = max(float(pts["M"].max()), float(wpts["M"].max()) if len(wpts) else 1.0) * 1.5
    T = np.geomspace(0.8, Tmax, 160)
    M = np.geomspace(0.8, Mmax, 160)
    TT, MM = np.meshgrid(T, M)
    Z = joint_loss({"E": 0.0, **f["params"]}, TT.ravel(), MM.ravel()).reshape(TT.shape)
    allobs = np.r_[pts["loss"].to_numpy(float), wpts["loss"].to_numpy(float)]
    norm = Normalize(vmin=float(min(Z.min(), allobs.min())), vmax=float(np.quantile(Z, 0.9)))
    with sns.axes_style("white"):
        fig, axes = _figure(size=(6.6, 5.0))
        ax = axes[0, 0]
        cs = ax.contourf(TT, MM, Z, levels=20, cmap="viridis_r", norm=norm)
        lines = ax.contour(TT, MM, Z, levels=10, colors="k", linewidths=0.4, alpha=0.5)
        ax.clabel(lines, fontsize=6, fmt="%.3g")
        fig.colorbar(cs, ax=ax, label="fitted loss")
        if L:
            ax.plot(T, L / T, color="white", lw=1.5, ls="--", label=f"T·M = {L}")
        ax.scatter(pts["T"], pts["M"], c=pts["loss"], cmap="viridis_r", norm=norm, edgecolor="k", s=36,
                   label="joint-fit arms", zorder=3)
        if len(wpts):
            ax.scatter(wpts["T"], wpts["M"], c=wpts["loss"], cmap="viridis_r", norm=norm, edgecolor="r", marker="s",
                       s=46, lw=1.2, label="window arms (held out)", zorder=3)
        cf = opt.get("closed_form")
        if cf and cf.get("T") is not None:
            b = opt.get("bootstrap") or {}
            ts, ms = b.get("T_star") or {}, b.get("M_star") or {}
            # a percentile interval need not contain the point estimate: clip the bar at the point
            xerr = [[max(0.0, cf["T"] - ts["lo"])], [max(0.0, ts["hi"] - cf["T"])]] if ts.get("lo") is not None else None
            yerr = [[max(0.0, cf["M"] - ms["lo"])], [max(0.0, ms["hi"] - cf["M"])]] if ms.get("lo") is not None else None
            ax.errorbar([cf["T"]], [cf["M"]], xerr=xerr, yerr=yerr, fmt="*", color="red", ms=14, mec="white",
                        capsize=3, zorder=4, label=f"optimum T*={cf['T']:.0f}, M*={cf['M']:.0f} (closed form)")
            bf = opt.get("brute_force")
            if bf:
                ax.scatter([bf["T"]], [bf["M"]], marker="D", facecolor="none", edgecolor="red", s=70, lw=1.5,
                           zorder=4, label=f"best producible ({bf['T']}, {bf['M']})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(0.8, Tmax)
        ax.set_ylim(0.8, Mmax)
        ax.set_xlabel("T (frames)")
        ax.set_ylabel("M (tokens per frame)")
        p = {"E": 0.0, **f["params"]}
        terms = ([rf"{p['E']:.3g}"] if form == "joint" else []) + [rf"{p['A']:.3g}/T^{{{p['alpha']:.3g}}}",
                                                                   rf"{p['B']:.3g}/M^{{{p['beta']:.3g}}}"]
        flags = [] if f["converged"] else ["NOT converged"]
        if f.get("at_bound"):
            flags.append(f"at a bound: {', '.join(f['at_bound'])}")
        if opt and not opt.get("agree", True):
            flags.append("optimum: closed form and brute force disagree")
        ax.set_title(f"Joint law (selected: {_law_text(form)})\n$L(T, M) = " + " + ".join(terms) + "$"
                     + (f"\n({'; '.join(flags)})" if flags else ""), fontsize=9)
        ax.legend(fontsize=7, loc="lower left", framealpha=0.85)
        _save(fig, path)
    return path


def _accuracy_figure(inp: _Inputs, path: Path) -> Path:
    import seaborn as sns

    panels = [(s, x) for s, x in (("tokens", "M"), ("frames", "T")) if not inp.study(s).empty]
    metrics = [c for c in ["accuracy", *inp.tasks] if c in inp.arms.columns and inp.arms[c].notna().any()]
    if not panels or not metrics:
        return _placeholder(path, "no token or frame study with accuracy in arms.csv")
    with sns.axes_style("whitegrid"):
        fig, axes = _figure(ncols=len(metrics), nrows=len(panels), size=(3.2, 2.8))
        for i, (study, x) in enumerate(panels):
            d = inp.study(study)
            for j, metric in enumerate(metrics):
                ax = axes[i, j]
                for method in _methods(d):
                    sub = d[d["method"] == method].drop_duplicates("arm").sort_values(x)
                    err = None
                    if f"{metric}_lo" in sub and sub[f"{metric}_lo"].notna().all():
                        err = [sub[metric] - sub[f"{metric}_lo"], sub[f"{metric}_hi"] - sub[metric]]
                    ax.errorbar(sub[x], sub[metric], yerr=err, marker="o", ms=4, capsize=2,
                                color=METHOD_COLORS.get(method), label=method)
                ax.set_xscale("log")
                ax.set_xlabel(x)
                ax.set_title(f"{study}: {metric.removeprefix('acc_')}", fontsize=9)
                if j == 0:
                    ax.set_ylabel("accuracy")
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
        fig.suptitle(f"Accuracy by task (mean of {len(inp.seeds)} seeds ± 95% CI)", fontsize=10)
        _save(fig, path)
    return path


def _ceiling_figure(inp: _Inputs, path: Path) -> Path:
    """Each trained arm (mean over seeds, interval) against its information ceiling, token and frame
    study side by side: the gap is what the tiny model fails to learn."""
    import seaborn as sns

    panels = [(st, x) for st, x in (("tokens", "M"), ("frames", "T")) if not inp.study(st).empty]
    if "ceiling_loss" not in inp.summary or not panels:
        return _placeholder(path, "no information ceiling (synthetic corpus only: visctx ceiling)")
    with sns.axes_style("whitegrid"):
        fig, axes = _figure(ncols=len(panels), size=(5.2, 4.0))
        for ax, (study, x) in zip(axes[0], panels):
            d = inp.study(study)
            for method in _methods(d):
                sub = d[d["method"] == method].drop_duplicates("arm").sort_values(x)
                color = METHOD_COLORS.get(method)
                err = [sub["loss"] - sub["loss_lo"], sub["loss_hi"] - sub["loss"]] if sub["loss_lo"].notna().all() else None
                ax.errorbar(sub[x], sub["loss"], yerr=err, fmt="o-", color=color, ms=4, capsize=2,
                            label=f"{method}: trained")
                ax.plot(sub[x], sub["ceiling_loss"], "--", marker="s", ms=3, color=color, alpha=0.8,
                        label=f"{method}: ceiling")
            ax.set_xscale("log")
            fixed = "T" if x == "M" else "M"
            ax.set(xlabel=f"{x} ({fixed} = {int(d[fixed].iloc[0])})", ylabel="held-out loss",
                   title=f"{study.capitalize()} study: trained vs. information ceiling")
            ax.legend(fontsize=7)
        _save(fig, path)
    return path


def _methods_figure(inp: _Inputs, path: Path) -> Path:
    """Loss (mean over seeds, interval; replicates faint) of each method at each (T, M) of one
    window, the ceiling of each arm dashed: how the four ways to spend the window compare."""
    import seaborn as sns

    d = inp.study("methods")
    if d.empty:
        return _placeholder(path, "no methods study in design.csv")
    reps = inp.replicates.set_index("arm")
    combos = sorted({(int(t), int(m)) for t, m in zip(d["T"], d["M"])})
    methods = _methods(d)
    with sns.axes_style("whitegrid"):
        fig, axes = _figure(ncols=len(combos), size=(0.55 * len(methods) + 1.6, 4.0))
        for ax, (T, M) in zip(axes[0], combos):
            sub = d[(d["T"] == T) & (d["M"] == M)].drop_duplicates("arm").set_index("method").reindex(methods).dropna(
                subset=["arm"])
            xs = np.arange(len(sub))
            for x, (method, r) in zip(xs, sub.iterrows()):
                color = METHOD_COLORS.get(method, "#666666")
                each = reps.loc[[r["arm"]], "loss"]
                ax.scatter(np.full(len(each), x) + 0.12, each, color=color, s=10, alpha=0.4, lw=0)
                err = None if pd.isna(r.get("loss_lo")) else [[r["loss"] - r["loss_lo"]], [r["loss_hi"] - r["loss"]]]
                ax.errorbar([x], [r["loss"]], yerr=err, fmt="o", color=color, ms=6, capsize=3)
                if "ceiling_loss" in r and pd.notna(r["ceiling_loss"]):
                    ax.hlines(r["ceiling_loss"], x - 0.3, x + 0.3, colors=color, linestyles="--", lw=1)
            ax.set_xticks(xs, list(sub.index), rotation=35, ha="right", fontsize=8)
            ax.set(title=f"T = {T}, M = {M} (T·M = {T * M})", ylabel=f"held-out loss ({inp.benchmark})")
        fig.suptitle(f"One window, every way to spend it: mean of {len(inp.seeds)} seeds ± 95% CI\n"
                     "dashed: information ceiling (summary: of its raw tokens)", fontsize=9)
        _save(fig, path)
    return path


def write_figures(arms_csv: str | Path, design_csv: str | Path, fits_json: str | Path,
                  out_dir: str | Path, ceiling_fits: str | None = None) -> list[Path]:
    """Write every figure in :data:`FIGURES` as ``<name>.png`` and ``<name>.pdf`` into ``out_dir``.

    Args:
        arms_csv, design_csv: ``collect``'s tables.
        fits_json: ``fits``' output.
        out_dir: the directory of the figures.
        ceiling_fits: the fits of the information ceiling (``visctx fits`` on ``visctx ceiling``).
    """
    inp = _Inputs(arms_csv, design_csv, fits_json, ceiling_fits=ceiling_fits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = [
        _loss_figure(inp, "tokens", "M", out / "tokens_loss.png"),
        _loss_figure(inp, "frames", "T", out / "frames_loss.png"),
        _joint_figure(inp, out / "joint_contour.png"),
        _accuracy_figure(inp, out / "accuracy_by_task.png"),
        _ceiling_figure(inp, out / "ceiling_gap.png"),
        _methods_figure(inp, out / "methods_window.png"),
    ]
    return [p.with_suffix(f".{ext}") for p in pngs for ext in FIGURE_FORMATS]


# ---------------------------------------------------------------------------------------------
# Metrics


def _ci_keys(name: str, value: Any, ci: Sequence | None) -> dict[str, Any]:
    out = {name: value}
    if ci and ci[0] is not None:
        out |= {f"{name}_lo": ci[0], f"{name}_hi": ci[1]}
    return out


def effect_arms(design: pd.DataFrame, study: str, method: str) -> tuple[str, str] | None:
    """The two arms a study's effect compares for one method: its smallest and its largest setting
    (``STUDY_X``); None with fewer than two."""
    d = design[(design["study"] == study) & (design["method"] == method)].drop_duplicates("arm").sort_values(STUDY_X[study])
    return (d["arm"].iloc[0], d["arm"].iloc[-1]) if len(d) >= 2 else None


def _effect(inp: _Inputs, study: str, method: str) -> dict[str, Any] | None:
    """The study's effect for one method: loss at the largest setting minus at the smallest, relative
    to the smallest, paired within each seed (the arms of one replicate share its base); its mean
    and across-seed SD and interval."""
    ends = effect_arms(inp.study(study), study, method)
    if ends is None:
        return None
    a, b = ends
    e = paired_effect(inp.replicates, a, b, "loss", relative=True)
    return {"from": a, "to": b, "effect": e["mean"], "effect_sd": e["sd"], "effect_lo": e["lo"], "effect_hi": e["hi"]}


def metrics(arms_csv: str | Path, design_csv: str | Path, fits_json: str | Path,
            ceiling_fits: str | Path | None = None) -> dict[str, Any]:
    """What ``dvc exp show`` shows (nested; DVC flattens it to ``tokens.pool.alpha`` etc.): per study
    and method the selected law with its exponent and interval and the effect with its across-seed
    SD; the joint law; the optimum and its interval; the prediction check; the noise; the ceiling's
    optimum and the median gap to it; how many of the paper's findings hold."""
    inp = _Inputs(arms_csv, design_csv, fits_json, ceiling_fits=ceiling_fits)
    fits = inp.fits
    out: dict[str, Any] = {"seeds": len(inp.seeds), "n_arms": int(len(inp.arms)),
                           "n_errors": len(fits.get("errors") or [])}
    all_conv = True
    for study, method, entry in _fit_entries(fits):
        forms = entry.get("forms", {})
        sel = entry.get("selected")
        m: dict[str, Any] = {"law": sel}
        f = forms.get(sel)
        if f:
            ci = (f.get("bootstrap") or {}).get("ci") or {}
            keep = ("alpha", "beta") if study == "joint" else ("alpha", "b")
            for name, v in f["params"].items():
                if name in keep:
                    m |= _ci_keys(name, v, ci.get(name))
            m["r2"] = f.get("r2")
            if study == "joint":
                m["at_bound"] = len(f.get("at_bound") or [])
            all_conv &= bool(f["converged"])
        if study != "joint":
            eff = _effect(inp, study, method)
            if eff:
                m |= {k: eff[k] for k in ("effect", "effect_sd")}
            out.setdefault(study, {})[method] = m
        else:
            out["joint"] = m
    opt = fits.get("optimum")
    if opt:
        bf, cf, b = opt["brute_force"], opt["closed_form"], opt.get("bootstrap") or {}
        o: dict[str, Any] = {"budget": opt["budget"], "T": bf["T"], "M": bf["M"], "T_star": cf["T"], "M_star": cf["M"],
                             "agree": bool(opt["agree"]), "extrapolated": bool(opt.get("extrapolated", False))}
        for key in ("T", "M"):
            if b.get(key):
                o[f"{key}_lo"], o[f"{key}_hi"] = b[key]["lo"], b[key]["hi"]
        out["optimum"] = o
    p = fits.get("prediction")
    if p:
        out["prediction"] = {"best_match": bool(p["best_match"]), "spearman": p.get("spearman"), "mape": p["mape"]}
    best: dict[str, Any] = {}
    t6 = table6_methods(inp)
    if "vs_pool_%" in t6:  # per method: the loss relative to pooling at its best (T, M), paired within seeds
        rows = t6[(t6["best"] != "") | (t6.groupby("method")["arm"].transform("size") == 1)].set_index("method")
        out["methods"] = {m: r["vs_pool_%"] for m, r in rows.iterrows() if pd.notna(r.get("vs_pool_%"))}
    for study in ("tokens", "frames", "joint", "window", "methods"):
        d = inp.study(study).drop_duplicates("arm")
        if not d.empty and d["loss"].notna().any():
            best[study] = d.loc[d["loss"].idxmin(), "arm"]
    out["best_arm"] = best
    sd = inp.summary["loss_sd"].dropna()
    out["noise"] = {"loss_sd_median": float(sd.median()) if len(sd) else None,
                    "loss_sd_max": float(sd.max()) if len(sd) else None}
    if inp.ceiling and inp.ceiling.get("optimum"):
        co = inp.ceiling["optimum"]["brute_force"]
        out["ceiling"] = {"T": co["T"], "M": co["M"],
                          "gap_median": float(inp.summary["gap"].median()) if "gap" in inp.summary else None}
    from visctx.findings import findings_table

    f = findings_table(inp)
    if "verdict" in f:
        out["findings"] = {v: int((f["verdict"] == v).sum()) for v in ("holds", "fails", "inconclusive")}
    out["converged"] = all_conv
    return _clean_json(out)


def _clean_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def headline(m: dict[str, Any]) -> dict[str, Any]:
    """The few figures ``dvc exp show`` shows by default, the optimum first (DVC keeps the first
    columns when a terminal is narrow): the optimum and its interval, each study's effect, the
    noise and the findings that hold. Everything else is in the full file."""
    opt = m.get("optimum") or {}
    effect = {f"{study}_{method}": (m.get(study) or {}).get(method, {}).get("effect")
              for study, methods in (("tokens", ("pool", "sample")), ("frames", ("pool", "sample")))
              for method in methods}
    return {
        "optimum": {k: opt.get(k) for k in ("T", "M", "T_lo", "T_hi", "M_lo", "M_hi", "agree")},
        "effect": {k: v for k, v in effect.items() if v is not None},
        "loss_sd": (m.get("noise") or {}).get("loss_sd_median"),
        "findings_hold": (m.get("findings") or {}).get("holds"),
    }


def write_metrics(arms_csv: str | Path, design_csv: str | Path, fits_json: str | Path,
                  out_json: str | Path, full_json: str | None = None, ceiling_fits: str | None = None) -> dict[str, Any]:
    """Write :func:`metrics` to ``full_json`` and its :func:`headline` to ``out_json`` (the
    metrics file ``dvc exp show`` reads); returns the full metrics.

    Args:
        arms_csv, design_csv: ``collect``'s tables.
        fits_json: ``fits``' output.
        out_json: the headline metrics file (declared as DVC metrics).
        full_json: every figure (``dvc metrics show <it>``); without it ``out_json`` gets them all.
        ceiling_fits: the fits of the information ceiling: its optimum goes beside the study's.
    """
    m = metrics(arms_csv, design_csv, fits_json, ceiling_fits)
    for path, obj in ((full_json, m), (out_json, headline(m) if full_json else m)):
        if path:
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    return m
