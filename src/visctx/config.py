"""Params: loading, the preset switch, validation, and the one mapping from studies to arms.

``config/config.yaml`` (every setting, documented) under ``params.yaml`` (the experiment's knobs
and overrides) are the single source of truth, DVC's and Snakemake's alike (:func:`raw_params`). The
``studies`` section is data; :func:`study_points` is the only place that turns it into arms, so an
arm requested by two studies is one arm, trained once.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from visctx.context import GRID, MASK_OPS, pool_kernel, poolable_token_counts

TOKEN_OPS = ("sample", "pool", *MASK_OPS)
FRAME_OPS = ("sample", "pool")
# The frame study's methods: a frame operator over the study's token method, or LongViViT's random
# masking of M tokens in each sampled frame (per frame or as a tube), which is how it reaches 128+ frames
FRAME_STUDY_METHODS = (*FRAME_OPS, "mask", "tube")
STUDIES = ("tokens", "frames", "joint", "window", "methods")
# The ways to spend one window of L visual tokens (the ``methods`` study): a token operator, or
# Video-XL's summary tokens (:func:`method_arm`).
WINDOW_METHODS = (*TOKEN_OPS, "summary")


class ParamsError(ValueError):
    """A bad value in params.yaml; the message names the key, the value and what is allowed."""


@dataclass(frozen=True, order=True)
class Arm:
    """One trained model: T frames x M tokens per frame, made by one token and one frame operator.

    ``pooled_from``: frame pooling -- that many uniformly sampled frames are mean-pooled into the
    T frames (adaptive temporal bins, :func:`visctx.context.time_bins`); 0 is plain frame
    sampling, and pooling T frames into T is the same arm, trained once.

    Random masking (``token_op`` in :data:`visctx.context.MASK_OPS`) keeps any 1 <= M <= 27*27
    tokens; ``masktrain`` / ``tubetrain`` are evaluated pooled to M, so their M must be poolable.

    ``summary`` = r > 1: Video-XL's summary tokens (:mod:`visctx.summary`): one learned summary
    token after every r of the T*M raw tokens, in windows of ``summary_window`` = w raw tokens,
    after each of which only the summaries' keys and values are kept. Id tail ``-vst<r>w<w>``.
    """

    T: int
    M: int
    token_op: str = "pool"
    pooled_from: int = 0
    summary: int = 1
    summary_window: int = 0

    def __post_init__(self) -> None:
        if self.T < 1 or self.M < 1 or self.pooled_from < 0:
            raise ValueError(f"arm needs positive T, M and pooled_from >= 0; got {self}")
        if self.pooled_from and self.pooled_from < self.T:
            raise ValueError(f"arm {self}: pooling {self.pooled_from} frames cannot give T={self.T} frames")
        if self.pooled_from == self.T:  # pooling T into T pools nothing: the sampling arm
            object.__setattr__(self, "pooled_from", 0)
        if self.token_op not in TOKEN_OPS:
            raise ValueError(f"unknown token_op {self.token_op!r}; allowed: {', '.join(TOKEN_OPS)}")
        r, w = self.summary, self.summary_window
        if r < 1 or (r > 1) != (w > 0) or 0 < w < r:
            raise ValueError(f"summary tokens need a ratio r > 1 and a window w >= r raw tokens (r = 1, w = 0: "
                             f"none); got r={self.summary}, w={self.summary_window}")
        if self.token_op == "pool":
            pool_kernel(self.M)
        elif self.token_op in MASK_OPS:
            if self.M > GRID * GRID:
                raise ValueError(f"random masking keeps M <= {GRID * GRID} of the {GRID}x{GRID} tokens, got M={self.M}")
            if not MASK_OPS[self.token_op][1]:  # evaluated on the grid pooled to M
                pool_kernel(self.M)
        elif math.isqrt(self.M) ** 2 != self.M or self.M > GRID * GRID:
            raise ValueError(f"token sampling needs a square M <= {GRID * GRID}, got M={self.M}")

    @property
    def frame_op(self) -> str:
        return "pool" if self.pooled_from else "sample"

    @property
    def frames(self) -> int:
        """Frames read from the video: the T sampled, or the ``pooled_from`` pooled into T."""
        return self.pooled_from or self.T

    @property
    def kernel(self) -> int:
        """Spatial pool kernel k (token pooling)."""
        return pool_kernel(self.M)

    @property
    def side(self) -> int:
        return math.isqrt(self.M)

    @property
    def tokens(self) -> int:
        """Visual tokens in the LLM's context: T * M."""
        return self.T * self.M

    @property
    def summary_layout(self) -> tuple[int, int] | None:
        """(r, w) of the summary tokens, None without: what the prompt layout needs."""
        return (self.summary, self.summary_window) if self.summary > 1 else None

    @property
    def summaries(self) -> int:
        """Summary tokens in the visual stream: ceil(n / r) for each window of n <= w raw tokens."""
        if self.summary == 1:
            return 0
        n, w = self.tokens, self.summary_window
        return (n // w) * -(-w // self.summary) + -(-(n % w) // self.summary)

    @property
    def kept_tokens(self) -> int:
        """Visual tokens whose keys and values the text after the video attends to: the T*M, or
        the summaries (what a window L bounds when the arms are compared at equal L)."""
        return self.summaries or self.tokens

    @property
    def id(self) -> str:
        tail = f"-from{self.pooled_from}" if self.pooled_from else ""
        tail += f"-vst{self.summary}w{self.summary_window}" if self.summary > 1 else ""
        return f"T{self.T}-M{self.M}-{self.token_op}{tail}"

    @classmethod
    def from_id(cls, arm_id: str) -> "Arm":
        try:
            base, vst, tail = arm_id.partition("-vst")
            r, _, w = tail.partition("w") if vst else ("1", "", "0")
            summary = dict(summary=int(r), summary_window=int(w))
            if vst and summary["summary"] < 2:  # r = 1 is no summary tokens: the plain id
                raise ValueError
            parts = base.split("-")
            T, M, op = int(parts[0].removeprefix("T")), int(parts[1].removeprefix("M")), parts[2]
            src = int(parts[3].removeprefix("from")) if len(parts) > 3 else 0
            if (not parts[0].startswith("T") or not parts[1].startswith("M") or len(parts) > 4
                    or (len(parts) > 3 and not parts[3].startswith("from"))):
                raise ValueError
        except (IndexError, ValueError):
            raise ValueError(f"not an arm id: {arm_id!r} (expected e.g. T32-M49-pool, T8-M49-pool-from32 or "
                             f"T8-M196-pool-vst4w784)") from None
        return cls(T, M, op, src, **summary)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.summary == 1:  # an arm without summary tokens keeps the record it always had
            del d["summary"], d["summary_window"]
        else:
            d["kept_tokens"] = self.kept_tokens
        return {**d, "frame_op": self.frame_op, "id": self.id, "tokens": self.tokens}


@functools.lru_cache(maxsize=None)
def parse_arm(arm_id: str) -> Arm:
    """:meth:`Arm.from_id`, parsed once per id (the model reads a batch's arm on every forward)."""
    return Arm.from_id(arm_id)


@dataclass(frozen=True)
class StudyPoint:
    """One row of a study's design: which arm answers (study, method, T, M)."""

    study: str
    method: str  # the operator the study varies: 'sample' or 'pool'
    T: int
    M: int
    arm: Arm


def frame_arm(T: int, M: int, frame_op: str, source: int, token_op: str = "pool") -> Arm:
    """Frame pooling pools ``source`` uniformly sampled frames into T, at every T < source; a
    masking method (:data:`FRAME_STUDY_METHODS`) samples T frames and keeps M random tokens of each."""
    if frame_op in ("mask", "tube"):
        return Arm(T, M, frame_op)
    return Arm(T, M, token_op, source if frame_op == "pool" else 0)


def method_arm(method: str, T: int, M: int, ratio: int = 4, window: int = 0) -> Arm:
    """The arm by which ``method`` spends a window of L = T*M visual tokens (what the text after
    the video attends to): a token operator's (T, M) arm, or for ``summary`` Video-XL's summary
    tokens at ratio r over r*M pooled raw tokens per frame, in windows of ``window`` raw tokens
    (0: one frame, r*M; a multiple of r), which keep exactly T*M summaries."""
    if method != "summary":
        return Arm(T, M, method)
    w = window or ratio * M
    if w % ratio:
        raise ValueError(f"window={w} raw tokens is not a multiple of the ratio r={ratio}: the summaries would "
                         f"not come to T*M={T * M}")
    try:
        return Arm(T, ratio * M, "pool", summary=ratio, summary_window=w)
    except ValueError as e:
        raise ValueError(f"summary tokens at r={ratio}: {ratio}*M={ratio * M} raw tokens per frame must be a pooled "
                         f"token count ({e})") from None


def study_points(studies: dict[str, Any]) -> list[StudyPoint]:
    """Expand the ``studies`` section into design points (the only study -> arm mapping)."""
    points: list[StudyPoint] = []
    s = studies.get("tokens")
    if s:
        for method in s["methods"]:
            for M in s["tokens"]:
                points.append(StudyPoint("tokens", method, s["frames"], M, Arm(s["frames"], M, method)))
    s = studies.get("frames")
    if s:
        for method in s["methods"]:
            for T in s["frames"]:
                arm = frame_arm(T, s["tokens"], method, s["pool_source"], s["token_method"])
                points.append(StudyPoint("frames", method, T, s["tokens"], arm))
    s = studies.get("joint")
    if s:
        for M in s["tokens"]:
            for T in s["frames"]:
                points.append(StudyPoint("joint", s["token_method"], T, M, Arm(T, M, s["token_method"])))
    s = studies.get("window")
    if s:
        for T, M in s["combos"]:
            points.append(StudyPoint("window", s["token_method"], T, M, Arm(T, M, s["token_method"])))
    s = studies.get("methods")
    if s:
        for method in s["methods"]:
            for T, M in s["combos"]:
                arm = method_arm(method, T, M, s["summary_ratio"], s.get("summary_window", 0))
                points.append(StudyPoint("methods", method, T, M, arm))
    return points


def method_of(arm: Arm) -> str:
    """The ``methods`` study's name for how ``arm`` spends its window (inverse of :func:`method_arm`)."""
    return "summary" if arm.summary > 1 else arm.token_op


def base_arms(params: dict) -> list[Arm]:
    """The arms the shared base is trained on: every study arm (``train.base.arms: studies``), or
    a pinned list, so that changing a study retrains only the arms it adds or changes."""
    pinned = params["train"]["base"].get("arms", "studies")
    if pinned == "studies":
        return unique_arms(study_points(params["studies"]))
    return [Arm.from_id(str(a)) for a in pinned]


def unique_arms(points: Iterable[StudyPoint]) -> list[Arm]:
    """Arms in first-requested order, each once."""
    return list(dict.fromkeys(p.arm for p in points))


# ---------------------------------------------------------------------------------------------
# Loading and validation


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_preset(params: dict) -> dict:
    """Apply ``presets[preset]`` over the top-level values (the one-switch paper preset)."""
    name = params.get("preset")
    presets = params.get("presets") or {}
    if name in (None, "embedded"):
        return params
    if name not in presets:
        raise ParamsError(f"preset: {name!r} is not defined; allowed: embedded, {', '.join(presets)}")
    return deep_merge(params, presets[name])


def _schema_errors(params: dict, schema: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path)):
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
        out.append(f"{key or '<top level>'}: {err.message}")
    return out


