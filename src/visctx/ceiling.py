"""The information ceiling of every arm: how much of each answer its exact context can recover.

A synthetic study knows its answer. For every evaluation question this module takes the scene
spec (:mod:`visctx.synth`) and the arm's exact context -- which extracted frames it samples or
pools into which temporal bins (:func:`visctx.context.time_bins`), which patches each token
samples or averages (the zero-padded k x k cells of :func:`visctx.context.pool_grid`) -- and
decides what is recoverable, then the Bayes-optimal cross-entropy of the answer word and the
accuracy of the best guess among the options. Training can approach it; the gap is what the
tiny model fails to learn.

The rule (stated, and pinned by ``tests/test_ceiling.py`` on hand-built scenes):

* An object's *share* of a token is the fraction of the (frame, patch) pairs the token averages
  that show it: temporal fraction of its bin times the covered fraction of its cell (zeros of the
  padding count), or 1/0 for a sampled patch.
* A coloured object is *carried* by a token (the chroma rule, :func:`seen_bins`) when the token's
  chroma -- share x the colour's (U, V), summed over the coloured objects in it (:func:`chroma`) --
  exceeds ``chroma_noise`` and points nearest the object's colour among the palette's, and the
  object's own part exceeds ``chroma_noise`` too. Why chroma: the background is grey, so a token's
  chroma is its objects' alone and any share of a colour shifts it, diluted but not hidden (the
  share rule this replaces, share >= 1/4, said a 1-token pool never reads the still object; trained
  arms read it 3 times in 4). Two colours in one token mix: the reader sees the mixture's hue.
  Decoding blurs chroma across columns, so the cells beside an object hold 1/8 of its chroma
  (:data:`CHROMA_LEAK`). ``chroma_noise`` (``ceiling.chroma_noise``, 0.1 of a level of the
  encoder's 8-bit chroma) is above the chroma of the decoded corpus's pooled tokens that hold no
  object's chroma (x264 keeps a flat grey chroma plane exact) and under the 0.16 that one cell of
  a colour gives the coarsest token (k = 27); ``tests/test_ceiling.py`` measures both on a
  rendered video.
* The white blinker has no chroma: it is carried where its share is at least ``threshold``
  (``ceiling.visible_share``: its luma must rise above the background's static texture) and larger
  than any other object's share of that token (the share rule).
* Whose colour a token carries, the reader (:class:`Reader`) tells from where the token is: each
  task has its zone (:func:`visctx.synth.zones`), and a token that reaches only one coloured
  task's zone (*pure*) says whose its colour is. A token spanning zones (a coarse pool: at M = 4
  every token holds the order band and another zone) does not: a colour there may be the needle's
  or an order colour's. The reader's evidence for a question is every colour a token reaching the
  question's zone carries, each as its *kind* (:func:`signature`: how much of its token the zone
  is -- pure, major, minor --, in how many bins it is carried -- all, most, some: the still object
  is there throughout -- and, for order and episodic, its place in time), colours left out (they
  are drawn alike); its belief, P(which candidate is the answer | that signature), is counted on
  the training split's scenes under the same arm (the held-out questions are not counted); a
  signature seen seldom leans on the same one without the time classes (:func:`coarse`). The
  ceiling's loss is -ln of the answer's probability (the rest of the answer
  space shares "none of them" evenly), its accuracy the best option's. This is the ceiling;
  beside it (``loss_known``, ``accuracy_known``) stands the rule below, which knows every colour's
  question from where its object is -- generous where tokens span zones (the frame study's M = 4
  above all), the ceiling of earlier versions.
* needle, detail: recoverable iff seen; else the answer is uniform over the colours.
* count: the seen bins form runs; r runs are a lower bound on n (a showing cannot split in two,
  two can merge); the posterior is uniform over r..4 (counts, uniform a priori).
* order (A first, then B): both seen and every bin of A before every bin of B: known; both seen
  otherwise: 1/2 each; only A seen: A first with 1/2; only B seen: B first with 1/2, else one of
  the other 5 colours; neither: uniform.
* episodic (the colour before c2, which the question names): c1 and c2 seen, c1's bins before
  c2's: known; else uniform over the 5 colours other than c2.

The cross-entropy is that of the answer word among the answers the question can have (the model
scores it over its whole vocabulary, which holds at least those), so an arm that sees nothing
sits at the prior: ln 6 for a colour, ln 4 for a count.

That rule is a *model* of what a token can be read for, not a bound: it credits a reader with
every colour whose chroma the features hold, while it does not credit reading a mixture apart
across frames (strict there); the reader's signature keeps a candidate's kind and order, not its
exact bins or sizes (strict where those would tell). Beside it stands an accuracy **bound** that
no model of these features can exceed, whatever its tower or tokens (:func:`bound_item`): a tower
sees each frame whole, so what an arm's context can hold at most is what its *frames* show -- an
object is *shown* in the bins where some frame of the bin shows it, whatever M and the token
operator. Given that, generously:

* needle, detail: shown -> 1, else 1/options (a uniform answer among random options).
* order: A shown -> 1; only B shown -> 1/(options - 1) (B, always an option, ruled out); neither:
  1/options. episodic: c1 shown -> 1; else c3 shown -> 1/(options - 1); else 1/options.
* count: with pooled frames, shown -> 1 (a bin's mean holds the showings' total time); with sampled
  frames the evidence is r, the runs of bins that show the blinker: the bound is the best any
  function of r does on these very items (for each r, the most frequent n among its items),
  which can only overstate what r allows.

The same evidence bounds the **loss** (:func:`loss_bound_item`): the model scores the answer word
over its vocabulary without seeing the options, so the least expected cross-entropy given what the
frames show is the entropy of a uniform answer among those still possible -- 0 when shown; ln 6
for an unseen colour, ln 5 when only B (order) is shown, ln 4 when only c3 (episodic: c2 is named)
is; a count over sampled frames (or pooled frames that never show the blinker) gets the least
cross-entropy any function of r reaches on these items, the empirical entropy of n given r
(:func:`count_loss_bound`). Colours are drawn independently per task, so other objects tell nothing.

``visctx ceiling-check`` sets every trained arm against both (``results/tables/ceiling_check.*``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from visctx.config import Arm
from visctx.context import GRID, MASK_OPS, mask_indices, mask_seed, time_bins, uniform_indices

N_COLOURS = 6
MAX_COUNT = 4


def frame_seconds(spec: dict[str, Any], extract_fps: float, max_frames: int) -> list[int]:
    """The second each extracted frame shows (what the feature store holds, in order)."""
    from visctx.video import frame_indices

    fps = spec["fps"]
    return [k // fps for k in frame_indices(spec["seconds"] * fps, fps, extract_fps, max_frames)]


def context(arm: Arm, seconds: Sequence[int], grid: int = GRID, video: str | None = None
            ) -> tuple[list[list[int]], np.ndarray]:
    """(each temporal bin's seconds, ``[M, grid, grid]`` weight of each patch in each token, or
    ``[T, M, grid, grid]`` where the tokens differ per frame): the arm's exact context on a video
    whose extracted frames show ``seconds``.

    Random masking at evaluation keeps the very patches the evaluation keeps (the mask of
    ``video`` under the arm, :func:`visctx.context.mask_seed`); ``*train`` masking is evaluated
    pooled. Summary tokens can carry at most what their raw tokens carry: their ceiling is the
    raw stream's (an upper bound, not an exact value)."""
    if arm.summary > 1:
        arm = dataclasses.replace(arm, summary=1, summary_window=0)
    if arm.token_op in MASK_OPS and not MASK_OPS[arm.token_op][1]:
        arm = dataclasses.replace(arm, token_op="pool")
    picked = [seconds[i] for i in uniform_indices(len(seconds), arm.frames)]
    bins = ([picked[a:b] for a, b in time_bins(len(picked), arm.T)] if arm.pooled_from
            else [[s] for s in picked])
    if arm.token_op in MASK_OPS:
        if video is None:
            raise ValueError(f"arm {arm.id} masks each video at random: its ceiling needs the video's key")
        idx = mask_indices(mask_seed(video, arm.id), arm.T, grid * grid, arm.M, MASK_OPS[arm.token_op][0]).numpy()
        W = np.zeros((arm.T, arm.M, grid * grid))
        W[np.arange(arm.T)[:, None], np.arange(arm.M)[None, :], idx] = 1.0
        return bins, W.reshape(arm.T, arm.M, grid, grid)
    W = np.zeros((arm.M, grid, grid))
    if arm.token_op == "pool":
        k, side = arm.kernel, math.isqrt(arm.M)
        for i in range(side):
            for j in range(side):
                W[i * side + j, i * k:(i + 1) * k, j * k:(j + 1) * k] = 1.0 / (k * k)  # zeros of the pad count
    else:
        pts = uniform_indices(grid, math.isqrt(arm.M))
        for a, r in enumerate(pts):
            for b, c in enumerate(pts):
                W[a * len(pts) + b, r, c] = 1.0
    return bins, W


