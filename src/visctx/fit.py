"""Scaling-law fits of the LM loss against the visual context (T frames x M tokens per frame).

One module for the statistics of the study (paper-notes §1), so they can grow in one place:

* **Robust point estimates.** Every law is fitted in log space, minimising a Huber loss on the
  log-loss residuals ``log L_pred - log L_obs`` with L-BFGS-B from a grid of starting points and
  keeping the best (Hoffmann et al. 2022, "Chinchilla", Approach 3). Positive parameters (E, A, B)
  are optimised as logs so they stay positive. Convergence is *checked* (optimizer status and
  projected gradient norm); a non-converged fit carries ``converged: false`` and is never chosen
  by model selection.
* **Inference.** statsmodels ``GenericLikelihoodModel`` with a Gaussian likelihood on the log
  residuals, evaluated at the robust optimum (sigma at its MLE given the optimum): standard errors
  and Wald intervals from its Hessian, log-likelihood, AIC/BIC (AICc added), one likelihood on one
  scale for every law so AICc compares power laws with linear laws.
* **Bootstrap.** Arms resampled with replacement (seeded), each resample warm-started from the
  full-data optimum; percentile intervals for every parameter and for the optimum (T*, M*). The
  resamples minimise the same Huber objective in one vectorised damped Gauss-Newton/IRLS pass,
  L-BFGS-B finishing any resample that fails the same gradient check (one SciPy L-BFGS-B call
  per resample costs ~4 ms of overhead: 14 fits x 1000 resamples would take about a minute).
* **The optimum** under a window T*M <= L, two ways: the Lagrange closed form and brute force over
  the integer (T, M) the token operator can produce.
* **Prediction check.** The joint law is fitted without the fixed-window arms and predicts them.

Entry points: :func:`run_fits` / :func:`write_fits`, and ``python -m visctx.fit optimum --fits
fits.json --budget 6000`` (which (T, M) for my window?). Fitting functions raise :class:`FitError`
with a message naming the data; :func:`run_fits` records per-fit failures in ``errors`` (or raises
with ``strict=True``) but always raises on bad inputs (missing arms, NaN losses).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import re
import sys
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize, nnls

HUBER_DELTA = 1e-3  # on log-loss residuals, as in Hoffmann et al. (2022)
GTOL = 1e-4  # projected-gradient sup norm (objective in units of mean |log residual|) for "converged"
LEVEL = 0.95
TINY = 1e-300
EXP_BOUNDS = (0.0, 5.0)  # exponents: losses fall with more context; 5 is "a step", flagged at_bound
LOG_BOUNDS = (-30.0, 30.0)  # log E, log A, log B; exp(-30) ~ 1e-13 is "no offset", flagged at_bound
STUDY_X = {"tokens": "M", "frames": "T"}
FORMS_1D = ("power_offset", "power", "linear")
FORMS_2D = ("joint", "joint_nooffset")
JOINT_STUDIES = ("tokens", "frames", "joint")


class FitError(ValueError):
    """A fit cannot be made or trusted; the message names the study, form, file or arm."""


_BLAS_THREAD_FUNCS = (  # (get, set) pairs exported by the OpenBLAS builds numpy/scipy ship
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run with one OpenBLAS thread, restoring the previous count afterwards.

    Why: L-BFGS-B makes tiny BLAS calls thousands of times; OpenBLAS waking its thread pool for
    each made L-BFGS-B 10-20x slower on a busy 2-core machine (measured: 140 ms vs 8 ms for a
    5-parameter Rosenbrock fit).
    Uses threadpoolctl when installed, else the OpenBLAS libraries loaded in this process (Linux).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(1, user_api="blas"):
            yield
        return
    restore = []
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({p for ln in fh if (p := ln.split()[-1]).startswith("/")
                            and "openblas" in Path(p).name.lower() and ".so" in Path(p).name})
    except OSError:
        paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, set_ in _BLAS_THREAD_FUNCS:
            if hasattr(lib, get) and hasattr(lib, set_):
                getf, setf = getattr(lib, get), getattr(lib, set_)
                getf.restype = ctypes.c_int
                n = getf()
                setf(ctypes.c_int(1))
                restore.append((setf, n))
                break
    try:
        yield
    finally:
        for setf, n in restore:
            setf(ctypes.c_int(n))


# ---------------------------------------------------------------------------------------------
# The laws: prediction and Jacobian in the internal (optimised) parametrisation


@dataclass(frozen=True)
class Law:
    """A functional form ``L(x; theta)``; ``theta`` holds logs of the parameters flagged in ``log``."""

    name: str
    formula: str
    names: tuple[str, ...]
    log: tuple[bool, ...]
    dims: int  # 1: x; 2: (T, M)

    @property
    def n_params(self) -> int:
        """The law's free parameters (``k`` in the information criteria; not the pool kernel)."""
        return len(self.names)

    @property
    def internal_names(self) -> list[str]:
        return [f"log{n}" if lg else n for n, lg in zip(self.names, self.log)]

    def bounds(self) -> list[tuple[float | None, float | None]]:
        if self.name == "linear":
            return [(None, None), (None, None)]
        return [LOG_BOUNDS if lg else EXP_BOUNDS for lg in self.log]

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """Internal -> natural parameters; works on ``[..., n_params]`` arrays (bootstrap draws)."""
        out = np.array(theta, dtype=float, copy=True)
        mask = np.array(self.log)
        out[..., mask] = np.exp(out[..., mask])
        return out

    def predict_natural(self, params: np.ndarray, X: np.ndarray) -> np.ndarray:
        """``params [..., n_params]`` (natural) and ``X [n, dims]`` -> ``[..., n]``; broadcasts over draws."""
        p = np.asarray(params, dtype=float)[..., None]
        X = np.asarray(X, dtype=float).reshape(-1, self.dims)
        if self.name == "power_offset":
            return p[..., 0, :] + p[..., 1, :] * X[:, 0] ** -p[..., 2, :]
        if self.name == "power":
            return p[..., 0, :] * X[:, 0] ** -p[..., 1, :]
        if self.name == "linear":
            return p[..., 0, :] + p[..., 1, :] * X[:, 0]
        if self.name == "joint":
            return (p[..., 0, :] + p[..., 1, :] * X[:, 0] ** -p[..., 2, :]
                    + p[..., 3, :] * X[:, 1] ** -p[..., 4, :])
        if self.name == "joint_nooffset":
            return p[..., 0, :] * X[:, 0] ** -p[..., 1, :] + p[..., 2, :] * X[:, 1] ** -p[..., 3, :]
        raise AssertionError(self.name)

    def f_jac(self, theta: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prediction ``[n]`` and Jacobian ``[n, n_params]`` w.r.t. ``theta``; ``Z`` = log X except linear (X)."""
        return _F_JAC[self.name](theta, Z)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X if self.name == "linear" else np.log(X)

    def starts(self, X: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        """A grid of starting points (internal parametrisation), cheap to score all at once."""
        ly = np.log(y)
        ymin = float(y.min())
        alphas = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5)
        out: list[np.ndarray] = []
        if self.name in ("power_offset", "power"):
            lx = np.log(X[:, 0])
            fracs = (1e-6, 0.2, 0.5, 0.8, 0.95) if self.name == "power_offset" else (0.0,)
            for fe in fracs:
                E = fe * ymin
                for al in alphas:
                    a = float(np.median(np.log(y - E) + al * lx))
                    out.append(np.array([math.log(E), a, al] if self.name == "power_offset" else [a, al]))
        elif self.name == "linear":
            x = X[:, 0]
            b, a = np.polyfit(x, y, 1)
            out += [np.array([a, b]), np.array([float(np.mean(y)), 0.0])]
            bw, aw = np.polyfit(x, y, 1, w=1 / y)
            out.append(np.array([aw, bw]))
        else:
            T, M = X[:, 0], X[:, 1]
            fracs = (1e-6, 0.3, 0.6, 0.85) if self.name == "joint" else (0.0,)
            ex = (0.1, 0.25, 0.5, 1.0, 2.0)
            for fe in fracs:
                E = fe * ymin
                for al in ex:
                    for be in ex:
                        coef, _ = nnls(np.column_stack([T ** -al, M ** -be]), y - E)
                        A, B = (max(float(c), 1e-6 * ymin) for c in coef)
                        tail = [math.log(A), al, math.log(B), be]
                        out.append(np.array(([math.log(E)] if self.name == "joint" else []) + tail))
        lo = np.array([b[0] if b[0] is not None else -np.inf for b in self.bounds()])
        hi = np.array([b[1] if b[1] is not None else np.inf for b in self.bounds()])
        return [np.clip(s, lo, hi) for s in out]


def _fj_power_offset(th: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    E, lx = math.exp(th[0]), Z[:, 0]
    t = np.exp(th[1] - th[2] * lx)
    J = np.empty((len(lx), 3))
    J[:, 0] = E
    J[:, 1] = t
    np.multiply(t, -lx, out=J[:, 2])
    return t + E, J


def _fj_power(th: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lx = Z[:, 0]
    t = np.exp(th[0] - th[1] * lx)
    J = np.empty((len(lx), 2))
    J[:, 0] = t
    np.multiply(t, -lx, out=J[:, 1])
    return t, J


def _fj_linear(th: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = Z[:, 0]
    J = np.empty((len(x), 2))
    J[:, 0] = 1.0
    J[:, 1] = x
    return th[0] + th[1] * x, J


def _fj_joint(th: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    E = math.exp(th[0])
    J = np.empty((len(Z), 5))
    t = np.exp(th[1] - th[2] * Z[:, 0])
    m = np.exp(th[3] - th[4] * Z[:, 1])
    J[:, 0] = E
    J[:, 1] = t
    np.multiply(t, -Z[:, 0], out=J[:, 2])
    J[:, 3] = m
    np.multiply(m, -Z[:, 1], out=J[:, 4])
    return t + m + E, J


def _fj_joint_nooffset(th: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    J = np.empty((len(Z), 4))
    t = np.exp(th[0] - th[1] * Z[:, 0])
    m = np.exp(th[2] - th[3] * Z[:, 1])
    J[:, 0] = t
    np.multiply(t, -Z[:, 0], out=J[:, 1])
    J[:, 2] = m
    np.multiply(m, -Z[:, 1], out=J[:, 3])
    return t + m, J


_F_JAC = {"power_offset": _fj_power_offset, "power": _fj_power, "linear": _fj_linear, "joint": _fj_joint,
          "joint_nooffset": _fj_joint_nooffset}


LAWS: dict[str, Law] = {
    "power_offset": Law("power_offset", "E + A*x^-alpha", ("E", "A", "alpha"), (True, True, False), 1),
    "power": Law("power", "A*x^-alpha", ("A", "alpha"), (True, False), 1),
    "linear": Law("linear", "a + b*x", ("a", "b"), (False, False), 1),
    "joint": Law("joint", "E + A/T^alpha + B/M^beta", ("E", "A", "alpha", "B", "beta"),
                 (True, True, False, True, False), 2),
    "joint_nooffset": Law("joint_nooffset", "A/T^alpha + B/M^beta", ("A", "alpha", "B", "beta"),
                          (True, False, True, False), 2),
}


def _huber_objective(theta: np.ndarray, law: Law, Z: np.ndarray, logy: np.ndarray, w: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
    """Weighted mean Huber loss of log residuals, divided by delta (units of |log residual|).

    ``w`` are resampling counts pre-divided by ``delta * sum(counts)`` (see :func:`_weights`)."""
    f, J = _F_JAC[law.name](theta, Z)
    if f.min() <= TINY:  # a linear law predicting <= 0: a huge residual pushes it back
        f = np.maximum(f, TINY)
    r = np.log(f)
    r -= logy
    psi = np.clip(r, -delta, delta)
    wpsi = w * psi
    r -= 0.5 * psi
    val = float(wpsi @ r)  # huber(r) = psi * (r - psi/2)
    wpsi /= f
    g = wpsi @ J
    if not (math.isfinite(val) and math.isfinite(g.sum())):
        return 1e300, np.zeros_like(theta)
    return val, g


def _weights(counts: np.ndarray, delta: float) -> np.ndarray:
    return np.asarray(counts, float) / (delta * float(np.sum(counts)))


def _projected_grad(theta: np.ndarray, g: np.ndarray, bounds: list) -> np.ndarray:
    pg = g.copy()
    for i, (lo, hi) in enumerate(bounds):
        if lo is not None and theta[i] <= lo + 1e-10 and g[i] > 0:
            pg[i] = 0.0
        if hi is not None and theta[i] >= hi - 1e-10 and g[i] < 0:
            pg[i] = 0.0
    return pg


@dataclass
class _Opt:
    theta: np.ndarray
    fun: float
    status: int
    message: str
    nit: int
    grad_norm: float
    converged: bool


def _minimize(law: Law, Z: np.ndarray, logy: np.ndarray, counts: np.ndarray, x0: np.ndarray,
              delta: float, maxiter: int = 3000) -> _Opt:
    """L-BFGS-B with one restart from its own end point (resets the curvature memory, which often
    clears an abnormal line-search stop at the kink-like Huber optimum); then the convergence check."""
    bounds = law.bounds()
    w = _weights(counts, delta)
    opts = {"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-9}
    res = None
    x = np.asarray(x0, dtype=float)
    for _ in range(2):
        res = minimize(_huber_objective, x, args=(law, Z, logy, w, delta), jac=True, method="L-BFGS-B",
                       bounds=bounds, options=opts)
        x = res.x
        _, g = _huber_objective(res.x, law, Z, logy, w, delta)
        gn = float(np.max(np.abs(_projected_grad(res.x, g, bounds))))
        if gn <= GTOL * 1e-2:
            break
    converged = bool(np.isfinite(res.fun) and res.fun < 1e299 and res.status != 1 and gn <= GTOL)
    msg = res.message if isinstance(res.message, str) else str(res.message)
    return _Opt(np.asarray(res.x, float), float(res.fun), int(res.status), msg, int(res.nit), gn, converged)


# ---------------------------------------------------------------------------------------------
# One fit


@dataclass
class Fit:
    """A robust fit of one law to one data set, plus its inference and (later) bootstrap."""

    law: Law
    X: np.ndarray  # [n, dims] natural (M, T or T,M)
    y: np.ndarray  # observed losses
    arms: list[str]
    label: str
    theta: np.ndarray
    opt: _Opt
    n_starts: int
    delta: float
    inference: dict[str, Any] = field(default_factory=dict)
    boot: dict[str, Any] | None = None
    draws: np.ndarray | None = None  # natural parameters of converged resamples

    @property
    def params(self) -> dict[str, float]:
        return dict(zip(self.law.names, self.law.natural(self.theta).tolist()))

    @property
    def converged(self) -> bool:
        return self.opt.converged

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.law.predict_natural(self.law.natural(self.theta), np.asarray(X, float))

    def at_bound(self) -> list[str]:
        out = []
        for name, v, (lo, hi) in zip(self.law.internal_names, self.theta, self.law.bounds()):
            if (lo is not None and v <= lo + 1e-6) or (hi is not None and v >= hi - 1e-6):
                out.append(name)
        return out

    def to_dict(self) -> dict[str, Any]:
        fitted = self.predict(self.X)
        return {
            "form": self.law.name,
            "formula": self.law.formula,
            "label": self.label,
            "n": int(len(self.y)),
            "n_params": self.law.n_params,
            "params": self.params,
            "converged": self.converged,
            "optimizer": {"status": self.opt.status, "message": self.opt.message, "nit": self.opt.nit,
                          "grad_norm": self.opt.grad_norm, "gtol": GTOL, "objective": self.opt.fun,
                          "n_starts": self.n_starts, "huber_delta": self.delta},
            "at_bound": self.at_bound(),
            **self.inference,
            "bootstrap": self.boot,
            "arms": list(self.arms),
            "x": self.X.tolist() if self.law.dims == 2 else self.X[:, 0].tolist(),
            "observed": self.y.tolist(),
            "fitted": fitted.tolist(),
        }


def _check_data(law: Law, X: np.ndarray, y: np.ndarray, label: str) -> None:
    if len(X) != len(y):
        raise FitError(f"{label}: {len(X)} x values but {len(y)} losses")
    bad = ~np.isfinite(y) | ~np.all(np.isfinite(X), axis=1)
    if bad.any():
        raise FitError(f"{label}: NaN/inf at points {np.flatnonzero(bad).tolist()}")
    if (y <= 0).any():
        raise FitError(f"{label}: losses must be > 0 to be fitted in log space, got {y[y <= 0].tolist()}")
    if law.name != "linear" and (X <= 0).any():
        raise FitError(f"{label}: T and M must be >= 1 for a power law")
    distinct = len({tuple(r) for r in X.tolist()})
    if distinct < law.n_params + 1:
        raise FitError(f"{label}: the {law.name} law ({law.formula}) has {law.n_params} parameters and needs at "
                       f"least {law.n_params + 1} distinct points; got {distinct}")
    if law.dims == 2 and (len(np.unique(X[:, 0])) < 2 or len(np.unique(X[:, 1])) < 2):
        raise FitError(f"{label}: the joint law needs at least 2 distinct T and 2 distinct M, got "
                       f"T={sorted(set(X[:, 0].tolist()))}, M={sorted(set(X[:, 1].tolist()))}")
    if np.ptp(y) <= 1e-9 * abs(float(np.mean(y))):
        raise FitError(f"{label}: losses are constant ({float(y[0]):.6g} at all {len(y)} points); "
                       f"no law can be identified")


def _one_blas_thread(fn):
    """Decorator: run ``fn`` under :func:`single_threaded_blas`."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper


@_one_blas_thread
def fit_law(form: str, X: Any, y: Any, *, arms: Sequence[str] | None = None, label: str | None = None,
            delta: float = HUBER_DELTA, n_starts: int = 8) -> Fit:
    """Robust fit of ``LAWS[form]`` to ``X`` (``[n]`` for 1-D laws, ``[n, 2]`` = (T, M) for joint
    laws) and losses ``y``: score the start grid, run L-BFGS-B from the best ``n_starts``, keep the
    best, then compute statsmodels inference. Raises :class:`FitError` on degenerate data."""
    if form not in LAWS:
        raise FitError(f"unknown form {form!r}; allowed: {', '.join(LAWS)}")
    law = LAWS[form]
    label = label or form
    y = np.asarray(y, dtype=float).ravel()
    X = np.asarray(X, dtype=float)
    X = X.reshape(len(X), -1) if X.ndim else X.reshape(1, 1)
    if X.shape[1] != law.dims:
        raise FitError(f"{label}: the {form} law needs {law.dims} column(s) of x, got {X.shape[1]}")
    _check_data(law, X, y, label)
    Z, logy, w = law.transform(X), np.log(y), np.ones(len(y))
    starts = law.starts(X, y)
    wn = _weights(w, delta)
    scored = sorted(starts, key=lambda s: _huber_objective(s, law, Z, logy, wn, delta)[0])
    best: _Opt | None = None
    for s in scored[:n_starts]:
        o = _minimize(law, Z, logy, w, s, delta)
        if best is None or (o.converged, -o.fun) > (best.converged, -best.fun):
            best = o
    assert best is not None
    fit = Fit(law, X, y, list(arms) if arms is not None else [str(i) for i in range(len(y))], label,
              best.theta, best, min(n_starts, len(scored)), delta)
    fit.inference = _inference(fit)
    return fit


# ---------------------------------------------------------------------------------------------
# Inference (statsmodels)


def _loglike_model(law: Law, X: np.ndarray, y: np.ndarray):
    from statsmodels.base.model import GenericLikelihoodModel

    class LogResidualGaussian(GenericLikelihoodModel):
        """Gaussian log-likelihood of log L_obs around log L_pred(theta); last parameter log sigma."""

        def __init__(self) -> None:
            names = law.internal_names + ["logsigma"]
            super().__init__(np.log(y), exog=np.ones((len(y), 1)), extra_params_names=names[1:])
            self.exog_names[0] = names[0]

        def loglikeobs(self, params: np.ndarray) -> np.ndarray:
            theta, ls = params[:-1], params[-1]
            f, _ = law.f_jac(theta, law.transform(X))
            r = np.log(np.where(f > TINY, f, TINY)) - self.endog
            s2 = math.exp(2 * ls)
            return -0.5 * (np.log(2 * np.pi * s2) + r * r / s2)

    return LogResidualGaussian()


def _inference(fit: Fit) -> dict[str, Any]:
    """SEs/Wald intervals, llf, AIC/AICc/BIC and R^2 at the robust optimum (sigma at its MLE)."""
    from scipy.stats import norm
    from statsmodels.base.model import GenericLikelihoodModelResults, LikelihoodModelResults

    law, X, y = fit.law, fit.X, fit.y
    n = len(y)
    pred = fit.predict(X)
    r = np.log(np.where(pred > TINY, pred, TINY)) - np.log(y)
    sigma = max(float(np.sqrt(np.mean(r * r))), 1e-10)
    model = _loglike_model(law, X, y)
    params = np.r_[fit.theta, math.log(sigma)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = model.hessian(params)
        try:
            cov = np.linalg.inv(-H)
        except np.linalg.LinAlgError:
            cov = np.full_like(H, np.nan)
        res = GenericLikelihoodModelResults(model, LikelihoodModelResults(model, params, normalized_cov_params=cov,
                                                                          scale=1.0))
        llf = float(res.llf)
        aic, bic = float(res.aic), float(res.bic)
        var = np.diag(cov)[:-1]
    n_lik = law.n_params + 1  # + sigma: the likelihood's parameters
    aicc = aic + 2 * n_lik * (n_lik + 1) / (n - n_lik - 1) if n - n_lik - 1 > 0 else float("nan")
    z = float(norm.ppf(0.5 + LEVEL / 2))
    se_int = np.where(var > 0, np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
    nat = law.natural(fit.theta)
    se, wald = {}, {}
    for i, name in enumerate(law.names):
        lo, hi = fit.theta[i] - z * se_int[i], fit.theta[i] + z * se_int[i]
        if law.log[i]:  # delta method for the SE; the interval is exp of the log-scale interval
            se[name] = float(nat[i] * se_int[i])
            wald[name] = [float(math.exp(min(lo, 700))), float(math.exp(min(hi, 700)))] if np.isfinite(lo) else [None, None]
        else:
            se[name] = float(se_int[i])
            wald[name] = [float(lo), float(hi)] if np.isfinite(lo) else [None, None]
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ly = np.log(y)
    return {
        "se": se,
        "wald_ci": wald,
        "level": LEVEL,
        "sigma_log": sigma,
        "llf": llf,
        "aic": aic,
        "aicc": aicc,
        "bic": bic,
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "r2_log": 1 - float(np.sum(r * r)) / float(np.sum((ly - ly.mean()) ** 2)),
        "rmse_log": float(np.sqrt(np.mean(r * r))),
    }


def lack_of_fit(observed: Any, fitted: Any, replicate_var: Any, replicates: int, n_params: int
                ) -> dict[str, Any] | None:
    """Does the law miss the arm means by more than the training noise explains? The classical
    lack-of-fit F test with pure error from replicates (Draper & Smith, *Applied Regression
    Analysis*, §2.1): with n points, each the mean of r replicates with sample variance s_i^2,

        F = [sum (ybar_i - f_i)^2 / (n - p)] / [mean(s_i^2) / r],  on (n - p, n (r - 1)) df,

    equal to statsmodels' ``anova_lm`` of a linear law against the cell-means model on the raw
    replicates (tested); for the nonlinear, Huber-fitted laws it is the usual approximation. The
    pure error is training noise only: the evaluation items are the same for every seed, so an
    arm's share of them (which its context happens to favour) counts as lack of fit.

    ``r2_attainable`` is what R^2 the true law would reach on these means on average, 1 - (n - p)
    (mean s_i^2 / r) / SS_tot: a study whose means are this noisy cannot show a higher R^2, so a
    target above it is a target on the noise, not on the law. None with one replicate or n <= p."""
    from scipy.stats import f as f_dist

    y, fit_, var = (np.asarray(v, float) for v in (observed, fitted, replicate_var))
    n, r = len(y), int(replicates)
    if r < 2 or n <= n_params or not np.isfinite(var).all():
        return None
    pure = float(var.mean()) / r  # the variance of an arm mean from training noise
    ss_lof = float(np.sum((y - fit_) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    df1, df2 = n - n_params, n * (r - 1)
    F = ss_lof / df1 / pure if pure > 0 else (float("inf") if ss_lof > 0 else 0.0)
    return {"F": F, "df_lof": df1, "df_pure": df2, "p": float(f_dist.sf(F, df1, df2)),
            "pure_error_sd": math.sqrt(pure), "replicates": r,
            "r2_attainable": 1 - df1 * pure / ss_tot if ss_tot > 0 else None}


# ---------------------------------------------------------------------------------------------
# Bootstrap


def _seed_for(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def _pct(a: np.ndarray, level: float) -> list[float | None]:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return [None, None]
    lo, hi = np.percentile(a, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def _batch_f_jac(name: str, TH: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`Law.f_jac` for a batch of parameter vectors: ``TH [B, n_params]`` -> ``[B, n]``, ``[B, n, n_params]``."""
    c = lambda i: TH[:, i:i + 1]  # noqa: E731
    if name == "power_offset":
        E, t = np.exp(c(0)), np.exp(c(1) - c(2) * Z[:, 0])
        return E + t, np.stack([np.broadcast_to(E, t.shape), t, -t * Z[:, 0]], -1)
    if name == "power":
        t = np.exp(c(0) - c(1) * Z[:, 0])
        return t, np.stack([t, -t * Z[:, 0]], -1)
    if name == "linear":
        f = c(0) + c(1) * Z[:, 0]
        return f, np.stack([np.ones_like(f), np.broadcast_to(Z[:, 0], f.shape)], -1)
    if name == "joint":
        E, t, m = np.exp(c(0)), np.exp(c(1) - c(2) * Z[:, 0]), np.exp(c(3) - c(4) * Z[:, 1])
        return E + t + m, np.stack([np.broadcast_to(E, t.shape), t, -t * Z[:, 0], m, -m * Z[:, 1]], -1)
    if name == "joint_nooffset":
        t, m = np.exp(c(0) - c(1) * Z[:, 0]), np.exp(c(2) - c(3) * Z[:, 1])
        return t + m, np.stack([t, -t * Z[:, 0], m, -m * Z[:, 1]], -1)
    raise AssertionError(name)


def _batch_objective(name: str, TH: np.ndarray, Z: np.ndarray, logy: np.ndarray, Wn: np.ndarray,
                     delta: float) -> np.ndarray:
    f, _ = _batch_f_jac(name, TH, Z)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.log(np.maximum(f, TINY)) - logy
        psi = np.clip(r, -delta, delta)
        v = (Wn * psi * (r - 0.5 * psi)).sum(1)
    return np.where(np.isfinite(v), v, np.inf)


def _irls_batch(law: Law, Z: np.ndarray, logy: np.ndarray, W: np.ndarray, theta0: np.ndarray, delta: float,
                iters: int = 300, tol: float = GTOL * 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the Huber objective for many resamples at once (rows of count matrix ``W``).

    Damped Gauss-Newton with IRLS weights min(1, delta/|r|) (the Huber majoriser), a step-halving
    search that only accepts decreases, bounds by clipping; a row stops when its projected gradient
    is <= ``tol``. Returns parameters ``[B, n_params]`` and the projected-gradient sup norms ``[B]``. Why:
    one L-BFGS-B run per resample costs ~4 ms of SciPy overhead; this does 1000 in ~0.3 s."""
    B, P = W.shape[0], law.n_params
    Wn = W / (delta * W.sum(1, keepdims=True))
    LY = np.broadcast_to(logy, W.shape)  # one log-loss vector for all rows, or one per row (noise draws)
    TH = np.tile(np.asarray(theta0, float), (B, 1))
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in law.bounds()])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in law.bounds()])
    obj = _batch_objective(law.name, TH, Z, LY, Wn, delta)
    lam = np.full(B, 1e-6)
    gn = np.full(B, np.inf)
    active = np.arange(B)
    eye = np.eye(P)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for _ in range(iters + 1):
            th, w, ly = TH[active], Wn[active], LY[active]
            f, J = _batch_f_jac(law.name, th, Z)
            f = np.maximum(f, TINY)
            r = np.log(f) - ly
            Jr = J / f[..., None]
            g = np.einsum("bn,bni->bi", w * np.clip(r, -delta, delta), Jr)
            pg = np.where(((th <= lo + 1e-10) & (g > 0)) | ((th >= hi - 1e-10) & (g < 0)), 0.0, g)
            gn[active] = np.where(np.isfinite(pg).all(1), np.abs(pg).max(1), np.inf)
            keep = gn[active] > tol
            if not keep.any() or _ == iters:
                break
            active, th, w, ly, Jr, r = active[keep], th[keep], w[keep], ly[keep], Jr[keep], r[keep]
            om = w * np.minimum(1.0, delta / np.maximum(np.abs(r), TINY))
            A = np.matmul(Jr.transpose(0, 2, 1) * om[:, None, :], Jr)
            A += (lam[active][:, None] * np.einsum("bii->bi", A) + 1e-300)[:, :, None] * eye
            rhs = np.einsum("bn,bni->bi", om * r, Jr)
            try:
                step = -np.linalg.solve(A, rhs[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = -np.stack([np.linalg.lstsq(a, v, rcond=None)[0] for a, v in zip(A, rhs)])
            best, best_th = obj[active].copy(), th.copy()
            improved = np.zeros(len(active), bool)
            for a in (1.0, 0.5, 0.25, 0.1):
                cand = np.clip(th + a * np.nan_to_num(step), lo, hi)
                o = _batch_objective(law.name, cand, Z, ly, w, delta)
                better = o < best
                best = np.where(better, o, best)
                best_th[better] = cand[better]
                improved |= better
            TH[active], obj[active] = best_th, best
            lam[active] = np.where(improved, np.maximum(lam[active] / 3, 1e-12), lam[active] * 10)
    return TH, gn


@_one_blas_thread
def bootstrap_fit(fit: Fit, n_boot: int = 1000, seed: int = 0, level: float = LEVEL,
                  Y: np.ndarray | None = None) -> dict[str, Any]:
    """Bootstrap intervals of the fit's parameters, each resample refitted with the same Huber
    objective warm-started from the full-data optimum.

    With ``Y`` (``[n_boot, n]``: the points' losses in each resample of the measurement noise,
    :func:`noise_draws` -- training seeds and evaluation videos resampled) every draw refits those
    losses, so the intervals hold training and item noise (``kind: noise``). Without it the points
    (arms) are resampled with replacement (``kind: arms``: one seed, no per-video data).

    All resamples go through :func:`_irls_batch` at once; any whose projected gradient is still
    above ``GTOL`` is finished by L-BFGS-B (:func:`_minimize`) from there, or failing that from the
    full-data optimum (``n_lbfgsb`` counts them). Resamples with too few distinct points for the law
    are skipped, non-converged ones dropped; all counts are reported. Sets ``fit.boot`` (percentile
    intervals) and ``fit.draws`` (natural parameters); returns ``fit.boot``."""
    if n_boot < 1:
        raise FitError(f"{fit.label}: n_boot must be >= 1, got {n_boot}")
    law = fit.law
    Z = law.transform(fit.X)
    n = len(fit.y)
    valid = np.ones(n_boot, bool)
    if Y is not None:
        Y = np.asarray(Y, float)
        if Y.shape != (n_boot, n):
            raise FitError(f"{fit.label}: noise draws have shape {Y.shape}, expected {(n_boot, n)}")
        W = np.ones((n_boot, n))
        LY = np.log(np.where(Y > 0, Y, np.nan))
        valid = np.isfinite(LY).all(1)
        LY = np.where(np.isfinite(LY), LY, 0.0)
    else:
        rng = _seed_for(seed, fit.label)
        W = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(float)
        LY = np.broadcast_to(np.log(fit.y), W.shape)
        keys = [tuple(r) for r in fit.X.tolist()]
        for b in range(n_boot):
            used = np.flatnonzero(W[b] > 0)
            Xu = fit.X[used]
            if (len({keys[i] for i in used}) < law.n_params + 1
                    or (law.dims == 2 and (len(np.unique(Xu[:, 0])) < 2 or len(np.unique(Xu[:, 1])) < 2))
                    or np.ptp(fit.y[used]) <= 0):
                valid[b] = False
    draws = np.full((n_boot, law.n_params), np.nan)
    idx = np.flatnonzero(valid)
    TH, gn = _irls_batch(law, Z, LY[idx], W[idx], fit.theta, fit.delta)
    fallback = failed = 0
    for j, b in enumerate(idx):
        if gn[j] <= GTOL:
            draws[b] = law.natural(TH[j])
            continue
        fallback += 1
        u = W[b] > 0
        o = _minimize(law, Z[u], LY[b][u], W[b][u], TH[j], fit.delta, maxiter=500)
        if not o.converged:
            o = _minimize(law, Z[u], LY[b][u], W[b][u], fit.theta, fit.delta, maxiter=500)
        if not o.converged:
            failed += 1
            continue
        draws[b] = law.natural(o.theta)
    ok = np.all(np.isfinite(draws), axis=1)
    fit.draws = draws[ok]
    fit.boot = {
        "kind": "noise" if Y is not None else "arms",
        "n_boot": int(n_boot),
        "n_ok": int(ok.sum()),
        "n_skipped": int((~valid).sum()),
        "n_not_converged": int(failed),
        "n_lbfgsb": int(fallback),
        "seed": int(seed),
        "level": level,
        "ci": {name: _pct(fit.draws[:, i], level) for i, name in enumerate(law.names)},
        "median": {name: (float(np.median(fit.draws[:, i])) if ok.any() else None)
                   for i, name in enumerate(law.names)},
    }
    return fit.boot


def curve_band(fit: Fit, n_points: int = 64, level: float = LEVEL) -> dict[str, list[float]]:
    """Fitted 1-D curve on a log grid over the measured x range, with a bootstrap percentile band."""
    x = np.geomspace(fit.X[:, 0].min(), fit.X[:, 0].max(), n_points)
    out = {"x": x.tolist(), "fit": fit.predict(x[:, None]).tolist()}
    if fit.draws is not None and len(fit.draws):
        P = fit.law.predict_natural(fit.draws, x[:, None])
        lo, hi = np.percentile(P, [50 * (1 - level), 50 * (1 + level)], axis=0)
        out |= {"lo": lo.tolist(), "hi": hi.tolist()}
    return out


# ---------------------------------------------------------------------------------------------
# Model selection


def loo_error(fit: Fit, n_starts: int = 2) -> dict[str, Any]:
    """Leave one arm out: refit the law without each point (the same Huber objective, started from
    the full-data optimum and the best ``n_starts`` grid starts of the reduced data) and predict the
    point left out. ``loo_mae`` is the mean absolute log-loss error of those predictions: the
    estimator's own scale (its Huber delta is 1e-3, so it is an L1 fit) and a measure of how the law
    predicts arms it has not seen, which a Gaussian likelihood evaluated at the Huber optimum is not.
    A point whose removal leaves too few distinct points for the law is not scored."""
    law, X, y = fit.law, fit.X, fit.y
    errs: list[float | None] = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        Xk, yk = X[keep], y[keep]
        try:
            _check_data(law, Xk, yk, fit.label)
        except FitError:
            errs.append(None)
            continue
        Z, logy, w = law.transform(Xk), np.log(yk), np.ones(len(yk))
        wn = _weights(w, fit.delta)
        starts = sorted(law.starts(Xk, yk), key=lambda t: _huber_objective(t, law, Z, logy, wn, fit.delta)[0])
        best = None
        for s0 in [fit.theta, *starts[:n_starts]]:
            o = _minimize(law, Z, logy, w, s0, fit.delta)
            if best is None or (o.converged, -o.fun) > (best.converged, -best.fun):
                best = o
        pred = float(law.predict_natural(law.natural(best.theta), X[i:i + 1])[0])
        errs.append(abs(math.log(max(pred, TINY)) - math.log(y[i])) if best.converged else None)
    scored = [e for e in errs if e is not None]
    return {"loo_mae": float(np.mean(scored)) if scored else None, "loo_errors": errs, "loo_n": len(scored)}


def model_selection(fits: dict[str, Fit | None], study: str = "", method: str = "") -> list[dict[str, Any]]:
    """One row per form and the winner: the simplest law (fewest parameters) whose leave-one-arm-out
    error (:func:`loo_error`) is within one standard error of the lowest, among converged fits scored
    on the same points (Breiman's one-SE rule: nested laws predict almost alike, and the extra
    parameter must earn its place). The Gaussian log-likelihood, AIC, AICc and BIC
    (of log residuals at the Huber optimum) stay in the rows for reference but do not decide: they
    are not the likelihood the estimator maximises, and they picked a power law with offset for data
    drawn from a pure power law with one outlying arm (tests/test_fit.py)."""
    rows = []
    for form, f in fits.items():
        if f is None:
            continue
        loo = f.inference.get("loo") or loo_error(f)
        f.inference["loo"] = loo
        rows.append({"study": study, "method": method, "form": form, "formula": f.law.formula,
                     "n": len(f.y), "n_params": f.law.n_params, "loo_mae": loo["loo_mae"], "loo_n": loo["loo_n"],
                     "llf": f.inference["llf"], "aic": f.inference["aic"], "aicc": f.inference["aicc"],
                     "bic": f.inference["bic"], "r2": f.inference["r2"], "converged": f.converged})
    ok = [r for r in rows if r["converged"] and r["loo_mae"] is not None]
    n_common = min((r["loo_n"] for r in ok), default=0)
    ok = [r for r in ok if r["loo_n"] == n_common]  # compare forms on the same left-out points
    best = min(ok, key=lambda r: r["loo_mae"], default=None)
    se = 0.0
    if best is not None:  # one standard error of the best form's mean error: forms within it are as good
        e = np.array([x for x in fits[best["form"]].inference["loo"]["loo_errors"] if x is not None])
        se = float(e.std(ddof=1) / math.sqrt(len(e))) if len(e) > 1 else 0.0
    close = [r for r in ok if r["loo_mae"] <= best["loo_mae"] + se] if best is not None else []
    pick = min(close, key=lambda r: (r["n_params"], r["loo_mae"])) if close else None  # the simplest of those
    for r in rows:
        r["criterion"] = "loo_mae_1se"
        r["delta"] = r["loo_mae"] - best["loo_mae"] if r in ok else float("nan")
        r["within_1se"] = r in close
        r["selected"] = r is pick
    return rows


# ---------------------------------------------------------------------------------------------
# The optimum under a window T * M <= L


def allowed_token_counts(method: str = "pool") -> list[int]:
    """M values the token operator can produce (pool: ceil(27/k)^2; sample: squares <= 729)."""
    from visctx.context import GRID, poolable_token_counts

    if method == "pool":
        return sorted(poolable_token_counts())
    if method == "sample":
        return [m * m for m in range(1, GRID + 1)]
    raise FitError(f"unknown token method {method!r}; allowed: pool, sample")


def joint_params5(form: str, params: dict[str, float]) -> dict[str, float]:
    """A joint law's parameters as (E, A, alpha, B, beta): the law without offset has E = 0."""
    return {"E": 0.0, **params} if form == "joint_nooffset" else dict(params)


def joint_draws5(form: str, draws: np.ndarray) -> np.ndarray:
    """Bootstrap draws of a joint law as ``[n, 5]`` (E, A, alpha, B, beta) rows."""
    d = np.asarray(draws, float)
    return np.column_stack([np.zeros(len(d)), d]) if form == "joint_nooffset" else d


def _joint_params(params: dict[str, float] | Sequence[float]) -> np.ndarray:
    if isinstance(params, dict):
        try:
            return np.array([params.get("E", 0.0), params["A"], params["alpha"], params["B"], params["beta"]], float)
        except KeyError as e:
            raise FitError(f"joint parameters need E, A, alpha, B, beta; missing {e}") from None
    return np.asarray(params, float)


def joint_loss(params: dict[str, float] | Sequence[float], T: Any, M: Any) -> np.ndarray:
    """``E + A/T^alpha + B/M^beta``; ``params`` a dict or ``[..., 5]`` (E, A, alpha, B, beta)."""
    p = _joint_params(params)
    X = np.column_stack([np.ravel(T), np.ravel(M)]).astype(float)
    return LAWS["joint"].predict_natural(p, X)


def optimum_closed_form(params: dict[str, float] | Sequence[float], budget: float) -> dict[str, Any]:
    """min E + A/T^alpha + B/M^beta s.t. T*M = L. With M = L/T the Lagrange (stationarity) condition
    alpha*A*T^-alpha = beta*B*M^-beta gives T* = (alpha*A*L^beta / (beta*B))^(1/(alpha+beta)).

    Works on ``[..., 5]`` parameter arrays (bootstrap draws). T* is clipped to [1, L] (then the
    condition no longer holds: ``clipped``)."""
    p = _joint_params(params)
    E, A, al, B, be = (p[..., i] for i in range(5))
    L = float(budget)
    if not L >= 1:
        raise FitError(f"budget must be >= 1 token, got {budget}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logT = (np.log(al * A) + be * math.log(L) - np.log(be * B)) / (al + be)
        T = np.exp(logT)
    clipped = ~(np.isfinite(T) & (T >= 1) & (T <= L))
    T = np.clip(np.nan_to_num(T, nan=1.0, posinf=L, neginf=1.0), 1.0, L)
    degenerate = ~((al + be) > 0)
    T = np.where(degenerate, np.nan, T)
    M = L / T
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = E + A * T ** -al + B * M ** -be
    if np.ndim(T) == 0:
        return {"T": float(T), "M": float(M), "loss": float(loss), "tokens": L, "clipped": bool(clipped),
                "lagrange_residual": float(lagrange_residual(p, float(T), float(M)))}
    return {"T": T, "M": M, "loss": loss, "clipped": clipped}


def lagrange_residual(params: dict[str, float] | Sequence[float], T: float, M: float) -> float:
    """Relative gap of the condition alpha*A*T^-alpha = beta*B*M^-beta (0 at the optimum)."""
    E, A, al, B, be = _joint_params(params)
    lhs, rhs = al * A * T ** -al, be * B * M ** -be
    return float((lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300))


def _candidates(budget: int, method: str, t_max: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One candidate per producible M: the largest T with T*M <= L (and T <= t_max). The joint laws
    fall monotonically in T at fixed M (A, alpha >= 0), so no smaller T can win; enumerating every
    (T, M) instead held 1.5e9 candidates at L = 1e9."""
    Ts, Ms = [], []
    for M in allowed_token_counts(method):
        top = budget // M if t_max is None else min(budget // M, t_max)
        if top >= 1:
            Ts.append(top)
            Ms.append(M)
    if not Ts:
        raise FitError(f"no (T, M) with T*M <= {budget} for token method {method!r}")
    return np.asarray(Ts, float), np.asarray(Ms, float)


def optimum_brute_force(params: dict[str, float] | Sequence[float], budget: int, method: str = "pool",
                        t_max: int | None = None) -> dict[str, Any]:
    """Lowest predicted loss over every integer (T, M) with T*M <= L, M producible by ``method`` and
    T <= ``t_max``; on ``[n, 5]`` draws returns arrays (chunked: memory stays small)."""
    if budget < 1:
        raise FitError(f"budget must be >= 1 token, got {budget}")
    T, M = _candidates(int(budget), method, t_max)
    X = np.column_stack([T, M])
    p = _joint_params(params)
    if p.ndim == 1:
        loss = LAWS["joint"].predict_natural(p, X)
        i = int(np.argmin(loss))
        return {"T": int(T[i]), "M": int(M[i]), "tokens": int(T[i] * M[i]), "loss": float(loss[i]),
                "method": method, "t_max": t_max, "n_candidates": int(len(T))}
    out_T, out_M, out_l = (np.empty(len(p)) for _ in range(3))
    step = max(1, 2_000_000 // len(T))
    for s in range(0, len(p), step):
        loss = LAWS["joint"].predict_natural(p[s:s + step], X)
        i = np.argmin(loss, axis=1)
        out_T[s:s + step], out_M[s:s + step], out_l[s:s + step] = T[i], M[i], loss[np.arange(len(i)), i]
    return {"T": out_T, "M": out_M, "loss": out_l}


def optimum(params: dict[str, float] | Sequence[float], budget: int, method: str = "pool",
            t_max: int | None = None, draws: np.ndarray | None = None, level: float = LEVEL,
            trained: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """"For my window L, which (T, M)?": closed form and brute force, whether they agree, and
    percentile intervals over bootstrap ``draws`` ([n, 5] natural joint parameters) when given.

    ``agree`` is true only when the closed form is an interior solution (T* not clipped to the
    window's edge, T* <= t_max, M* within the producible token counts) and the brute-force M is one
    of the producible counts bracketing M*; each failed condition is listed in ``disagree``.
    ``trained`` ({"T": [lo, hi], "M": [lo, hi]}: the ranges the law was fitted on) adds
    ``extrapolated`` and a warning when an optimum lies outside them."""
    cf = optimum_closed_form(params, budget)
    bf = optimum_brute_force(params, budget, method, t_max)
    allowed = [m for m in allowed_token_counts(method) if m <= budget]
    below = [m for m in allowed if m <= cf["M"]]
    above = [m for m in allowed if m >= cf["M"]]
    neighbours = sorted({*(below[-1:]), *(above[:1])})
    disagree = []
    if cf["clipped"]:
        disagree.append(f"the closed form is clipped to the window's edge (T* = {cf['T']:.3g}, M* = {cf['M']:.3g})")
    if t_max is not None and cf["T"] > t_max:
        disagree.append(f"T* = {cf['T']:.1f} is above t_max = {t_max}, which the brute force respects")
    if not above:
        disagree.append(f"M* = {cf['M']:.1f} is above the largest producible M ({allowed[-1] if allowed else None})")
    if bf["M"] not in neighbours:
        disagree.append(f"the brute-force M = {bf['M']} does not bracket M* = {cf['M']:.1f} ({neighbours})")
    out: dict[str, Any] = {
        "budget": int(budget), "method": method, "t_max": t_max,
        "closed_form": cf, "brute_force": bf,
        "bracketing_M": neighbours,
        "agree": not disagree,
        "disagree": disagree,
        "loss_gap": float(bf["loss"] - cf["loss"]),
        "rel_loss_gap": float((bf["loss"] - cf["loss"]) / cf["loss"]),
    }
    if t_max is not None and cf["T"] > t_max:
        out["note"] = f"closed-form T*={cf['T']:.1f} exceeds t_max={t_max}; brute force respects it"
    if trained is not None:
        (tlo, thi), (mlo, mhi) = trained["T"], trained["M"]
        out["trained"] = {"T": [float(tlo), float(thi)], "M": [float(mlo), float(mhi)]}
        outside = [f"{name} = {v:.4g} outside the trained {name} range [{lo:g}, {hi:g}]"
                   for name, v, lo, hi in (("brute-force T", bf["T"], tlo, thi), ("brute-force M", bf["M"], mlo, mhi),
                                           ("T*", cf["T"], tlo, thi), ("M*", cf["M"], mlo, mhi))
                   if not lo <= v <= hi]
        out["extrapolated"] = bool(outside)
        out["warnings"] = outside
    if draws is not None and len(draws):
        d = np.asarray(draws, float)
        c = optimum_closed_form(d, budget)
        b = optimum_brute_force(d, budget, method, t_max)
        pct = lambda a: {"lo": _pct(a, level)[0], "hi": _pct(a, level)[1], "median": float(np.nanmedian(a))}
        Ms, counts = np.unique(b["M"], return_counts=True)
        out["bootstrap"] = {
            "n": int(len(d)), "level": level,
            "T_star": pct(c["T"]), "M_star": pct(c["M"]), "loss_star": pct(c["loss"]),
            "T": pct(b["T"]), "M": pct(b["M"]), "loss": pct(b["loss"]),
            "M_freq": {str(int(m)): float(k / len(d)) for m, k in zip(Ms, counts)},
        }
    return out


# ---------------------------------------------------------------------------------------------
# Inputs


ARMS_REQUIRED = ("arm", "T", "M", "token_op", "frame_op", "benchmark", "loss")
DESIGN_REQUIRED = ("study", "method", "T", "M", "arm")


def _read_csv(path: str | Path, required: Sequence[str], kind: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FitError(f"{path}: no such {kind} file")
    df = pd.read_csv(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FitError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    return df


def load_replicates(arms_csv: str | Path, benchmark: str = "synthetic") -> pd.DataFrame:
    """arms.csv rows of one benchmark: one per (arm, seed); a table without a ``seed`` column is
    one replicate (seed 0). A repeated (arm, seed) is an error, and so is an arm with other seeds."""
    path = Path(arms_csv)
    df = _read_csv(path, ARMS_REQUIRED, "arms")
    sub = df[df["benchmark"].astype(str) == benchmark].copy()
    if sub.empty:
        raise FitError(f"{path}: no rows for benchmark {benchmark!r}; available: "
                       f"{sorted(df['benchmark'].astype(str).unique())}")
    if "seed" not in sub:
        sub["seed"] = 0
    dup = sub[sub.duplicated(["arm", "seed"])]
    if not dup.empty:
        raise FitError(f"{path}: arm(s) {sorted(dup['arm'].unique())} appear more than once for benchmark "
                       f"{benchmark!r} and the same seed")
    seeds = sub.groupby("arm")["seed"].apply(lambda x: tuple(sorted(x)))
    if seeds.nunique() > 1:
        raise FitError(f"{path}: arms have different seeds ({seeds.value_counts().to_dict()})")
    return sub


def load_arms(arms_csv: str | Path, benchmark: str = "synthetic") -> pd.DataFrame:
    """One row per arm of one benchmark, indexed by arm id: numeric columns are the means over the
    training seeds (:func:`load_replicates`), with ``loss_sd`` (across seeds) and ``seeds``."""
    sub = load_replicates(arms_csv, benchmark)
    keys = ["arm", *(c for c in ("T", "M", "token_op", "frame_op", "pooled_from", "tokens", "benchmark")
                     if c in sub)]
    values = [c for c in sub.columns if c not in keys and c != "seed" and pd.api.types.is_numeric_dtype(sub[c])]
    g = sub.groupby(keys, sort=False)
    out = g[values].mean()
    out["loss_sd"] = g["loss"].std(ddof=1)
    out["seeds"] = g["seed"].nunique()
    return out.reset_index().set_index("arm", drop=False)


def noise_draws(replicates: pd.DataFrame, arms: Sequence[str], n_boot: int, seed: int = 0,
                videos_csv: str | Path | None = None, benchmark: str = "synthetic") -> np.ndarray | None:
    """``[n_boot, len(arms)]`` bootstrap losses of ``arms``: in each draw the training seeds are
    resampled with replacement (all arms together: the arms of one seed share its base) and, with
    ``videos_csv`` (per-video sums, :mod:`visctx.collect`), so are the evaluation videos (all arms
    together: they are asked the same questions); an arm's loss is then the mean over the drawn
    seeds of its answer NLL per token over the drawn videos. None when there is nothing to
    resample (one seed and no per-video data): the fits then resample arms instead."""
    seeds = sorted(replicates["seed"].unique().tolist())
    arms = list(arms)
    if len(seeds) < 2 and videos_csv is None:
        return None
    rng = np.random.default_rng([int(seed), zlib.crc32(b"noise")])
    S = np.stack([np.bincount(rng.integers(0, len(seeds), len(seeds)), minlength=len(seeds))
                  for _ in range(n_boot)]).astype(float)  # [B, R] seed counts
    if videos_csv is None:
        L = replicates.pivot_table(index="arm", columns="seed", values="loss").loc[arms, seeds].to_numpy(float)
        return (S @ L.T) / S.sum(1, keepdims=True)
    v = _read_csv(videos_csv, ("arm", "seed", "benchmark", "video", "nll", "ntok"), "videos")
    v = v[(v["benchmark"].astype(str) == benchmark) & v["arm"].isin(arms)]
    videos = sorted(v["video"].unique())
    nll = np.full((len(arms), len(seeds), len(videos)), np.nan)
    ntok = np.full_like(nll, np.nan)
    ai = {a: i for i, a in enumerate(arms)}
    si = {x: i for i, x in enumerate(seeds)}
    vi = {x: i for i, x in enumerate(videos)}
    a_, s_, v_ = (v["arm"].map(ai).to_numpy(), v["seed"].map(si).to_numpy(), v["video"].map(vi).to_numpy())
    if np.isnan(a_.astype(float)).any() or np.isnan(s_.astype(float)).any():
        raise FitError(f"{videos_csv}: rows for seeds or arms that arms.csv does not have")
    nll[a_, s_, v_] = v["nll"].to_numpy(float)
    ntok[a_, s_, v_] = v["ntok"].to_numpy(float)
    if np.isnan(nll).any():
        raise FitError(f"{videos_csv}: not every (arm, seed, video) of benchmark {benchmark!r} is there")
    V = np.stack([np.bincount(rng.integers(0, len(videos), len(videos)), minlength=len(videos))
                  for _ in range(n_boot)]).astype(float)  # [B, V] video counts
    per_seed = np.einsum("asv,bv->bas", nll, V) / np.einsum("asv,bv->bas", ntok, V)  # [B, arms, seeds]
    return np.einsum("bas,bs->ba", per_seed, S) / S.sum(1)[:, None]


def load_design(design_csv: str | Path) -> pd.DataFrame:
    from visctx.config import STUDIES

    df = _read_csv(design_csv, DESIGN_REQUIRED, "design")
    bad = sorted(set(df["study"]) - set(STUDIES))
    if bad:
        raise FitError(f"{design_csv}: unknown study {bad}; allowed: {', '.join(STUDIES)}")
    return df


def _losses(arms: pd.DataFrame, ids: Iterable[str], where: str) -> np.ndarray:
    """Losses of ``ids`` in order; missing arms and NaN losses are errors that name the arms."""
    ids = list(ids)
    missing = [a for a in ids if a not in arms.index]
    if missing:
        raise FitError(f"{where}: arm(s) {missing} are in the design but not in arms.csv for this benchmark")
    loss = arms.loc[ids, "loss"].astype(float).to_numpy()
    bad = [a for a, v in zip(ids, loss) if not np.isfinite(v)]
    if bad:
        raise FitError(f"{where}: loss is NaN/missing for arm(s) {bad}")
    return loss


def joint_data(arms: pd.DataFrame, design: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(arms of the joint fit, held-out window arms): token pool + frame sample arms of the tokens,
    frames and joint studies, without any arm of the window study (held out for the prediction)."""
    window = list(dict.fromkeys(design.loc[design["study"] == "window", "arm"]))
    cand = list(dict.fromkeys(design.loc[design["study"].isin(JOINT_STUDIES), "arm"]))
    out = []
    for a in cand:
        if a in window or a not in arms.index:
            continue
        row = arms.loc[a]
        if row["token_op"] == "pool" and row["frame_op"] == "sample":
            out.append(a)
    return out, window


# ---------------------------------------------------------------------------------------------
# The whole analysis


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy -> python, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _fit_forms(forms: Sequence[str], X: np.ndarray, y: np.ndarray, ids: list[str], key: str,
               errors: list[dict], strict: bool) -> dict[str, Fit | None]:
    out: dict[str, Fit | None] = {}
    for form in forms:
        label = f"{key}/{form}"
        try:
            f = fit_law(form, X, y, arms=ids, label=label)
        except FitError as e:
            if strict:
                raise
            errors.append({"fit": label, "error": str(e)})
            out[form] = None
            continue
        if not f.converged:
            msg = (f"{label}: optimizer did not converge (status {f.opt.status}: {f.opt.message}; "
                   f"projected gradient {f.opt.grad_norm:.2g} > {GTOL})")
            if strict:
                raise FitError(msg)
            errors.append({"fit": label, "error": msg})
        out[form] = f
    return out


def _boot_job(args: tuple[Fit, int, int, np.ndarray | None]) -> tuple[dict[str, Any], np.ndarray]:
    fit, n_boot, seed, Y = args
    bootstrap_fit(fit, n_boot, seed, Y=Y)
    return fit.boot, fit.draws


def default_workers() -> int:
    """CPU cores this process may use (the bootstrap runs one fit per worker process)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def bootstrap_all(fits: Sequence[Fit], n_boot: int, seed: int, workers: int | None = None,
                  draws: tuple[np.ndarray, list[str]] | None = None) -> None:
    """Bootstrap every fit, in ``workers`` processes (fork) when asked (None/1: in this process;
    0: every usable CPU). Seeds depend only on (seed, fit label), so results do not depend on the
    number of workers or the order. ``n_boot = 0`` skips the bootstrap (no intervals). ``draws``:
    (:func:`noise_draws` of some arms, those arms): each fit refits the draws of its own arms, so
    all fits see the same resampled seeds and videos."""
    fits = list(fits)
    col = {a: i for i, a in enumerate(draws[1])} if draws is not None else {}
    Ys = [draws[0][:, [col[a] for a in f.arms]] if draws is not None else None for f in fits]
    workers = 1 if workers is None else (default_workers() if workers == 0 else max(1, int(workers)))
    workers = min(workers, len(fits))
    if n_boot < 0:
        raise FitError(f"n_boot must be >= 0, got {n_boot}")
    if n_boot == 0 or not fits:
        return
    if workers > 1 and "fork" in mp.get_all_start_methods():
        order = sorted(range(len(fits)), key=lambda i: -len(fits[i].y) * fits[i].law.n_params)  # big jobs first
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            results = list(ex.map(_boot_job, [(fits[i], n_boot, seed, Ys[i]) for i in order]))
        for i, (boot, d) in zip(order, results):
            fits[i].boot, fits[i].draws = boot, d
    else:
        for f, Y in zip(fits, Ys):
            bootstrap_fit(f, n_boot, seed, Y=Y)


@_one_blas_thread
def run_fits(arms_csv: str | Path, design_csv: str | Path, budget: int, n_boot: int = 1000, seed: int = 0,
             benchmark: str = "synthetic", *, t_max: int | None = None, strict: bool = False,
             workers: int | None = None, videos_csv: str | Path | None = None) -> dict[str, Any]:
    """Every fit of the study (JSON-serialisable): tokens x {sample, pool} vs M, frames x
    {sample, pool} vs T (forms power_offset, power, linear), the joint law (joint, joint_nooffset),
    model selection, the optimum at ``budget`` with bootstrap intervals, and the window prediction
    check. ``t_max`` caps T in the brute-force optimum (e.g. the frames kept per video).

    Absent studies are skipped. Bad inputs raise :class:`FitError`; a fit that cannot be made (too
    few points, constant losses) or does not converge is recorded under ``errors`` (``strict``:
    raised). ``workers`` processes share the bootstrap (default 1; 0 = every CPU this process may
    use); the result does not depend on it. The points are the arms' means over the training
    seeds; with several seeds (and ``videos_csv``, the per-video table) the bootstrap resamples
    seeds and evaluation videos (:func:`noise_draws`), else the arms."""
    from visctx import cpu

    kernels = cpu.check(torch=False)  # float64 exp/log differ between NumPy's AVX2 and AVX-512 kernels
    replicates = load_replicates(arms_csv, benchmark)
    arms = load_arms(arms_csv, benchmark)
    design = load_design(design_csv)
    errors: list[dict] = []
    out: dict[str, Any] = {
        "version": 1, "benchmark": benchmark, "budget": int(budget), "n_boot": int(n_boot), "seed": int(seed),
        "cpu": kernels,
        "level": LEVEL, "huber_delta": HUBER_DELTA, "gtol": GTOL, "t_max": t_max,
        "inputs": {"arms_csv": str(arms_csv), "design_csv": str(design_csv), "n_arms": int(len(arms)),
                   "videos_csv": None if videos_csv is None else str(videos_csv),
                   "seeds": sorted(int(x) for x in replicates["seed"].unique())},
        "fits": {}, "model_selection": [], "optimum": None, "prediction": None, "errors": errors,
    }
    groups: list[tuple[str, str, dict[str, Any], dict[str, Fit | None]]] = []
    for study, xname in STUDY_X.items():
        rows = design[design["study"] == study]
        fixed_name = "T" if xname == "M" else "M"
        for method in sorted(rows["method"].unique(), key=lambda m: (m != "sample", m)):
            sub = rows[rows["method"] == method].drop_duplicates("arm").sort_values(xname)
            fixed = sorted(sub[fixed_name].unique().tolist())
            if len(fixed) != 1:
                raise FitError(f"{design_csv}: the {study} study ({method}) should fix {fixed_name}, "
                               f"but has {fixed_name} = {fixed}")
            ids = sub["arm"].tolist()
            y = _losses(arms, ids, f"{arms_csv} ({study}/{method})")
            X = sub[[xname]].to_numpy(float)
            fits = _fit_forms(FORMS_1D, X, y, ids, f"{study}/{method}", errors, strict)
            entry = {"x": xname, "fixed": {fixed_name: int(fixed[0])}, "arms": ids}
            groups.append((study, method, entry, fits))
    ids, window = joint_data(arms, design)
    if ids:
        y = _losses(arms, ids, f"{arms_csv} (joint)")
        X = arms.loc[ids, ["T", "M"]].to_numpy(float)
        fits = _fit_forms(FORMS_2D, X, y, ids, "joint", errors, strict)
        cand = set(design.loc[design["study"].isin(JOINT_STUDIES), "arm"])
        overlap = [a for a in window if a in cand]  # also in another study: held out all the same
        groups.append(("joint", "pool", {"x": ["T", "M"], "arms": ids, "held_out": window,
                                         "held_out_overlap": overlap}, fits))

    to_boot = [f for *_, fits in groups for f in fits.values() if f is not None]
    fitted = list(dict.fromkeys(a for f in to_boot for a in f.arms))
    Y = noise_draws(replicates, fitted, n_boot, seed, videos_csv, benchmark) if n_boot and fitted else None
    bootstrap_all(to_boot, n_boot, seed, workers, None if Y is None else (Y, fitted))
    out["bootstrap"] = {"kind": "arms" if Y is None else "noise",
                        "resampled": ["arms"] if Y is None else ["seeds"] + (["videos"] if videos_csv else [])}

    joint: Fit | None = None
    for study, method, entry, fits in groups:
        if all(f is None for f in fits.values()):  # every form failed: the reasons are in errors
            continue
        sel = model_selection(fits, study, method)
        lof = {form: _lack_of_fit(f, arms) for form, f in fits.items() if f is not None}
        for row in sel:
            row |= {"lof_F": (lof[row["form"]] or {}).get("F"), "lof_p": (lof[row["form"]] or {}).get("p")}
        out["model_selection"] += sel
        entry["selected"] = next((r["form"] for r in sel if r["selected"]), None)
        entry["forms"] = {}
        for form, f in fits.items():
            if f is None:
                continue
            d = f.to_dict() | {"lack_of_fit": lof[form]}
            if f.law.dims == 1:
                d["curve"] = curve_band(f)
            elif f.draws is not None:  # `visctx optimum` answers other windows from these
                d["draws"] = f.draws.tolist()
            entry["forms"][form] = d
        if study == "joint":
            out["fits"]["joint"] = entry
            joint = fits.get("joint")
        else:
            out["fits"].setdefault(study, {})[method] = entry
    joint_entry = out["fits"].get("joint")
    if joint_entry and joint_entry.get("selected"):  # the optimum, contours and Table 3 use the selected law
        form = joint_entry["selected"]
        joint = next(fits for study, _, _, fits in groups if study == "joint")[form]
        opt_draws = None if joint.draws is None else joint_draws5(form, joint.draws)
        trained = {"T": [float(joint.X[:, 0].min()), float(joint.X[:, 0].max())],
                   "M": [float(joint.X[:, 1].min()), float(joint.X[:, 1].max())]}
        out["optimum"] = optimum(joint_params5(form, joint.params), budget, "pool", t_max, opt_draws,
                                 trained=trained)
        out["optimum"] |= {"converged": joint.converged, "form": form, "at_bound": joint.at_bound()}
        if window:
            out["prediction"] = prediction_check(joint, arms, window, str(arms_csv), out["optimum"])
    return _clean(out)


def _lack_of_fit(fit: Fit, arms: pd.DataFrame) -> dict[str, Any] | None:
    """:func:`lack_of_fit` of one fit, its pure error from the across-seed SDs of its arms' losses."""
    rows = arms.loc[fit.arms]
    return lack_of_fit(fit.y, fit.predict(fit.X), rows["loss_sd"].to_numpy(float) ** 2,
                       int(rows["seeds"].min()), fit.law.n_params)


def prediction_check(joint: Fit, arms: pd.DataFrame, window: list[str], where: str = "arms.csv",
                     opt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict the held-out window arms with the joint law: per-arm error, whether the empirically
    best arm is the predicted best, and how often each arm is predicted best across the bootstrap."""
    obs = _losses(arms, window, f"{where} (window)")
    T = arms.loc[window, "T"].to_numpy(float)
    M = arms.loc[window, "M"].to_numpy(float)
    pred = joint.predict(np.column_stack([T, M]))
    rows = []
    P = None
    if joint.draws is not None and len(joint.draws):
        P = joint.law.predict_natural(joint.draws, np.column_stack([T, M]))
        winners = np.bincount(np.argmin(P, axis=1), minlength=len(window)) / len(P)
    for i, a in enumerate(window):
        r = {"arm": a, "T": int(T[i]), "M": int(M[i]), "tokens": int(T[i] * M[i]), "observed": float(obs[i]),
             "predicted": float(pred[i]), "error": float(pred[i] - obs[i]),
             "rel_error": float((pred[i] - obs[i]) / obs[i])}
        if P is not None:
            r["predicted_ci"] = _pct(P[:, i], LEVEL)
            r["p_best"] = float(winners[i])
        rows.append(r)
    best_obs, best_pred = window[int(np.argmin(obs))], window[int(np.argmin(pred))]
    out: dict[str, Any] = {
        "arms": rows, "best_observed": best_obs, "best_predicted": best_pred, "best_match": best_obs == best_pred,
        "mae": float(np.mean(np.abs(pred - obs))), "mape": float(np.mean(np.abs(pred - obs) / obs)),
    }
    if len(window) >= 3:
        from scipy.stats import spearmanr

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["spearman"] = float(spearmanr(obs, pred).statistic)
    if opt is not None:
        Mstar = opt["closed_form"]["M"]
        near = window[int(np.argmin(np.abs(np.log(M) - math.log(Mstar))))]
        out["nearest_to_optimum"] = near
        out["optimum_matches_best"] = near == best_obs
    return out


def dumps(obj: Any) -> str:
    """Indented JSON with innermost numeric lists on one line (bootstrap draws stay readable)."""
    text = json.dumps(obj, indent=1, allow_nan=False)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)


def write_fits(arms_csv: str | Path, design_csv: str | Path, budget: int, n_boot: int = 1000, seed: int = 0,
               benchmark: str = "synthetic", *, out_json: str | Path, t_max: int | None = None,
               strict: bool = False, workers: int | None = None, videos_csv: str | None = None) -> dict[str, Any]:
    """:func:`run_fits` and write the result to ``out_json`` (compact numeric lists); returns it.

    Args:
        arms_csv, design_csv: ``collect``'s tables.
        budget: the window L (visual tokens) of the optimum.
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap.
        benchmark: whose losses are fitted.
        out_json: the fits to write.
        t_max: cap on T in the brute-force optimum (e.g. the frames kept per video).
        strict: raise on a fit that cannot be made or does not converge (else recorded under
            ``errors``).
        workers: processes sharing the bootstrap (default 1; 0: every CPU this process may use).
        videos_csv: ``collect``'s per-video table: the bootstrap then resamples evaluation videos
            as well as training seeds.
    """
    res = run_fits(arms_csv, design_csv, budget, n_boot, seed, benchmark, t_max=t_max, strict=strict,
                   workers=workers, videos_csv=videos_csv)
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(res) + "\n")
    return res


def load_fits(fits_json: str | Path) -> dict[str, Any]:
    path = Path(fits_json)
    if not path.exists():
        raise FitError(f"{path}: no such fits file (run `python -m visctx.fit run ...` first)")
    return json.loads(path.read_text())


def optimum_from_fits(fits: dict[str, Any] | str | Path, budget: int, method: str = "pool",
                      t_max: int | None = None, level: float = LEVEL, form: str | None = None) -> dict[str, Any]:
    """Answer "for my window L, which (T, M)?" from a fits.json: its selected joint law (``form``
    another one), the bootstrap draws, and the (T, M) range the law was fitted on."""
    where = str(fits) if not isinstance(fits, dict) else "fits"
    fits = load_fits(fits) if not isinstance(fits, dict) else fits
    try:
        entry = fits["fits"]["joint"]
        form = form or entry.get("selected") or "joint"
        j = entry["forms"][form]
    except (KeyError, TypeError):
        raise FitError(f"{where}: no joint fit {form or ''} (needs token-pool x frame-sample arms varying both T "
                       f"and M)") from None
    draws = np.asarray(j.get("draws") or [], float).reshape(-1, LAWS[form].n_params)
    X = np.asarray(j["x"], float).reshape(-1, 2)
    trained = {"T": [X[:, 0].min(), X[:, 0].max()], "M": [X[:, 1].min(), X[:, 1].max()]}
    out = optimum(joint_params5(form, j["params"]), budget, method, t_max,
                  joint_draws5(form, draws) if len(draws) else None, level, trained=trained)
    out |= {"converged": j["converged"], "form": form, "at_bound": j.get("at_bound", [])}
    return _clean(out)


def format_optimum(res: dict[str, Any]) -> str:
    """The human answer to "for my window L, which (T, M)?" (``visctx optimum``)."""
    bf, cf, bs = res["brute_force"], res["closed_form"], res.get("bootstrap")
    lines = [f"window L = {res['budget']} tokens, token method {res['method']}"
             + (f", T <= {res['t_max']}" if res["t_max"] else ""),
             f"best (T, M) = ({bf['T']}, {bf['M']}): {bf['tokens']} tokens, predicted loss {bf['loss']:.4f}"]
    if bs:
        lines.append(f"  {int(100 * bs['level'])}% bootstrap interval: T in [{bs['T']['lo']:.0f}, {bs['T']['hi']:.0f}], "
                     f"M in [{bs['M']['lo']:.0f}, {bs['M']['hi']:.0f}] (n = {bs['n']})")
    lines.append(f"closed form (Lagrange): T* = {cf['T']:.1f}, M* = {cf['M']:.1f}, loss {cf['loss']:.4f}"
                 + (f"; T* in [{bs['T_star']['lo']:.1f}, {bs['T_star']['hi']:.1f}], "
                    f"M* in [{bs['M_star']['lo']:.1f}, {bs['M_star']['hi']:.1f}]" if bs else ""))
    if res["agree"]:
        lines.append(f"agreement: the closed form is interior and the brute-force M brackets M* "
                     f"(M {res['bracketing_M']}), loss gap {res['loss_gap']:.2g}")
    else:
        lines += [f"NO agreement: {why}" for why in res.get("disagree", [])]
    for w in res.get("warnings", []):
        lines.append(f"warning: extrapolated: {w}")
    if res.get("at_bound"):
        lines.append(f"warning: the joint law ({res.get('form')}) has parameters at a bound: {res['at_bound']}")
    if not res.get("converged", True):
        lines.append("warning: the joint fit did not converge; do not rely on this answer")
    return "\n".join(lines)


def optimum_cli(fits: str, budget: int, method: str = "pool", t_max: int | None = None,
                as_json: bool = False, form: str | None = None) -> None:
    """For a window of ``budget`` visual tokens, which (T, M)? Printed with bootstrap intervals and a
    warning where the answer lies outside the (T, M) range the law was fitted on.

    Args:
        fits: ``fits``' JSON.
        budget: the window L (visual tokens).
        method: the token operator (``pool`` or ``sample``): which M it can make.
        t_max: cap on T (e.g. the frames kept per video).
        as_json: print the answer as JSON.
        form: the joint law to answer with (default: the one model selection chose).
    """
    res = optimum_from_fits(fits, budget, method, t_max, form=form)
    print(json.dumps(res, indent=1) if as_json else format_optimum(res))
