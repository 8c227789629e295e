"""Where the answer looks: how much attention a trained arm pays to the question's object.

A loss says how well an arm reads its context, not how. On the synthetic corpus the generator knows
where each object is, so which of an arm's visual tokens hold it is known exactly
(:func:`target_tokens`, from the information ceiling's own account of the arm's context), and the
attention that the position predicting the answer pays to those tokens shows whether the model
searched for it: a lift of 1 is what uniform attention over the visual tokens gives, above 1 the
model looks at the object, below 1 away from it. Transformers returns attention weights only from
its eager attention, so the model is switched to it for this measurement (the same model: its
option scores equal sdpa's, tested; the study trains and evaluates with sdpa)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from visctx.config import Arm


def target_tokens(spec: dict[str, Any], task: str, arm: Arm, extract_fps: float = 1.0, max_frames: int = 32
                  ) -> np.ndarray:
    """``[T * M]`` bool, in the order of the arm's visual slots (frame by frame): the tokens that hold
    some cell of ``task``'s object(s) in a frame (or temporal bin) where it shows."""
    from visctx.ceiling import context, frame_seconds, shares
    from visctx.synth import objects

    things = [o for o in objects(spec) if o["task"] == task]
    if not things:
        raise ValueError(f"{spec.get('video', 'a scene')}: no object of task {task!r}")
    bins, W = context(arm, frame_seconds(spec, extract_fps, max_frames), video=spec.get("video"))
    return (shares(things, bins, W) > 0).any(0).reshape(-1)


@dataclass
class ItemAttention:
    """One item's attention from the answer position over its visual tokens, per layer (heads
    averaged): ``mass`` on the target tokens (a share of the attention on visual tokens), ``uniform``
    what uniform attention would give them, and whether the most-attended visual token is a target."""

    id: str
    mass: list[float]
    uniform: float
    hit: list[bool]


def answer_attention(model, records: Sequence, store, arm: Arm, specs: dict[str, dict[str, Any]], task: str,
                     extract_fps: float = 1.0, max_frames: int = 32, batch_size: int = 16) -> list[ItemAttention]:
    """:class:`ItemAttention` of each of ``records`` (one question per video, of ``task``; a
    :class:`visctx.data.EvalRecord` each) under ``arm``, for a loaded :class:`visctx.model.VideoModel`.
    Items whose object shows in none of the arm's tokens are left out."""
    import torch

    from visctx.data import choice_loader

    if len({r.video for r in records}) != len(records):
        raise ValueError("answer_attention reads one question per video (a shared visual prefix has no full rows)")
    model.llm.set_attn_implementation("eager")
    model.eval()
    out: list[ItemAttention] = []
    k = 0
    with torch.inference_mode():
        for batch in choice_loader(list(records), store, model.encoder, arm, batch_size):
            if not bool(batch["single_token"]) or "prefix_ids" in batch:
                raise ValueError(f"{arm.id}: answer_attention needs single-token options in full rows")
            att = model.llm.base_model(inputs_embeds=model.embed(batch), output_attentions=True,
                                       use_cache=False).attentions
            for b in range(batch["input_ids"].shape[0]):
                rec = records[k]
                k += 1
                target = torch.from_numpy(target_tokens(specs[rec.video], task, arm, extract_fps, max_frames))
                if not bool(target.any()):
                    continue
                last, vis = int(batch["lengths"][b]) - 1, batch["vis_index"][b]
                mass, hit = [], []
                for layer in att:
                    a = layer[b, :, last, vis].double().mean(0)  # heads averaged, [T * M]
                    mass.append(float(a[target].sum() / a.sum()))
                    hit.append(bool(target[int(a.argmax())]))
                out.append(ItemAttention(rec.id, mass, float(target.double().mean()), hit))
    return out


def summarise(items: Sequence[ItemAttention]) -> list[dict[str, float]]:
    """Per layer: the mean target mass, the mean uniform mass, the lift (median over items of
    mass / uniform) and the share of items whose most-attended visual token is a target."""
    if not items:
        raise ValueError("no items to summarise")
    uniform = np.array([it.uniform for it in items])
    rows = []
    for layer in range(len(items[0].mass)):
        mass = np.array([it.mass[layer] for it in items])
        rows.append({"layer": layer, "n": len(items), "mass": float(mass.mean()), "uniform": float(uniform.mean()),
                     "lift": float(np.median(mass / uniform)),
                     "hit": float(np.mean([it.hit[layer] for it in items]))})
    return rows


def strongest(layers: Sequence[dict[str, float]]) -> dict[str, float]:
    """The layer with the highest lift: where the search happens, if anywhere."""
    return max(layers, key=lambda r: (r["lift"], -r["layer"]))