# Decoding blurs chroma across columns (not rows) by (1/8, 3/4, 1/8) per cell: the cells left and
# right of a coloured object hold 1/8 of its chroma (measured on the corpus's mp4s read by decord
# at 54 px, pinned by tests/test_ceiling.py), so a token there holds a trace of it.
CHROMA_LEAK = 0.125

# Shares are sums of cell weights: a share of exactly 1/4, or two objects' equal shares, must not be
# decided by the order of a floating-point sum (the rule compares within this tolerance).
TIE = 1e-9


def shares(things: list[dict[str, Any]], bins: list[list[int]], W: np.ndarray, leak: float = 0.0) -> np.ndarray:
    """``[objects, T, M]``: each object's share of each token; ``leak``: of its chroma instead,
    its cells blurred across columns by (leak, 1 - 2 leak, leak) (:data:`CHROMA_LEAK`)."""
    grid = W.shape[-1]
    out = np.zeros((len(things), len(bins), W.shape[-3]))
    on = _on_screen(things, bins)
    frac_all = np.stack([on[:, b].sum(1) / len(b) for b in bins], 1)  # [objects, T]: the mean of visible()
    for o, t in enumerate(things):
        r, c, side = *t["cell"], t["side"]
        r1, ce = min(r + side, grid), min(c + side, grid)  # its cells on the grid
        c0, c1 = (max(c - 1, 0), min(ce + 1, grid)) if leak else (c, ce)  # the columns it reaches
        mask = np.zeros((r1 - r, c1 - c0))
        mask[:, c - c0:ce - c0] = 1.0
        if leak:
            pad = np.zeros((r1 - r, c1 - c0 + 2))
            pad[:, 1:-1] = mask
            mask = (1 - 2 * leak) * mask + leak * (pad[:, :-2] + pad[:, 2:])  # what leaves the grid is lost
        cover = (W[..., r:r1, c0:c1] * mask).sum((-2, -1))  # [M], or [T, M] for tokens that differ per frame
        frac = frac_all[o]  # [T]
        out[o] = frac[:, None] * (cover if cover.ndim == 2 else cover[None, :])
    return out


def _on_screen(things: list[dict[str, Any]], bins: list[list[int]]) -> np.ndarray:
    """``[objects, seconds]``: 1 where :func:`visctx.synth.visible` (vectorised: the ceiling runs
    on every scene of both splits under every arm)."""
    span = max([s + d for t in things for s, d in t["shows"]] + [max(max(b) for b in bins) + 1])
    on = np.zeros((len(things), span), dtype=np.int64)
    for o, t in enumerate(things):
        for s, d in t["shows"]:
            on[o, max(s, 0):s + d] = 1
    return on