def _token_count_error(key: str, M: int, method: str) -> str | None:
    if method in MASK_OPS:
        if M > GRID * GRID:
            return f"{key}={M}: random masking keeps M <= {GRID * GRID} of the {GRID}x{GRID} tokens"
        if MASK_OPS[method][1]:
            return None
        method = "pool"  # masked in training only: evaluated on the grid pooled to M
    if method == "pool":
        allowed = poolable_token_counts()
        if M not in allowed:
            return (f"{key}={M}: mean pooling of the {GRID}x{GRID} grid (kernel = stride = k, zero-padded) "
                    f"gives M in {allowed}")
    elif math.isqrt(M) ** 2 != M or M > GRID * GRID:
        return f"{key}={M}: token sampling keeps an m x m sub-grid, so M must be a square number <= {GRID * GRID}"
    return None


def semantic_errors(params: dict) -> list[str]:
    """Checks a JSON schema cannot express: producible token counts, windows, frame budgets."""
    errs: list[str] = []
    studies = params.get("studies", {})
    max_frames = params.get("data", {}).get("extract", {}).get("max_frames")

    def frames_ok(key: str, T: int) -> None:
        if max_frames is not None and T > max_frames:
            errs.append(f"{key}={T}: above data.extract.max_frames={max_frames}, the frames kept per video")

    s = studies.get("tokens") or {}
    for method in s.get("methods", []):
        for i, M in enumerate(s.get("tokens", [])):
            if e := _token_count_error(f"studies.tokens.tokens[{i}] (method {method})", M, method):
                errs.append(e)
    if "frames" in s:
        frames_ok("studies.tokens.frames", s["frames"])
    s = studies.get("frames") or {}
    if "tokens" in s and (e := _token_count_error("studies.frames.tokens", s["tokens"], s.get("token_method", "pool"))):
        errs.append(e)
    for i, T in enumerate(s.get("frames", [])):
        frames_ok(f"studies.frames.frames[{i}]", T)
    if max_frames is not None and s.get("pool_source", 0) > max_frames:
        errs.append(f"studies.frames.pool_source={s['pool_source']}: above data.extract.max_frames={max_frames}")
    s = studies.get("joint") or {}
    for i, M in enumerate(s.get("tokens", [])):
        if e := _token_count_error(f"studies.joint.tokens[{i}]", M, s.get("token_method", "pool")):
            errs.append(e)
    for i, T in enumerate(s.get("frames", [])):
        frames_ok(f"studies.joint.frames[{i}]", T)
    budget = params.get("window")  # the window L: one key for both studies and the optimum
    s = studies.get("window") or {}
    for i, combo in enumerate(s.get("combos", [])):
        T, M = combo
        if e := _token_count_error(f"studies.window.combos[{i}] M", M, s.get("token_method", "pool")):
            errs.append(e)
        frames_ok(f"studies.window.combos[{i}] T", T)
        if budget is not None and T * M > budget:
            errs.append(f"studies.window.combos[{i}]=[{T}, {M}]: T*M={T * M} is above the window "
                        f"window={budget}; allowed: T*M <= {budget}")
    s = studies.get("methods") or {}
    for i, combo in enumerate(s.get("combos", [])):
        T, M = combo
        frames_ok(f"studies.methods.combos[{i}] T", T)
        if budget is not None and T * M > budget:
            errs.append(f"studies.methods.combos[{i}]=[{T}, {M}]: T*M={T * M} is above the window "
                        f"window={budget}; allowed: T*M <= {budget}")
        for method in s.get("methods", []):
            if method == "summary":
                try:
                    method_arm("summary", T, M, s.get("summary_ratio", 4), s.get("summary_window", 0))
                except ValueError as e:
                    errs.append(f"studies.methods.combos[{i}]=[{T}, {M}] (method summary): {e}")
            elif e := _token_count_error(f"studies.methods.combos[{i}] M (method {method})", M, method):
                errs.append(e)
    for part in ("base", "arm"):
        t = params.get("train", {}).get(part, {})
        if t.get("group_by_video") and t.get("length_groups"):
            errs.append(f"train.{part}.group_by_video=true with train.{part}.length_groups={t['length_groups']}: "
                        f"batches are grouped by video or by text length, not both")
    if "arms" in params.get("train", {}).get("arm", {}):
        errs.append("train.arm.arms: only train.base has a mixture of arms (each arm trains on itself)")
    pinned = params.get("train", {}).get("base", {}).get("arms", "studies")
    if isinstance(pinned, list):
        for i, arm_id in enumerate(pinned):
            try:
                arm = Arm.from_id(str(arm_id))
            except ValueError as e:
                errs.append(f"train.base.arms[{i}]={arm_id!r}: not an arm id ({e})")
                continue
            frames_ok(f"train.base.arms[{i}] T", arm.frames)
    model = params.get("model", {})
    if model.get("vision_trainable") and model.get("vision_features") != "forward":
        errs.append(f"model.vision_trainable=true: a trainable tower runs in the forward; set "
                    f"model.vision_features=forward (got {model.get('vision_features')!r})")
    scale = params.get("train", {}).get("scale")
    if scale:  # impossible combinations, before any job starts (hardware is not probed here)
        from visctx.strategy import check_scale

        try:
            check_scale(**scale)
        except ValueError as e:
            errs.append(str(e))
    for name in params.get("evaluate", {}).get("benchmarks", []):
        for key in ("annotations", "video_root"):
            if name != "synthetic" and not params.get("benchmarks", {}).get(name, {}).get(key):
                errs.append(f"benchmarks.{name}.{key}=null: evaluate.benchmarks lists {name}, so it needs "
                            f"the path of its {'published annotations' if key == 'annotations' else 'videos'}")
    return errs


