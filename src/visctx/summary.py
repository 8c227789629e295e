"""Video-XL's visual summarisation tokens inside a transformers causal LM, without forking it
(paper-notes §5; arXiv 2409.14485).

The visual stream (the T*M raw tokens, in the prompt layout's frames) is cut into windows of w raw
tokens; inside a window one summary token -- a learned embedding -- follows every r raw tokens
(and the window's last one). Attention is causal, except that a raw token is seen only from its
own window: when a window is done, only the summaries' keys and values are kept for what follows,
so the text after the video sees the summaries (and the text: the prompt, the frame labels), never
a raw token. Summary positions use their own q/k/v projections in every layer, initialised from the
layer's own. r is the compression ratio: the text after the video sees ~T*M/r visual tokens.

Two equivalent ways run it, both tested to agree:

* one forward over the whole sequence with a 4-D attention mask (:func:`attention_mask`; what a
  training batch of full rows uses);
* a cache that evicts raw keys and values window by window (:func:`prefill`): each window runs
  as one chunk against the cache of what is kept, then its raw tokens' keys and values are
  dropped; memory is bounded by the summaries, as Video-XL runs long videos.

The extra projections enter through hooks: a pre-hook on each attention module takes the summary
flags from the keyword ``summary_mask`` (transformers passes a forward's extra keyword arguments
down to the attention modules, also when activation checkpointing recomputes a layer), and forward
hooks on its ``q_proj``/``k_proj``/``v_proj`` replace their output at flagged positions. The LLM's
own modules and weights stay as they are (``save_pretrained`` writes the plain LLM); the summary
embedding and projections are this module's parameters, saved beside it.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn

FLAGS = "summary_mask"  # the forward keyword that carries the [B, L] summary flags to the layers
PROJECTIONS = ("q", "k", "v")


def attention_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's attention modules in layer order: those with ``q_proj``, ``k_proj`` and ``v_proj``."""
    layers = [m for m in llm.modules() if all(hasattr(m, f"{n}_proj") for n in PROJECTIONS)]
    if not layers:
        raise ValueError(f"{type(llm).__name__}: no attention modules with q_proj/k_proj/v_proj")
    return layers


class SummaryTokens(nn.Module):
    """The summary embedding and, per layer, the summary positions' q/k/v projections (copies of
    the layer's own at creation); hooked into ``llm`` on construction."""

    def __init__(self, llm: nn.Module):
        super().__init__()
        attns = attention_layers(llm)
        emb = llm.get_input_embeddings().weight
        std = float(getattr(llm.config, "initializer_range", 0.02))
        # a new token's embedding, as transformers initialises embeddings
        self.embedding = nn.Parameter(torch.randn(emb.shape[1], device=emb.device).to(emb.dtype) * std)
        self.proj = nn.ModuleList(nn.ModuleDict({n: copy.deepcopy(getattr(a, f"{n}_proj")) for n in PROJECTIONS})
                                  for a in attns)
        for p in self.proj.parameters():
            p.requires_grad_(True)
        self._flags: dict[int, torch.Tensor] = {}
        for i, a in enumerate(attns):
            a.register_forward_pre_hook(functools.partial(_take_flags, self, i), with_kwargs=True)
            a.register_forward_hook(functools.partial(_drop_flags, self, i))
            for n in PROJECTIONS:
                getattr(a, f"{n}_proj").register_forward_hook(functools.partial(_project, self, i, n))


def _take_flags(owner: SummaryTokens, i: int, module, args, kwargs):
    flags = kwargs.pop(FLAGS, None)
    if flags is not None and bool(flags.any()):
        owner._flags[i] = flags
    else:  # nothing flagged (or a forward that failed half-way left some): the layer's own projections
        owner._flags.pop(i, None)
    return args, kwargs


def _drop_flags(owner: SummaryTokens, i: int, module, args, output):
    owner._flags.pop(i, None)


def _project(owner: SummaryTokens, i: int, name: str, module, args, output):
    flags = owner._flags.get(i)
    if flags is None:
        return None
    b, pos = flags.nonzero(as_tuple=True)
    return output.index_put((b, pos), owner.proj[i][name](args[0][b, pos]))


# ---------------------------------------------------------------------------------------------
# Masks and the evicting cache


def attention_mask(raw: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` boolean mask (True: attend) from ``raw`` [B, L] (raw visual token) and
    ``window`` [B, L] (the window in progress at each position; -1 after the video): causal, and
    a raw key only from a query of its own window."""
    L = raw.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=raw.device).tril()
    same = window[:, :, None] == window[:, None, :]
    return (causal & (~raw[:, None, :] | same)).unsqueeze(1)


def mask_for(llm: nn.Module, mask: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A boolean mask as the LLM's layers take it: a ``{layer type: mask}`` dict, which
    transformers uses as it is (boolean for sdpa, additive for eager)."""
    impl = getattr(llm.config, "_attn_implementation", "sdpa")
    types = set(getattr(llm.config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise ValueError(f"summary tokens need full attention in every layer, the LLM has {sorted(types)}")
    if impl == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    elif impl != "sdpa":
        raise ValueError(f"summary tokens need an attention that takes an arbitrary mask (sdpa or eager), "
                         f"the LLM runs {impl!r}")
    return {"full_attention": mask}


def evict(cache, keep: torch.Tensor) -> None:
    """Keep only the positions ``keep`` of every layer's keys and values in ``cache``."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


def cache_bytes(cache) -> int:
    """Bytes of the keys and values held in ``cache``."""
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


def run_chunk(llm: nn.Module, emb: torch.Tensor, cache, start: int, flags: torch.Tensor | None = None):
    """Run ``emb`` [B, q, H] at positions ``start`` .. ``start + q - 1`` against everything in
    ``cache`` (which may hold fewer positions than ``start``: evicted ones), causally within the
    chunk; returns the last hidden states [B, q, H]."""
    kept, q = cache.get_seq_length(), emb.shape[1]
    mask = torch.ones(q, kept + q, dtype=torch.bool, device=emb.device).tril(kept)[None, None]
    kwargs: dict[str, Any] = {FLAGS: flags} if flags is not None else {}
    out = llm.base_model(inputs_embeds=emb, past_key_values=cache, use_cache=True,
                         position_ids=torch.arange(start, start + q, device=emb.device)[None],
                         attention_mask=mask_for(llm, mask, emb.dtype), **kwargs)
    return out.last_hidden_state


def prefill(llm: nn.Module, emb: torch.Tensor, raw: torch.Tensor, summary: torch.Tensor, window: torch.Tensor):
    """The visual prefix ``emb`` [B, Lp, H] window by window (one layout for all B rows: ``raw``,
    ``summary`` [Lp] flags, ``window`` [Lp] nondecreasing), evicting each window's raw keys and
    values once it is done. Returns (the cache of what is kept, the last position's hidden state
    [B, H], the cache length after each window)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=llm.config)
    cuts = [0, *(torch.nonzero(window[1:] != window[:-1]).flatten() + 1).tolist(), len(window)]
    kept: list[int] = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        before = cache.get_seq_length()
        h = run_chunk(llm, emb[:, a:b], cache, a, summary[a:b].unsqueeze(0).expand(emb.shape[0], -1))
        keep = torch.cat([torch.arange(before, device=emb.device),
                          before + torch.nonzero(~raw[a:b]).flatten()])
        evict(cache, keep)
        kept.append(cache.get_seq_length())
    return cache, h[:, -1], kept