def chroma(rgb: Sequence[float]) -> np.ndarray:
    """The (U, V) chroma of an RGB colour, centred on grey (0, 0), in the levels of the corpus's
    encoder (the BT.601 limited-range coefficients of :func:`visctx.synth.rgb_to_yuv420p`, without
    its integer rounding): what a colour adds to a token's chroma, scaled by its share. Grey and
    white have none. ``tests/test_ceiling.py`` pins it to the encoder's planes."""
    r, g, b = (float(x) for x in rgb)
    return np.array([(-38 * r - 74 * g + 112 * b) / 256, (112 * r - 94 * g - 18 * b) / 256])


def _colour_chroma(colour: str) -> np.ndarray:
    from visctx.synth import PALETTE, WHITE

    return chroma(WHITE if colour == "white" else PALETTE[colour])


def seen_bins(sh: np.ndarray, threshold: float, colours: Sequence[str] | None = None,
              chroma_noise: float | None = None, chroma_sh: np.ndarray | None = None) -> list[np.ndarray]:
    """For each object, the bins in which some token carries it.

    With ``colours`` and ``chroma_noise`` (the chroma rule): a coloured object is carried by a
    token whose chroma -- the sum over the coloured objects there of share x the colour's
    :func:`chroma` -- rises above ``chroma_noise`` and points nearest the object's own colour among
    the palette's, while the object's own part rises above it too. The background is grey, so a
    token's chroma is the objects' alone; two colours mix (red and green in equal shares read as
    yellow, red and cyan cancel). ``chroma_sh``: the shares of the objects' chroma (with its
    leak beside them, :func:`shares`; default ``sh``). Achromatic objects (the white blinker)
    keep the share rule below.

    Without them (the share rule): share >= threshold and above every other object's share of
    that token."""
    return [np.flatnonzero(c.any(1)) for c in carried_tokens(sh, threshold, colours, chroma_noise, chroma_sh)]


def carried_tokens(sh: np.ndarray, threshold: float, colours: Sequence[str] | None = None,
                   chroma_noise: float | None = None, chroma_sh: np.ndarray | None = None) -> np.ndarray:
    """``[objects, T, M]``: whether each token of each bin carries each object (the rule of
    :func:`seen_bins`, which says in which bins)."""
    others = np.zeros_like(sh)
    for o in range(len(sh)):
        rest = np.delete(sh, o, axis=0)
        others[o] = rest.max(0) if len(rest) else 0.0
    carried = (sh >= threshold - TIE) & (sh > others + TIE)
    if colours is not None and chroma_noise is not None:
        from visctx.synth import PALETTE

        csh = sh if chroma_sh is None else chroma_sh
        chi = np.stack([_colour_chroma(c) for c in colours])  # [objects, 2]
        mix = np.einsum("otm,oc->tmc", csh, chi)  # [T, M, 2]: each token's chroma
        hues = np.stack([_colour_chroma(c) for c in PALETTE])
        hues /= np.linalg.norm(hues, axis=1, keepdims=True)
        cos = mix @ hues.T  # [T, M, palette]: projection on each palette hue
        nearest, top2 = cos.argmax(-1), np.sort(cos, -1)[..., -2:]
        unique = top2[..., 1] - top2[..., 0] > TIE  # a tie names no colour
        readable = (np.linalg.norm(mix, axis=-1) >= chroma_noise - TIE) & unique
        index = {c: i for i, c in enumerate(PALETTE)}
        for o, c in enumerate(colours):
            if c in index:
                carried[o] = readable & (nearest == index[c]) & (csh[o] * np.linalg.norm(chi[o]) >= chroma_noise - TIE)
    return carried


def carried_bins(things: list[dict[str, Any]], bins: list[list[int]], W: np.ndarray, threshold: float,
                 chroma_noise: float | None = None) -> list[np.ndarray]:
    """:func:`seen_bins` of ``things`` in a context (``bins``, ``W``: :func:`context`): the chroma
    rule with the chroma's leak beside each object where ``chroma_noise`` is given, else the share rule."""
    return [np.flatnonzero(c.any(1)) for c in _carried(things, bins, W, threshold, chroma_noise)]


def _carried(things: list[dict[str, Any]], bins: list[list[int]], W: np.ndarray, threshold: float,
             chroma_noise: float | None = None) -> np.ndarray:
    sh = shares(things, bins, W)
    if chroma_noise is None:
        return carried_tokens(sh, threshold)
    return carried_tokens(sh, threshold, [t["colour"] for t in things], chroma_noise,
                          shares(things, bins, W, CHROMA_LEAK))


def shown_bins(things: list[dict[str, Any]], bins: list[list[int]]) -> list[np.ndarray]:
    """For each object, the bins in which some frame shows it: what any vision tower could pass on
    (a tower sees a whole frame, and its tokens may mix every patch of it)."""
    on = _on_screen(things, bins)
    shown = np.stack([on[:, b].any(1) for b in bins], 1)  # [objects, T]
    return [np.flatnonzero(row) for row in shown]


def bound_item(task: str, shown: dict[str, np.ndarray], options: Sequence[str], pooled: bool) -> float | None:
    """The accuracy bound of one question from the bins where each object is shown (keys as in
    :func:`item_ceiling`); ``None`` for a count over sampled frames, which :func:`arm_ceiling`
    bounds over the arm's items together (the best function of the runs r)."""
    k = len(options)
    if task in ("needle", "detail"):
        return 1.0 if len(shown[task]) else 1.0 / k
    if task == "order":
        return 1.0 if len(shown["order0"]) else 1.0 / (k - 1) if len(shown["order1"]) else 1.0 / k
    if task == "episodic":
        return 1.0 if len(shown["episodic0"]) else 1.0 / (k - 1) if len(shown["episodic2"]) else 1.0 / k
    if task == "count":
        return (1.0 if len(shown["count"]) else None) if pooled else None
    raise ValueError(f"unknown task {task!r}")


