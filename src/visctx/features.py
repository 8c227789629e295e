"""The vision tower: the per-frame feature cache every arm reads, or the tower in the forward.

The vision encoder is frozen in the study (paper-notes §2), so each (video, frame) is encoded once
and its full ``G x G x D`` patch grid cached; the visual-context operators then cut any (T, M) out
of the cache (:mod:`visctx.context`). The same loader serves the tiny random SigLIP of the
embedded default and ``google/siglip-so400m-patch14-384`` (penultimate layer) of the paper preset.

At paper scale the cache does not fit (1.7 MB per frame); ``model.vision_features: forward`` then
keeps only the decoded frames (:class:`FrameStore`) and runs the tower in the model's forward
(:class:`VisionEncoder`, frozen or trainable), with the same operators on its output.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from visctx import cpu
from visctx.files import atomic_path, load_npy, write_json_atomic


def build_tiny_vision_tower(out_dir: str | os.PathLike, image_size: int = 54, patch_size: int = 2,
                            hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                            intermediate_size: int = 64, seed: int = 0) -> Path:
    """A randomly initialised (seeded) ``SiglipVisionModel`` + matching image processor in ``out_dir``.

    No pooling head (``vision_use_head=False``): only patch hidden states are used.

    Args:
        out_dir: where the tower and its processor are saved (``save_pretrained``).
        image_size: input side in pixels (a multiple of ``patch_size``).
        patch_size: patch side in pixels; the grid is ``image_size / patch_size`` patches a side.
        hidden_size: width of the tower (D of the features).
        num_layers, num_heads, intermediate_size: the transformer's depth, attention heads and MLP
            width.
        seed: seed of the random init.
    """
    from transformers import SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    cfg = SiglipVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             intermediate_size=intermediate_size, vision_use_head=False,
                             attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipVisionModel(cfg)
    out = Path(out_dir)
    model.save_pretrained(out)
    # the Pil class is what SiglipImageProcessor falls back to without torchvision; same saved config
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return out


def load_vision_tower(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu"):
    """``(SiglipVisionModel in eval mode, image processor)`` from a dir or hub name.

    Works for vision-only checkpoints and for full ``SiglipModel`` ones (the vision weights are
    taken, the text tower is ignored), e.g. ``google/siglip-so400m-patch14-384``.
    """
    from transformers import AutoImageProcessor, SiglipVisionModel

    try:
        model = SiglipVisionModel.from_pretrained(str(name_or_path), dtype=dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        raise ValueError(f"{name_or_path}: cannot load a SigLIP vision tower ({e})") from e
    try:
        processor = AutoImageProcessor.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{name_or_path}: no image processor saved beside the vision tower ({e})") from e
    model.to(device).eval().requires_grad_(False)
    return model, processor


def _processor_size(processor) -> int:
    size = processor.size
    h = size["height"] if not hasattr(size, "height") else size.height
    w = size["width"] if not hasattr(size, "width") else size.width
    if h != w:
        raise ValueError(f"only square encoder inputs are supported, processor size is {h}x{w}")
    return int(h)


def preprocess(frames: np.ndarray | torch.Tensor, processor, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` -> normalised ``[N, 3, s, s]`` like the processor, in torch (no PIL)."""
    if not isinstance(frames, torch.Tensor):
        frames = np.asarray(frames)
        frames = frames if frames.flags.writeable else frames.copy()  # e.g. a read-only memmap
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be [N, S, S, 3] RGB, got shape {tuple(x.shape)}")
    x = x.to(device).permute(0, 3, 1, 2).float()
    s = _processor_size(processor)
    if x.shape[-1] != s or x.shape[-2] != s:
        x = torch.nn.functional.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
    scale = float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else 1.0
    x = x * scale
    if getattr(processor, "do_normalize", True):
        mean = torch.tensor(processor.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.to(dtype)


def _hidden_state(model, pixel_values: torch.Tensor, idx: int) -> torch.Tensor:
    """``hidden_states[idx]`` computed by running only embeddings + the first ``idx`` layers.

    Layers after ``idx`` would be wasted work (half the tiny tower's cost at the penultimate
    layer). A plain loop rather than swapping ``encoder.layers``: transformers records hidden
    states with hooks installed at the first call, which a swapped layer list breaks.
    """
    tower = model.vision_model if hasattr(model, "vision_model") else model
    h = tower.embeddings(pixel_values)
    for layer in tower.encoder.layers[:idx]:
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h  # transformers 4.x layers return tuples
    return h


def _layer_index(model, layer: int) -> int:
    n_layers = model.config.num_hidden_layers
    idx = layer if layer >= 0 else n_layers + 1 + layer  # hidden_states[0] is the embeddings
    if not 0 <= idx <= n_layers:
        raise ValueError(f"layer={layer}: the tower has hidden states 0..{n_layers} (or -1..-{n_layers + 1})")
    return idx


def _patch_grid(model, processor, frames, idx: int) -> torch.Tensor:
    """uint8 frames ``[N, S, S, 3]`` -> ``[N, G, G, D]`` in the tower's dtype, on its device."""
    param = next(model.parameters())
    hs = _hidden_state(model, preprocess(frames, processor, param.dtype, param.device), idx)
    g = math.isqrt(hs.shape[1])
    if g * g != hs.shape[1]:
        raise ValueError(f"{hs.shape[1]} patch tokens do not form a square grid")
    return hs.reshape(hs.shape[0], g, g, hs.shape[-1])


def encode_frames(model, processor, frames: np.ndarray | torch.Tensor, layer: int = -2,
                  batch_size: int = 64) -> torch.Tensor:
    """Patch features ``float32 [N, G, G, D]`` from ``hidden_states[layer]`` (-2 = penultimate)."""
    idx = _layer_index(model, layer)
    out = []
    with torch.inference_mode():
        for start in range(0, len(frames), batch_size):
            out.append(_patch_grid(model, processor, frames[start:start + batch_size], idx).float().cpu())
    if not out:
        raise ValueError("encode_frames got no frames")
    return torch.cat(out)


class VisionEncoder(torch.nn.Module):
    """The vision tower inside the model's forward: frames in, patch grids out.

    For the paper preset, where a full-grid feature cache does not fit on disk (27 x 27 x 1152
    float16 is 1.7 MB per frame, 3.8x the frame itself) and for a trainable tower, whose features
    change every step. Frozen (the paper's setting) it runs without gradients and stays in eval
    mode whatever Lightning's ``train()`` says; trainable it is fine-tuned with the rest.
    """

    def __init__(self, tower, processor, layer: int = -2, trainable: bool = False, chunk: int = 64):
        super().__init__()
        self.tower, self.processor, self.layer, self.chunk = tower, processor, layer, chunk
        self._idx = _layer_index(tower, layer)
        self.dim = int(tower.config.hidden_size)
        self.set_trainable(trainable)

    def set_trainable(self, trainable: bool) -> None:
        self.trainable = bool(trainable)
        self.tower.requires_grad_(self.trainable)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tower.train(mode and self.trainable)
        return self

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., S, S, 3]`` -> ``[..., G, G, D]``, ``chunk`` frames at a time."""
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = torch.cat([_patch_grid(self.tower, self.processor, flat[i:i + self.chunk], self._idx)
                             for i in range(0, len(flat), self.chunk)])
        return out.reshape(*lead, *out.shape[1:])

    @classmethod
    def load(cls, name_or_path: str | os.PathLike, layer: int = -2, trainable: bool = False,
             dtype: torch.dtype = torch.float32) -> "VisionEncoder":
        """From a tower dir or hub name (``load_vision_tower``), or a dir written by :meth:`save`
        (its ``vision.json`` keeps the layer)."""
        info = Path(name_or_path) / "vision.json"
        if info.is_file():
            layer = int(json.loads(info.read_text())["layer"])
        tower, processor = load_vision_tower(name_or_path, dtype=dtype)
        return cls(tower, processor, layer, trainable)

    def save(self, out_dir: str | os.PathLike) -> None:
        out = Path(out_dir)
        self.tower.save_pretrained(out)
        self.processor.save_pretrained(out)
        write_json_atomic(out / "vision.json", {"layer": self.layer})


def encode_shard(frames_npy: str | os.PathLike, frames_json: str | os.PathLike, vision_tower: str | os.PathLike,
                 out_npy: str | os.PathLike, out_json: str | os.PathLike, layer: int = -2,
                 batch_size: int = 64, threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Encode a frame shard ``[n, F, S, S, 3]`` to ``float16 [n, F, G, G, D]`` + its index json.

    The frame shard's ``quarantined`` and ``short`` lists are carried over, so the feature store
    every arm reads knows which videos were left out and why. A shard whose videos were all
    quarantined gives an empty feature shard (the grid is probed on a blank frame).

    Args:
        frames_npy, frames_json: the frame shard and its index (``extract``'s outputs).
        vision_tower: the vision tower (a ``save_pretrained`` dir or a hub name on disk).
        out_npy, out_json: the feature shard and its index.
        layer: which hidden state of the tower to keep (-2: the penultimate layer, as LLaVA).
        batch_size: frames encoded at once (rounded down to whole videos).
        threads: torch's CPU threads.
        device: torch device of the tower (``cpu``, ``cuda``).
    """
    torch.set_num_threads(threads)
    kernels = cpu.check()  # the tower's products go through MKL too: the pinned kernels, or an error
    with open(frames_json) as f:
        meta = json.load(f)
    frames = load_npy(frames_npy, mmap_mode="r")
    if frames.ndim != 5 or len(frames) != len(meta["videos"]):
        raise ValueError(f"{frames_npy}: shape {frames.shape} does not match {len(meta['videos'])} videos "
                         f"in {frames_json}")
    model, processor = load_vision_tower(vision_tower, device=device)
    n, F = frames.shape[:2]
    flat = frames.reshape(n * F, *frames.shape[2:])
    probe = encode_frames(model, processor, flat[:1] if len(flat) else np.zeros((1, *frames.shape[2:]), np.uint8),
                          layer)
    G, D = probe.shape[1], probe.shape[3]
    with atomic_path(out_npy) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, F, G, G, D))
        step = max(1, batch_size // F) if F else 1  # whole videos per batch
        for v in range(0, n, step):
            chunk = np.asarray(frames[v:v + step]).reshape(-1, *frames.shape[2:])
            feats = encode_frames(model, processor, chunk, layer, batch_size)
            arr[v:v + step] = feats.reshape(-1, F, G, G, D).numpy().astype(np.float16)
        arr.flush()
        del arr
    out = {"videos": list(meta["videos"]), "frames": int(F), "grid": int(G), "dim": int(D),
           "layer": int(layer), "vision_tower": str(vision_tower),
           "quarantined": list(meta.get("quarantined", [])), "short": list(meta.get("short", [])),
           "cpu": kernels}
    write_json_atomic(out_json, out)
    return out


class ShardStore:
    """Read-only view of every shard (``shard-*.npy`` + ``.json``) in a dir, memory-mapped; lookup
    by video key. One row per video: ``[F, *item]`` (features or frames, see the subclasses).

    ``quarantined`` maps each video that frame extraction left out to its reason, so readers can
    tell a known-bad video (skip it) from one that was never extracted (an error); ``short``
    lists the videos whose frames were repeated to reach ``frames``.
    """

    kind = ""

    def _layout(self, meta: dict) -> tuple[int, ...]:
        """``(frames, *item shape)`` of one video as the shard's json describes it."""
        raise NotImplementedError

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        metas = sorted(self.dir.glob("shard-*.json")) if self.dir.is_dir() else []
        if not metas:
            raise FileNotFoundError(f"{self.dir}: no {self.kind} shards (shard-*.json with .npy) found")
        self._arrays: list[np.ndarray] = []
        self._index: dict[str, tuple[int, int]] = {}
        self.quarantined: dict[str, str] = {}
        self.short: list[dict] = []
        shape = None
        for mpath in metas:
            try:
                meta = json.loads(mpath.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{mpath}: not valid JSON, truncated? ({e})") from None
            npy = mpath.with_suffix(".npy")
            if not npy.is_file():
                raise FileNotFoundError(f"{mpath}: its {self.kind} array {npy.name} is missing")
            arr = load_npy(npy, mmap_mode="r")
            try:
                this = self._layout(meta)
            except KeyError as e:
                raise ValueError(f"{mpath}: no key {e} (not a {self.kind} shard?)") from None
            if arr.shape[1:] != this or len(arr) != len(meta["videos"]):
                raise ValueError(f"{npy}: shape {arr.shape} disagrees with {mpath.name} "
                                 f"({len(meta['videos'])} videos of {this})")
            if shape is not None and this != shape:
                raise ValueError(f"{mpath}: {self.kind}s of shape {this} differ from other shards' {shape}")
            shape = this
            for row, key in enumerate(meta["videos"]):
                if key in self._index:
                    raise ValueError(f"{self.dir}: video {key!r} is in two shards")
                self._index[key] = (len(self._arrays), row)
            self._arrays.append(arr)
            self.quarantined.update({q["video"]: q["reason"] for q in meta.get("quarantined", [])})
            self.short += meta.get("short", [])
        self.shape: tuple[int, ...] = shape
        self.frames = shape[0]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def keys(self) -> list[str]:
        return list(self._index)

    def get(self, key: str) -> np.ndarray:
        """One video's ``[F, ...]`` row (a memory-mapped view)."""
        try:
            a, row = self._index[key]
        except KeyError:
            raise KeyError(f"video {key!r} is not in the {self.kind} store {self.dir}") from None
        return self._arrays[a][row]


class FeatureStore(ShardStore):
    """Patch features ``float16 [F, G, G, D]`` per video (rule encode_features): what every arm
    reads when the tower is frozen and its outputs are cached (``model.vision_features: cache``)."""

    kind = "feature"

    def _layout(self, meta: dict) -> tuple[int, ...]:
        return (meta["frames"], meta["grid"], meta["grid"], meta["dim"])

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__(directory)
        self.grid, self.dim = self.shape[1], self.shape[3]

    def get_many(self, keys: Sequence[str]) -> np.ndarray:
        """``float16 [B, F, G, G, D]`` (a copy)."""
        return np.stack([self.get(k) for k in keys]) if keys else np.zeros((0, *self.shape), np.float16)


class FrameStore(ShardStore):
    """Decoded frames ``uint8 [F, S, S, 3]`` per video (rule extract_frames): what a model that runs
    its vision tower in the forward reads (``model.vision_features: forward``)."""

    kind = "frame"

    def _layout(self, meta: dict) -> tuple[int, ...]:
        return (meta["frames"], meta["size"], meta["size"], 3)

    def __init__(self, directory: str | os.PathLike) -> None:
        super().__init__(directory)
        self.size = self.shape[1]


def open_store(directory: str | os.PathLike) -> FeatureStore | FrameStore:
    """The feature or frame store in ``directory``, told apart by its shards' json."""
    first = next(iter(sorted(Path(directory).glob("shard-*.json"))), None) if Path(directory).is_dir() else None
    if first is None:
        raise FileNotFoundError(f"{directory}: no feature or frame shards (shard-*.json with .npy) found")
    try:
        meta = json.loads(first.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{first}: not valid JSON, truncated? ({e})") from None
    return FeatureStore(directory) if "dim" in meta else FrameStore(directory)
