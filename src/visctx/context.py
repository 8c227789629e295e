"""The visual-context operators: how T frames x M tokens are cut out of a video's patch grids.

These are the ways of the study to shrink the visual context (paper-notes §2, §5):

* token sampling   -- keep an m x m sub-grid at uniform stride (M = m^2), no mixing;
* token pooling    -- mean pool with kernel = stride = k over the grid zero-padded up to a multiple
  of k (the zeros count, so edge cells shrink), M = ceil(G/k)^2;
* frame sampling   -- T frames picked uniformly;
* frame pooling    -- S frames picked uniformly, then mean-pooled into T adaptive temporal bins,
  in one 3-D pool together with the token pooling;
* random masking   -- LongViViT's (paper-notes §5): keep M of the G*G tokens chosen at random,
  independently per frame (``mask``) or as a tube, the same positions in every frame (``tube``),
  in raster order; seeded per (video, arm) (:func:`mask_seed`), so evaluation gets the same mask
  in every job, while training draws a fresh mask per pass over the data (the draw is part of the
  seed), as LongViViT does: a model that met one fixed mask per video could learn that mask.
  ``masktrain`` / ``tubetrain`` mask in training only: evaluation sees the unmasked grid
  mean-pooled to the same M, as LongViViT evaluates its encoder unmasked.

They are pure tensor functions: no files, no models, so the same code runs on cached features
(the embedded default) and inside a model's forward (paper scale).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: the workflow and `visctx check` import this
    import torch  # module for the pure arithmetic below, and torch alone costs ~2 s

    from visctx.config import Arm

GRID = 27  # SigLIP-so400m-patch14-384: 384 / 14 -> 27 x 27 patches
# Random masking: op -> (tube: the same positions in every frame, masked at evaluation too).
MASK_OPS = {"mask": (False, True), "tube": (True, True), "masktrain": (False, False), "tubetrain": (True, False)}


def uniform_indices(n: int, k: int) -> list[int]:
    """Centre of each of ``k`` equal segments of ``range(n)``: ``floor((i + 1/2) * n / k)``.

    Centred rather than ``linspace(0, n-1, k)`` so that k = 1 takes the middle (not the first)
    element and the sub-grid of token sampling is symmetric. With k > n indices repeat, which is
    how a short video is forced to yield k frames.
    """
    if n <= 0 or k <= 0:
        raise ValueError(f"uniform_indices needs n > 0 and k > 0, got n={n}, k={k}")
    return [min(n - 1, int(math.floor((i + 0.5) * n / k))) for i in range(k)]


def pool_kernel(M: int, grid: int = GRID) -> int:
    """The kernel k with ceil(grid/k)^2 == M; ValueError if mean pooling cannot produce M."""
    side = math.isqrt(M)
    if M <= 0 or side * side != M:
        raise ValueError(f"M={M} is not a square number of tokens")
    for k in range(1, grid + 1):
        if math.ceil(grid / k) == side:
            return k
    raise ValueError(f"M={M}: no kernel k gives ceil({grid}/k)^2 = {M} on a {grid}x{grid} grid")


def poolable_token_counts(grid: int = GRID) -> list[int]:
    """Every M that mean pooling can produce from a grid x grid patch grid, largest first."""
    return sorted({math.ceil(grid / k) ** 2 for k in range(1, grid + 1)}, reverse=True)


def sample_tokens(grid_feats: torch.Tensor, M: int) -> torch.Tensor:
    """``[..., G, G, D] -> [..., M, D]``: the centred m x m sub-grid at uniform stride."""
    import torch

    G = grid_feats.shape[-2]
    m = math.isqrt(M)
    if m * m != M or m > G:
        raise ValueError(f"token sampling needs a square M <= {G * G}, got M={M}")
    idx = torch.tensor(uniform_indices(G, m), device=grid_feats.device)
    sub = grid_feats.index_select(-3, idx).index_select(-2, idx)
    return sub.reshape(*sub.shape[:-3], M, sub.shape[-1])


def time_bins(n: int, T: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` frames of each of T adaptive temporal bins over n frames:
    ``floor(i n / T)`` to ``ceil((i + 1) n / T)``, PyTorch's adaptive pooling bins. When T divides n
    they are n/T frames each; otherwise neighbouring bins overlap by a frame, so every T < n pools
    (``floor(n/T)`` groups made pooling equal to sampling for every T > n/2)."""
    if not 1 <= T <= n:
        raise ValueError(f"{n} frames cannot be pooled into T={T} bins")
    return [(i * n // T, -(-(i + 1) * n // T)) for i in range(T)]


def pool_grid(x: torch.Tensor, k: int, T: int | None = None) -> torch.Tensor:
    """``[..., F, G, G, D] -> [..., T, ceil(G/k)^2, D]`` by one 3-D mean pool.

    The grid is zero-padded at its far edges up to a multiple of k and the zeros count in the
    mean (as in Opt-Visor's projector); the F frames are averaged into T adaptive temporal bins
    (:func:`time_bins`; T = F: none).
    """
    import torch.nn.functional as F

    *batch, Fr, G, G2, D = x.shape
    if G != G2:
        raise ValueError(f"patch grid must be square, got {G}x{G2}")
    T = Fr if T is None else T
    time_bins(Fr, T)  # validates
    side = math.ceil(G / k)
    pad = side * k - G
    v = x.reshape(-1, Fr, G, G, D).permute(0, 4, 1, 2, 3)  # [B, D, F, G, G]
    if pad:
        v = F.pad(v, (0, pad, 0, pad))
    if Fr % T == 0:  # equal bins: the plain 3-D pool
        v = F.avg_pool3d(v, kernel_size=(Fr // T, k, k), stride=(Fr // T, k, k))
    else:  # adaptive bins in time; in space still kernel = stride = k (the padded side is side * k)
        v = F.adaptive_avg_pool3d(v, (T, side, side))
    v = v.permute(0, 2, 3, 4, 1).reshape(*batch, T, side * side, D)
    return v


def mask_seed(video: str, arm_id: str, draw: int | None = None) -> int:
    """The seed of ``video``'s mask under arm ``arm_id`` (``draw``: training's pass over the data;
    None: evaluation's): CRC-32 of them (Python's ``hash`` of a string changes with every
    process), so a mask is the same in every job and on every machine."""
    key = f"{arm_id}\0{video}" if draw is None else f"{arm_id}\0{video}\0{int(draw)}"
    return zlib.crc32(key.encode())


def mask_seeds(videos: Sequence[str], arm: "Arm", draw: int | None = None) -> list[int] | None:
    """:func:`mask_seed` of each video, or None for an arm that does not mask."""
    return [mask_seed(v, arm.id, draw) for v in videos] if arm.token_op in MASK_OPS else None


def mask_indices(seed: int, T: int, n: int, M: int, tube: bool):
    """``[T, M]`` positions kept of ``n`` tokens in each of T frames: M drawn without replacement
    (the first M of a seeded random permutation), sorted into raster order; a tube draws once and
    repeats the positions in every frame. A pure function of its arguments (torch's CPU generator)."""
    import torch

    if not 1 <= M <= n:
        raise ValueError(f"random masking keeps 1 <= M <= {n} tokens, got M={M}")
    g = torch.Generator().manual_seed(int(seed))
    keys = torch.rand((1 if tube else T, n), generator=g)
    idx = keys.argsort(-1)[:, :M].sort(-1).values
    return idx.expand(T, M) if tube else idx


def masked_context(features: torch.Tensor, arm: "Arm", seeds: int | Sequence[int] | None, train: bool) -> torch.Tensor:
    """A masking arm's context (module docstring): ``seeds`` one per leading batch element of
    ``features`` (an int without one); evaluation of a ``*train`` arm pools instead (needs none)."""
    import torch

    tube, at_eval = MASK_OPS[arm.token_op]
    if not (train or at_eval):
        return visual_context(features, dataclasses.replace(arm, token_op="pool"))
    G = features.shape[-3]
    # the arm's frames (temporal pooling included) as full grids: sampling G*G of G*G tokens is the identity
    grid = visual_context(features, dataclasses.replace(arm, token_op="sample", M=G * G))  # [..., T, G*G, D]
    batch = grid.shape[:-3]
    if seeds is None:
        raise ValueError(f"arm {arm.id} masks at random: pass one seed per video (visctx.context.mask_seeds)")
    flat = [int(s) for s in seeds] if hasattr(seeds, "__iter__") else [int(seeds)]
    n_rows = math.prod(batch)
    if len(flat) != n_rows:
        raise ValueError(f"arm {arm.id}: {len(flat)} mask seeds for {n_rows} videos")
    T, D = grid.shape[-3], grid.shape[-1]
    idx = torch.stack([mask_indices(s, T, G * G, arm.M, tube) for s in flat]).to(grid.device)
    out = grid.reshape(n_rows, T, G * G, D).gather(2, idx.unsqueeze(-1).expand(-1, -1, -1, D))
    return out.reshape(*batch, T, arm.M, D)


def visual_context(features: torch.Tensor, arm: "Arm", seeds: int | Sequence[int] | None = None,
                   train: bool = False) -> torch.Tensor:
    """``[..., F, G, G, D]`` cached per-frame patch features -> ``[..., T, M, D]`` for one arm.

    ``seeds`` and ``train`` matter only to random masking (:func:`masked_context`): the videos'
    :func:`mask_seeds`, and whether this is a training batch (``*train`` arms mask only then)."""
    import torch

    if arm.token_op in MASK_OPS:
        return masked_context(features, arm, seeds, train)

    Fr, G = features.shape[-4], features.shape[-3]
    frames = features.index_select(-4, torch.tensor(uniform_indices(Fr, arm.frames), device=features.device))
    if arm.token_op == "pool":
        return pool_grid(frames, arm.kernel, arm.T)
    if arm.token_op == "sample":
        if arm.pooled_from:  # temporal mean first; sampling then keeps tokens unmixed in space
            frames = pool_grid(frames, 1, arm.T).reshape(*frames.shape[:-4], arm.T, G, G, -1)
        return sample_tokens(frames, arm.M)
    raise ValueError(f"unknown token_op {arm.token_op!r}; allowed: sample, pool, {', '.join(MASK_OPS)}")