def loss_bound_item(task: str, shown: dict[str, np.ndarray], spec: dict[str, Any], pooled: bool) -> float | None:
    """The least expected cross-entropy of one answer word given the bins where each object is
    shown (keys as in :func:`item_ceiling`): ln of how many answers stay possible, none ruled out
    by the options (the model does not see them); ``None`` for a count that :func:`count_loss_bound`
    bounds over the arm's items together."""
    from visctx.synth import answer_space

    n = len(answer_space(task, spec))
    if task in ("needle", "detail"):
        return 0.0 if len(shown[task]) else math.log(n)
    if task == "order":  # only B shown: B is not the first of the pair
        return 0.0 if len(shown["order0"]) else math.log(n - 1) if len(shown["order1"]) else math.log(n)
    if task == "episodic":  # the space already leaves out c2 (the question names it); c3 shown rules c3 out
        return 0.0 if len(shown["episodic0"]) else math.log(n - 1) if len(shown["episodic2"]) else math.log(n)
    if task == "count":
        return 0.0 if pooled and len(shown["count"]) else None
    raise ValueError(f"unknown task {task!r}")


def count_loss_bound(runs: Sequence[int], answers: Sequence[str]) -> np.ndarray:
    """Per count item, -ln of its true count's frequency among the items with the same runs r: the
    mean is the empirical entropy of n given r, the least cross-entropy any function of r reaches on
    these items (the loss counterpart of :func:`count_bound`)."""
    runs, answers = np.asarray(runs), np.asarray(answers)
    out = np.zeros(len(runs))
    for r in np.unique(runs):
        sel = runs == r
        values, counts = np.unique(answers[sel], return_counts=True)
        freq = dict(zip(values, counts / sel.sum()))
        out[sel] = [-math.log(freq[a]) for a in answers[sel]]
    return out


def count_bound(runs: Sequence[int], answers: Sequence[int]) -> np.ndarray:
    """Per count item, 1 where the best guess from its runs r is right: for each r the most frequent
    true count among the items with that r (ties: the smallest). Its mean is the best accuracy any
    function of r reaches on these items."""
    runs, answers = np.asarray(runs), np.asarray(answers)
    out = np.zeros(len(runs))
    for r in np.unique(runs):
        sel = runs == r
        values, counts = np.unique(answers[sel], return_counts=True)
        out[sel] = answers[sel] == values[np.argmax(counts)]
    return out


def _runs(b: np.ndarray) -> int:
    return 0 if len(b) == 0 else 1 + int((np.diff(b) > 1).sum())


def _before(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) > 0 and len(b) > 0 and a.max() < b.min()


def item_ceiling(task: str, spec: dict[str, Any], seen: dict[str, np.ndarray], options: Sequence[str],
                 answer: int) -> tuple[float, float]:
    """(Bayes cross-entropy of the answer word, accuracy of the best option) for one question,
    given the bins where each object is seen (keys: needle, count, order0, order1, detail,
    episodic0..2)."""
    right = options[answer]
    if task in ("needle", "detail"):
        if len(seen[task]):
            return 0.0, 1.0
        return math.log(N_COLOURS), 1.0 / len(options)
    if task == "count":
        r = max(1, _runs(seen["count"]))
        n_post = MAX_COUNT - r + 1  # counts r..4 equally likely
        acc = 1.0 / n_post if int(right) >= r else 0.0
        return math.log(n_post), acc
    if task == "order":
        a, b = seen["order0"], seen["order1"]
        if len(a) and len(b):
            return (0.0, 1.0) if _before(a, b) else (math.log(2), 0.5)
        if len(a):  # A first or not: 1/2; the best option is A
            return math.log(2), 1.0
        if len(b):  # B first with 1/2 (a wrong answer), else one of the 5 other colours
            return math.log(2 * (N_COLOURS - 1)), 0.0
        return math.log(N_COLOURS), 1.0 / len(options)
    if task == "episodic":
        if _before(seen["episodic0"], seen["episodic1"]):
            return 0.0, 1.0
        return math.log(N_COLOURS - 1), 1.0 / len(options)
    raise ValueError(f"unknown task {task!r}")


def _seen_by_key(spec: dict[str, Any], arm: Arm, seconds: Sequence[int], threshold: float,
                 chroma_noise: float | None = None) -> dict[str, np.ndarray]:
    return _evidence(spec, arm, seconds, threshold, chroma_noise)[0]


def _evidence(spec: dict[str, Any], arm: Arm, seconds: Sequence[int], threshold: float,
              chroma_noise: float | None = None, roles: dict | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict[str, tuple[np.ndarray, str]]]]:
    """(bins where each object is seen by the rule of :func:`seen_bins`, bins where a frame shows
    it, by key; and the colours a reader of the tokens finds for each question: :func:`candidates`).
    ``roles``: a memo for :func:`_roles` shared by the calls of one arm."""
    things, bins, W, carried = _tokens(spec, arm, seconds, threshold, chroma_noise)
    keys = [t["task"] + (str(t["which"]) if "which" in t else "") for t in things]
    return (dict(zip(keys, (np.flatnonzero(c.any(1)) for c in carried))), dict(zip(keys, shown_bins(things, bins))),
            _read(things, carried, _roles(W, spec["grid"], {} if roles is None else roles)))


def _roles(W: np.ndarray, grid: int, memo: dict) -> dict[str, np.ndarray]:
    """:func:`token_roles` of ``W``: once per grid for one arm (its tokens are the same cells on every
    video), but each video's own for a random mask (``W.ndim == 4``: a mask per video)."""
    if W.ndim == 4:
        return token_roles(W)
    if grid not in memo:
        memo[grid] = token_roles(W)
    return memo[grid]