def validate(params: dict, schema: dict | None = None) -> dict:
    """Raise :class:`ParamsError` listing every bad key; return ``params`` unchanged when valid."""
    errs = _schema_errors(params, schema if schema is not None else load_schema())
    if not errs:  # semantic checks assume the shapes the schema guarantees
        errs = semantic_errors(params)
    if errs:
        raise ParamsError("invalid params:\n  " + "\n  ".join(errs))
    return params


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "params.schema.yaml"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


DEFAULTS = Path("config") / "config.yaml"  # beside params.yaml: every setting, documented


def _read_mapping(path: Path) -> dict:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def raw_params(path: str | Path = "params.yaml") -> dict:
    """The params as written, before the preset: ``config/config.yaml`` beside ``path`` (every
    setting, documented), with ``path`` deep-merged over it (the experiment's knobs and overrides:
    what ``dvc exp run -S`` rewrites and ``dvc exp show`` lists). Why two files: DVC shows every key
    of params.yaml as a column (it had 328) and rewrites it on ``-S``, moving its comments; a params
    file without ``config/`` beside it is read alone."""
    path = Path(path)
    params = _read_mapping(path)
    defaults = path.parent / DEFAULTS
    return deep_merge(_read_mapping(defaults), params) if defaults.is_file() else params


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> dict:
    """Read (:func:`raw_params`), apply overrides and the preset, validate; the resolved dict is
    what every stage sees (Snakemake reads the same two files: ``configfile`` twice)."""
    params = raw_params(path)
    if overrides:
        params = deep_merge(params, overrides)
    return validate(resolve_preset(params))