def _tokens(spec: dict[str, Any], arm: Arm, seconds: Sequence[int], threshold: float,
            chroma_noise: float | None) -> tuple[list[dict[str, Any]], list[list[int]], np.ndarray, np.ndarray]:
    """(the scene's objects, the arm's bins and token weights on it: :func:`context`, which objects
    each token carries: :func:`carried_tokens`)."""
    from visctx.synth import objects

    things = objects(spec)
    bins, W = context(arm, seconds, spec["grid"], spec.get("video"))
    return things, bins, W, _carried(things, bins, W, threshold, chroma_noise)


def _read(things: list[dict[str, Any]], carried: np.ndarray, roles: dict[str, np.ndarray]
          ) -> dict[str, dict[str, tuple[np.ndarray, str]]]:
    return {task: candidates(task, things, carried, roles) for task in READ_TASKS}


# ---------------------------------------------------------------------------------------------
# The reader: which question a colour answers, as the tokens tell it

READ_TASKS = ("needle", "order", "detail", "episodic")  # the questions answered by a colour
SMOOTHING = 0.5  # add-1/2 (Jeffreys) counts for each outcome of a coarse signature: unseen ones stay possible
BACKOFF = 2.0  # pseudo-counts a signature borrows from its coarse one (Reader.posterior)


def token_roles(W: np.ndarray) -> dict[str, np.ndarray]:
    """For each task whose objects are coloured, how much of each token (``[M]``, or ``[T, M]``
    where the tokens differ per frame) is its zone: 1 where the token reaches no other coloured
    task's zone, else the fraction of the token's cells in coloured zones that lie in this one
    (0 where only the chroma's leak reaches it, :data:`CHROMA_LEAK`: the token's cells widened by a
    column on each side; -1 where not even that). The count's white blinker names no colour, so
    its zone confuses none of them."""
    from visctx.synth import zones

    z = zones(W.shape[-1])
    reach = W > 0
    wide = reach.copy()
    wide[..., :, 1:] |= reach[..., :, :-1]
    wide[..., :, :-1] |= reach[..., :, 1:]
    cells = {t: reach[..., z[t][0]:z[t][1], z[t][2]:z[t][3]].sum((-2, -1)) for t in READ_TASKS}
    meets = {t: wide[..., z[t][0]:z[t][1], z[t][2]:z[t][3]].any((-2, -1)) for t in READ_TASKS}
    total = sum(cells.values())
    out = {}
    for t in READ_TASKS:
        alone = ~np.any([meets[u] for u in READ_TASKS if u != t], axis=0)
        frac = np.where(total > 0, cells[t] / np.maximum(total, 1), 0.0)
        out[t] = np.where(~meets[t], -1.0, np.where(alone, 1.0, frac))
    return out


def _role_class(share: float) -> str:
    """A token's share of a zone (:func:`token_roles`) as the reader weighs it."""
    return "pure" if share >= 1.0 else "major" if share >= 0.5 else "minor"


def candidates(task: str, things: list[dict[str, Any]], carried: np.ndarray, roles: dict[str, np.ndarray]
               ) -> dict[str, tuple[np.ndarray, str]]:
    """Every colour a token that reaches ``task``'s zone carries (``carried``: ``[objects, T, M]``,
    :func:`carried_tokens`), whichever object it is: colour -> (the bins it is carried in there,
    the most the zone holds of a token carrying it: ``pure`` -- no other coloured task's zone in
    it, so the reader knows whose it is --, ``major`` (at least half of its coloured zones' cells)
    or ``minor``). A token spanning two zones (a coarse pool) does not tell whose colour it holds:
    that is what :class:`Reader` weighs."""
    from visctx.synth import PALETTE

    shape = carried.shape[1:]
    share = np.broadcast_to(roles[task], shape)
    out: dict[str, tuple[set, float]] = {}
    for o, thing in enumerate(things):
        if thing["colour"] not in PALETTE:
            continue
        hit = carried[o] & (share >= 0)
        if hit.any():
            b, best = out.get(thing["colour"], (set(), -1.0))
            out[thing["colour"]] = (b | set(np.flatnonzero(hit.any(1)).tolist()), max(best, float(share[hit].max())))
    return {c: (np.array(sorted(b), dtype=int), _role_class(best)) for c, (b, best) in out.items()}


def _time_class(bins: np.ndarray, T: int) -> str:
    """How much of the video a candidate is carried in: the still object's mark (every bin), most
    of it (3/4 or more: the still object where a colour passing through its token hides it), or
    some; with one bin there is no telling."""
    if T < 2:
        return ""
    return "all" if len(bins) == T else "most" if T >= 4 and len(bins) >= 0.75 * T else "some"


def signature(task: str, spec: dict[str, Any], cands: dict[str, tuple[np.ndarray, str]], T: int
              ) -> tuple[tuple, list[str]]:
    """(what a reader of the tokens knows of a question, colours left out; the candidate colours
    in the signature's order). Colours are drawn alike, so the evidence is each candidate's kind --
    how much of its token is the question's zone (:func:`candidates`) and how much of the video it
    is carried in (:func:`_time_class`) -- and, for the questions about time, its place in time:
    the order of first appearance (order), or before / during / after the colour the question
    names (episodic: c2, which is no answer). needle, detail: kinds only."""
    cands = dict(cands)
    kind = {c: (r, _time_class(b, T)) for c, (b, r) in cands.items()}
    if task == "episodic":
        c2 = spec["episodic"]["episodes"][1]["colour"]
        ref = cands.pop(c2)[0] if c2 in cands else None

        def rel(b: np.ndarray) -> str:
            if ref is None:
                return "?"
            return "before" if b.max() < ref.min() else "after" if b.min() > ref.max() else "during"

        order = sorted(cands, key=lambda c: (-cands[c][0].max(), -cands[c][0].min(), c))  # latest first
        return (ref is not None, tuple((*kind[c], rel(cands[c][0])) for c in order)), order
    if task == "order":
        order = sorted(cands, key=lambda c: (cands[c][0].min(), cands[c][0].max(), c))
    else:
        order = sorted(cands, key=lambda c: (*kind[c], c))
    return tuple(kind[c] for c in order), order


def coarse(task: str, sig: tuple) -> tuple:
    """``task``'s signature (:func:`signature`) without how long each candidate is carried
    (:func:`_time_class`): what the reader falls back on where the training scenes saw a signature
    seldom."""
    if task == "episodic":  # (c2 seen, kinds)
        return sig[0], tuple((k[0], *k[2:]) for k in sig[1])
    return tuple(k[:1] for k in sig)


class Reader:
    """The Bayes reader of the tokens' colours: P(which candidate is the answer | signature),
    counted on the training split's scenes under the same arm (what an ideal learner could know of
    the corpus; the held-out questions are not counted). A signature seen seldom leans on its
    :func:`coarse` one: its counts get :data:`BACKOFF` pseudo-counts spread as the coarse
    signature's posterior, itself smoothed by :data:`SMOOTHING` per outcome."""

    def __init__(self):
        from collections import Counter, defaultdict

        self.counts: dict[tuple, Counter] = defaultdict(Counter)
        self.coarse_counts: dict[tuple, Counter] = defaultdict(Counter)

    def learn(self, task: str, sig: tuple, order: list[str], answer: str) -> None:
        slot = order.index(answer) if answer in order else -1
        self.counts[(task, sig)][slot] += 1
        self.coarse_counts[(task, coarse(task, sig))][slot] += 1

    def posterior(self, task: str, sig: tuple, k: int) -> np.ndarray:
        """``[k + 1]``: P(the answer is candidate j), then P(it is none of them)."""
        def tally(n) -> np.ndarray:
            return np.array([n.get(j, 0) for j in range(k)] + [n.get(-1, 0)], dtype=float)

        prior = tally(self.coarse_counts.get((task, coarse(task, sig)), {})) + SMOOTHING
        c = tally(self.counts.get((task, sig), {})) + BACKOFF * prior / prior.sum()
        return c / c.sum()


def read_item(post: np.ndarray, order: list[str], space: Sequence[str], options: Sequence[str],
              answer: int) -> tuple[float, float]:
    """(cross-entropy of the answer word, expected accuracy of the best option) under the reader's
    posterior ``post`` (:meth:`Reader.posterior`) over the candidates ``order`` and the rest of
    the answer ``space`` (uniform over it; none left: the candidates share all)."""
    rest = [a for a in space if a not in order]
    p = dict(zip(order, post[:-1]))
    if rest:
        p |= dict.fromkeys(rest, post[-1] / len(rest))
    total = sum(p.values())
    score = [p.get(o, 0.0) / total for o in options]
    top = [i for i, x in enumerate(score) if x >= max(score) - TIE]
    return -math.log(p[options[answer]] / total), (answer in top) / len(top)


def learn_reader(arm: Arm, train_specs: Sequence[dict[str, Any]], extract_fps: float, max_frames: int,
                 threshold: float, chroma_noise: float | None = None) -> Reader:
    """The :class:`Reader` of ``arm``, counted on the training split's scenes (their questions'
    answers, :func:`visctx.synth.answer`)."""
    from visctx.synth import answer

    reader, roles = Reader(), {}
    for spec in train_specs:
        things, _, W, carried = _tokens(spec, arm, frame_seconds(spec, extract_fps, max_frames), threshold,
                                        chroma_noise)
        cands = _read(things, carried, _roles(W, spec["grid"], roles))
        for task in READ_TASKS:
            sig, order = signature(task, spec, cands[task], arm.T)
            reader.learn(task, sig, order, answer(spec, task))
    return reader


def arm_ceiling(arm: Arm, specs: dict[str, dict[str, Any]], items: list[dict[str, Any]], extract_fps: float,
                max_frames: int, threshold: float, chroma_noise: float | None = None,
                reader: Reader | None = None) -> pd.DataFrame:
    """One row per evaluation item: its task, ceiling loss and accuracy under ``arm`` -- the
    reader's (``reader``: :func:`learn_reader`; an empty one without) and, as ``loss_known`` and
    ``accuracy_known``, with every colour's question known from where it is (:func:`item_ceiling`)
    --, the accuracy bound (``bound``: :func:`bound_item`) and the loss bound (``bound_loss``:
    :func:`loss_bound_item`)."""
    from visctx.synth import answer_space

    reader = reader or Reader()
    rows, cache, roles = [], {}, {}
    pooled = bool(arm.pooled_from)
    for it in items:
        spec = specs[it["video"]]
        if it["video"] not in cache:
            cache[it["video"]] = _evidence(spec, arm, frame_seconds(spec, extract_fps, max_frames), threshold,
                                           chroma_noise, roles)
        seen, shown, cands = cache[it["video"]]
        task = it["task_type"]
        known = item_ceiling(task, spec, seen, it["options"], it["answer"])
        loss, acc = known
        if task in READ_TASKS:
            sig, order = signature(task, spec, cands[task], arm.T)
            loss, acc = read_item(reader.posterior(task, sig, len(order)), order, answer_space(task, spec),
                                  it["options"], it["answer"])
        rows.append({"video": it["video"], "task": task, "loss": loss, "accuracy": acc,
                     "loss_known": known[0], "accuracy_known": known[1],
                     "bound": bound_item(task, shown, it["options"], pooled),
                     "bound_loss": loss_bound_item(task, shown, spec, pooled),
                     "runs": _runs(shown["count"]), "truth": str(it["options"][it["answer"]])})
    df = pd.DataFrame(rows).astype({"bound": float, "bound_loss": float})
    for col, by_runs in (("bound", count_bound), ("bound_loss", count_loss_bound)):
        todo = df[col].isna()
        if todo.any():
            df.loc[todo, col] = by_runs(df.loc[todo, "runs"].to_numpy(), df.loc[todo, "truth"].to_numpy())
    return df.drop(columns=["runs", "truth"])