def dumps(obj: Any) -> str:
    """Stable JSON for rule params (Snakemake reruns a job when its params change)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# What each DVC stage reads of the resolved params (its preset applied). Each stage depends on its
# file under results/params (written by `visctx params`, the first stage) instead of on keys of
# params.yaml: DVC then reruns a stage exactly when what it reads changed, whichever preset or key
# moved it, and `dvc exp show` lists only the few knobs the params stage declares, not 150 keys.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "data": ("seed", "data", "model", "features", "evaluate.benchmarks", "benchmarks"),
    "train": ("seeds", "ceiling", "studies", "train", "evaluate", "model"),
    "analyze": ("analysis", "window", "data.extract.max_frames", "ceiling"),
    "niah": ("seeds", "ceiling", "data.extract.fps", "studies.frames", "studies.methods", "evaluate.batch_size",
             "model.vision_features"),
}


def stage_params(resolved: dict, stage: str) -> dict:
    """``{dotted key: value}`` of what ``stage`` reads (:data:`STAGE_PARAMS`) in resolved params."""
    out = {}
    for key in STAGE_PARAMS[stage]:
        value: Any = resolved
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ParamsError(f"{key}: missing from the resolved params (stage {stage})")
            value = value[part]
        out[key] = value
    return out


def write_stage_params(params: str = "params.yaml", out_dir: str = "results/params") -> dict:
    """Write each DVC stage's resolved params to ``<out_dir>/<stage>.json`` (see :data:`STAGE_PARAMS`).

    Args:
        params: the params file, read as the workflow reads it (preset resolved, validated).
        out_dir: where the per-stage files go (DVC's deps of the stages).
    """
    from visctx.files import atomic_path

    resolved = load_params(params)
    templated = _read_mapping(Path(params)).get("results")  # what dvc.yaml's ${results} paths are built from
    if templated != resolved["results"]:
        raise ParamsError(f"results: preset {resolved.get('preset')!r} writes under {resolved['results']!r}, but "
                          f"{params}'s results (the root of DVC's stage paths) is {templated!r}: set both, e.g. "
                          f"`dvc exp run -S preset={resolved.get('preset')} -S results={resolved['results']}`")
    written = {}
    for stage in STAGE_PARAMS:
        path = Path(out_dir) / f"{stage}.json"
        values = stage_params(resolved, stage)
        text = json.dumps(values, indent=1, sort_keys=True, allow_nan=False) + "\n"
        if not path.is_file() or path.read_text() != text:  # unchanged: keep its mtime
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        written[stage] = str(path)
    return written


def describe(params: str = "params.yaml") -> dict:
    """Validate a params file and list each study's design points and the unique arms to train.

    Args:
        params: the params file (YAML), as the workflow reads it: its preset resolved, then
            validated against the schema.
    """
    resolved = load_params(params)
    points = study_points(resolved["studies"])
    arms = unique_arms(points)
    return {
        "preset": resolved.get("preset"),
        "studies": {s: [f"{p.method} T={p.T} M={p.M} -> {p.arm.id}" for p in points if p.study == s]
                    for s in STUDIES if s in resolved["studies"]},
        "arms": [a.id for a in arms],
        "n_arms": len(arms),
    }