def _chance_se(b: pd.Series) -> float:
    """The SD of the accuracy a policy reaching ``b`` (per-item accuracies: the bound's or the
    ceiling's) in expectation gets on these items: its guesses (items below 1) are Bernoulli; what
    it knows (1) and misses (0) do not vary."""
    return float(np.sqrt((b * (1 - b)).sum()) / len(b))


def ceiling(videos_json: str, eval_json: str, studies: dict, out_csv: str, extract_fps: float = 1.0,
            max_frames: int = 32, threshold: float = 0.25, chroma_noise: float | None = 0.1) -> dict:
    """The ceiling of every arm of the studies on the held-out split, as an arms.csv-shaped table
    (``loss``, ``accuracy``, ``loss_<task>``, ``acc_<task>``; seed 0: it is exact, not trained) that
    the fits and tables read like any arm table, with the position-known rule's (``loss_known``,
    ``accuracy_known``), the accuracy bound (``bound``, ``bound_<task>``) and the loss bound
    (``bound_loss``, ``bound_loss_<task>``). Each arm's :class:`Reader` is counted on the scenes of
    ``videos_json``'s training split.

    Args:
        videos_json: the scene specs (``synth.make_corpus``).
        eval_json: the held-out questions.
        studies: params' ``studies`` section (JSON): which arms.
        out_csv: the table to write.
        extract_fps: frames per second decoded (``data.extract.fps``).
        max_frames: frames kept per video (``data.extract.max_frames``).
        threshold: the share of a token an achromatic object (the white blinker) needs to be carried,
            or any object under the share rule (``ceiling.visible_share``).
        chroma_noise: the chroma a token must carry to name a colour (``ceiling.chroma_noise``, in the
            encoder's levels: the chroma rule of :func:`seen_bins`); None: the share rule for every object.
    """
    import json

    from visctx.config import study_points, unique_arms
    from visctx.synth import load_videos_json

    specs = {v["video"]: v for v in load_videos_json(videos_json)["videos"]}
    items = json.loads(Path(eval_json).read_text())
    missing = sorted({it["video"] for it in items} - set(specs))
    if missing:
        raise ValueError(f"{eval_json}: videos without a scene spec in {videos_json}, e.g. {missing[0]!r}")
    held_out = {it["video"] for it in items}
    train = [v for k, v in specs.items() if k not in held_out and v.get("split", "train") == "train"]
    rows = []
    for arm in unique_arms(study_points(studies)):
        reader = learn_reader(arm, train, extract_fps, max_frames, threshold, chroma_noise)
        df = arm_ceiling(arm, specs, items, extract_fps, max_frames, threshold, chroma_noise, reader)
        row = {k: v for k, v in arm.to_dict().items() if k != "id"} | {
            "arm": arm.id, "seed": 0, "benchmark": "synthetic", "n": len(df), "loss": df["loss"].mean(),
            "accuracy": df["accuracy"].mean(), "accuracy_se": _chance_se(df["accuracy"]),
            "loss_known": df["loss_known"].mean(), "accuracy_known": df["accuracy_known"].mean(),
            "bound": df["bound"].mean(),
            "bound_se": _chance_se(df["bound"]), "bound_loss": df["bound_loss"].mean()}
        for task, g in df.groupby("task"):
            row[f"acc_{task}"], row[f"loss_{task}"] = g["accuracy"].mean(), g["loss"].mean()
            row[f"accuracy_se_{task}"] = _chance_se(g["accuracy"])
            row[f"bound_{task}"], row[f"bound_se_{task}"] = g["bound"].mean(), _chance_se(g["bound"])
            row[f"bound_loss_{task}"] = g["bound_loss"].mean()
        rows.append(row)
    out = pd.DataFrame(rows)
    lead = ["arm", "T", "M", "token_op", "frame_op", "pooled_from", "tokens", "seed", "benchmark", "n", "loss",
            "accuracy"]
    out = out[lead + sorted(c for c in out.columns if c not in lead)].sort_values("arm")
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(out_csv, index=False, float_format="%.6g")
    return {"arms": len(out), "items": len(items)}


Z_BOUND = 2.0  # a trained arm exceeds the bound when its mean accuracy is above it by more than 2 SE


def check(arms_csv: str, ceiling_csv: str, out_dir: str) -> dict:
    """Every trained arm's accuracy (mean over seeds, and their range) against the ceiling and the
    bound, overall and per task: ``ceiling_check.{csv,md}`` in ``out_dir``.

    ``within`` is true when the mean is at most ``Z_BOUND`` SE above the bound (the SE of a policy's
    guesses, :func:`_chance_se`: the bound is computed on the very items scored, so only guessing
    varies); ``readable`` true when at most ``Z_BOUND`` SE above the ceiling's accuracy, the SE of a
    policy at the ceiling (its own guesses: ``accuracy_se``; a ceiling of 1/4 on every item is
    a guess on each, and an arm 0.003 above it is not above it).

    The loss against the loss bound: ``loss_within`` is true unless the mean loss is more than
    ``Z_BOUND`` across-seed SE (SD / sqrt(seeds)) below it. The bound is an expectation over the
    answers; a model whose answer prior comes from the training split can sit below it on these
    items only by chance agreement with them, which the replicates' noise does not hold (so a few
    flags near the bound are chance, not a broken bound). Answer words are one token each in the
    embedded default (its word-level tokenizer), so the per-token loss is the per-word bound's unit;
    with a tokenizer that splits an answer word, its per-token loss understates the word's and the
    loss columns are not comparable (the accuracy columns still are).

    Args:
        arms_csv: the tidy table (``visctx collect``): one row per (arm, seed, benchmark).
        ceiling_csv: every arm's ceiling and bound (``visctx ceiling``).
        out_dir: where ``ceiling_check.csv`` and ``ceiling_check.md`` go.
    """
    arms = pd.read_csv(arms_csv)
    arms = arms[arms["benchmark"] == "synthetic"]
    c = pd.read_csv(ceiling_csv).set_index("arm")
    if "bound" not in c.columns:
        raise ValueError(f"{ceiling_csv}: no 'bound' column (written by an older visctx ceiling)")
    lost = sorted(set(arms["arm"]) - set(c.index))
    if lost:
        raise ValueError(f"{ceiling_csv}: no ceiling for arm(s) {lost}")
    for col in ("bound_loss", "accuracy_se"):
        if col not in c.columns:
            raise ValueError(f"{ceiling_csv}: no {col!r} column (written by an older visctx ceiling)")
    tasks = sorted(k[len("bound_se_"):] for k in c.columns if k.startswith("bound_se_"))
    rows = []
    for arm, g in arms.groupby("arm", sort=True):
        for task in ["all", *tasks]:
            sfx = "" if task == "all" else f"_{task}"
            acc, loss = g["accuracy" if task == "all" else f"acc_{task}"], g[f"loss{sfx}"]
            bound, se = float(c.at[arm, f"bound{sfx}"]), float(c.at[arm, f"bound_se{sfx}"])
            readable = float(c.at[arm, "accuracy" if task == "all" else f"acc_{task}"])
            readable_se = float(c.at[arm, f"accuracy_se{sfx}"])
            mean = float(acc.mean())
            tol = Z_BOUND * max(se, 1e-12)
            loss_bound, loss_mean = float(c.at[arm, f"bound_loss{sfx}"]), float(loss.mean())
            loss_se = float(loss.sem()) if loss.notna().sum() > 1 else 0.0
            rows.append({"arm": arm, "task": task, "seeds": int(acc.notna().sum()), "trained": mean,
                         "trained_min": float(acc.min()), "trained_max": float(acc.max()), "ceiling": readable,
                         "bound": bound, "se": se, "excess": mean - bound,
                         "within": bool(mean - bound <= tol),
                         "readable": bool(mean - readable <= Z_BOUND * max(readable_se, 1e-12)),
                         "loss_trained": loss_mean, "loss_se": loss_se, "loss_bound": loss_bound,
                         "loss_gap": loss_mean - loss_bound,
                         "loss_within": bool(loss_mean - loss_bound >= -Z_BOUND * max(loss_se, 1e-12))})
    df = pd.DataFrame(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "ceiling_check.csv", index=False, float_format="%.4g")
    (out / "ceiling_check.md").write_text(check_markdown(df))
    return {"rows": len(df), "outside_bound": int((~df["within"]).sum()),
            "above_ceiling": int((~df["readable"]).sum()), "below_loss_bound": int((~df["loss_within"]).sum())}


def _flagged(rows: pd.DataFrame, what: str, total: int, header: str, line) -> list[str]:
    """``what: n of total``, then a table of the flagged rows (``header``: its column names)."""
    out = ["", f"{what}: {len(rows)} of {total}."]
    if len(rows):
        cols = header.split(" | ")
        out += ["", f"| {header} |", "|" + "---|" * len(cols)] + [line(r) for r in rows.itertuples()]
    return out


def check_markdown(df: pd.DataFrame) -> str:
    """Per task, how many arms stay within the bound and the ceiling, then every (arm, task)
    outside the bound; the same for the loss against the loss bound."""
    lines = [f"Trained accuracy (mean over seeds) against the accuracy bound (what the arm's frames show) "
             f"and the ceiling (what its tokens carry, by the chroma rule, as the ceiling's reader tells whose "
             f"it is); outside: more than {Z_BOUND:g} SE above.",
             "", "| task | arms | within the bound | largest excess over the bound | within the ceiling | "
             "largest excess over the ceiling |", "|---|---|---|---|---|---|"]
    for task, g in df.groupby("task", sort=False):
        lines.append(f"| {task} | {len(g)} | {int(g['within'].sum())} | {g['excess'].max():+.3f} | "
                     f"{int(g['readable'].sum())} | {(g['trained'] - g['ceiling']).max():+.3f} |")
    lines += _flagged(df[~df["within"]], "Outside the bound", len(df), "arm | task | trained | bound | SE",
                      lambda r: f"| {r.arm} | {r.task} | {r.trained:.3f} | {r.bound:.3f} | {r.se:.3f} |")
    lines += ["", f"Trained loss (mean over seeds) against the loss bound (the least expected cross-entropy of the "
              f"answer given what the arm's frames show); below: more than {Z_BOUND:g} across-seed SE under it.", "",
              "| task | arms | not below the bound | smallest gap | median gap | largest gap |", "|---|---|---|---|---|---|"]
    for task, g in df.groupby("task", sort=False):
        lines.append(f"| {task} | {len(g)} | {int(g['loss_within'].sum())} | {g['loss_gap'].min():+.3f} | "
                     f"{g['loss_gap'].median():+.3f} | {g['loss_gap'].max():+.3f} |")
    lines += _flagged(df[~df["loss_within"]], "Below the loss bound", len(df),
                      "arm | task | trained loss | loss bound | SE",
                      lambda r: f"| {r.arm} | {r.task} | {r.loss_trained:.3f} | {r.loss_bound:.3f} | {r.loss_se:.3f} |")
    return "\n".join(lines) + "\n"
