"""The video MLLM: projector + LLM and the prompt layout (a plain ``nn.Module``; training wraps it in
Lightning in :mod:`visctx.train`, so evaluation never pays Lightning's ~7 s import).

Layout of one sample (paper §2): ``[user prefix + text before <video>]``, then for each of the T
frames the text label ``frame i:`` followed by that frame's M projected visual tokens, then the
question, the assistant prefix and the answer. Loss is on answer tokens only.

Batches share one arm (same T, M), are padded on the RIGHT and run WITHOUT an attention mask:
attention is causal, so a real token never sees the pads after it, and sdpa without a mask is
2-3x faster on CPU than with one (platform notes). Pads never carry loss. Logits are computed only
at positions that carry loss, which matters with a 152k-word vocabulary.

Batches of an arm with Video-XL's summary tokens (``Arm.summary`` > 1) are the exception: their
visual block holds summary slots, and they run with the 4-D mask of :mod:`visctx.summary` (full
rows) or its cache that evicts raw keys and values window by window (shared prefixes, generation).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from visctx.pretrained import VIDEO_PLACEHOLDER, load_llm

IGNORE = -100
MODEL_FORMAT = "visctx-model/1"
# A prefix shorter than this is cheaper to repeat than to cache: the continuation is a second pass
# through the model (measured on the tiny LLM, 4 videos x 4 questions: 15 tokens 14 ms full vs 22 ms
# shared, 60 tokens 37 vs 17).
SHARED_PREFIX_MIN = 32
SUMMARY_FILE = "summary_tokens.safetensors"  # a model dir's summary embedding and projections (visctx.summary)


# ---------------------------------------------------------------------------------------------
# Prompt layout


@dataclass(frozen=True)
class PromptFormat:
    """Chat wrapping around a turn. Empty for the tiny word-level LLM; a model whose tokenizer has a
    chat template takes it from there (:func:`prompt_layout`, ``model.prompt: {chat_template: true}``)."""

    user_prefix: str = ""
    assistant_prefix: str = ""
    answer_suffix: str = ""
    turn_separator: str = ""  # between an answer and the next user turn (multi-turn records)
    frame_label: str = "frame {i}:"  # text before frame i's visual tokens (1-based ordinal)
    system_prefix: str = ""  # once, before the first user turn (a template's default system prompt)


_TURNS = ("\x02U1\x03", "\x02A1\x03", "\x02U2\x03", "\x02A2\x03")  # sentinels no template writes


def chat_template_format(tokenizer, frame_label: str = "frame {i}:") -> PromptFormat:
    """The layout the tokenizer's own chat template writes (``apply_chat_template``), cut into the
    pieces :class:`PromptEncoder` places around the visual block and the answers.

    Why pieces and not the template per sample: the visual block sits inside the first user turn and
    the answer tokens need labels, so the encoder assembles token pieces; rendering a two-turn
    sentinel conversation once gives those pieces exactly (a test checks that a two-turn record's
    tokens equal the template's). A template whose turns are not one repeated wrapping raises."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'the tokenizer')}: no chat template; "
                         "give model.prompt's fields instead of chat_template: true")
    u1, a1, u2, a2 = _TURNS
    msgs = [{"role": r, "content": c} for r, c in zip(("user", "assistant") * 2, _TURNS)]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    try:
        before, rest = text.split(u1)
        assistant, rest = rest.split(a1)
        between, rest = rest.split(u2)
        assistant2, after = rest.split(a2)
    except ValueError:
        raise ValueError(f"chat template of {tokenizer.name_or_path}: a turn's content is not written "
                         f"verbatim once: {text!r}") from None
    if assistant != assistant2:
        raise ValueError(f"chat template of {tokenizer.name_or_path}: the assistant turns are wrapped "
                         f"differently ({assistant!r} vs {assistant2!r})")
    answer_suffix = os.path.commonprefix([after, between])  # what closes an answer, the last one too
    tail = between[len(answer_suffix):]  # separator + the next user turn's prefix
    n = len(os.path.commonprefix([before[::-1], tail[::-1]]))  # the user prefix both end with
    return PromptFormat(user_prefix=tail[len(tail) - n:], assistant_prefix=assistant, answer_suffix=answer_suffix,
                        turn_separator=tail[:len(tail) - n], frame_label=frame_label,
                        system_prefix=before[:len(before) - n])


def prompt_layout(tokenizer, fields: dict | None) -> PromptFormat:
    """``model.prompt`` as a layout: its fields, or with ``chat_template: true`` the tokenizer's
    template (:func:`chat_template_format`; ``frame_label`` may still be given)."""
    fields = dict(fields or {})
    if fields.pop("chat_template", False):
        frame_label = fields.pop("frame_label", PromptFormat.frame_label)
        given = sorted(k for k, v in fields.items() if v)  # empty pieces: a preset over the default's
        if given:
            raise ValueError(f"model.prompt: with chat_template: true the template gives the pieces; "
                             f"only frame_label may be given, not {', '.join(given)}")
        return chat_template_format(tokenizer, frame_label)
    return PromptFormat(**fields)


@dataclass(frozen=True)
class Prompt:
    """A training sample's text, tokenized once: ``pre`` + [visual block] + ``post``."""

    pre: tuple[int, ...]
    post: tuple[int, ...]
    post_labels: tuple[int, ...]  # token id where the token is an answer token, IGNORE elsewhere


@dataclass(frozen=True)
class ChoicePrompt:
    """A multiple-choice item: ``pre`` + [visual block] + ``context`` + one of ``options``."""

    pre: tuple[int, ...]
    context: tuple[int, ...]
    options: tuple[tuple[int, ...], ...]  # each option's tokens incl. the answer suffix
    answer: int


class PromptEncoder:
    """Tokenizes prompt pieces with caching; the only place that knows the text layout."""

    def __init__(self, tokenizer, fmt: PromptFormat = PromptFormat()):
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._ids = lru_cache(maxsize=4096)(self._encode)
        self._blocks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _encode(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        return tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ids(self, text: str) -> tuple[int, ...]:
        return self._ids(text)

    def _split_video(self, human: str, where: str) -> tuple[str, str]:
        if human.count(VIDEO_PLACEHOLDER) != 1:
            raise ValueError(f"{where}: the first human turn must contain exactly one {VIDEO_PLACEHOLDER!r}, "
                             f"found {human.count(VIDEO_PLACEHOLDER)}")
        before, after = human.split(VIDEO_PLACEHOLDER)
        return before, after.strip()

    def train_prompt(self, turns: Sequence[tuple[str, str]], where: str = "record") -> Prompt:
        """``turns`` = [(human, gpt), ...]; every gpt turn is an answer with loss."""
        f = self.fmt
        before, after = self._split_video(turns[0][0], where)
        pre = self.ids(f.system_prefix + f.user_prefix + before.strip())
        post: list[int] = []
        labels: list[int] = []
        for n, (human, gpt) in enumerate(turns):
            if n == 0:
                question = after
            else:
                if VIDEO_PLACEHOLDER in human:
                    raise ValueError(f"{where}: {VIDEO_PLACEHOLDER!r} may appear only in the first human turn")
                question = f.turn_separator + f.user_prefix + human.strip()
            q = self.ids(question) + self.ids(f.assistant_prefix)
            a = self.ids(gpt.strip()) + self.ids(f.answer_suffix)
            if not a:
                raise ValueError(f"{where}: answer {gpt!r} has no tokens")
            post += q + a
            labels += [IGNORE] * len(q) + list(a)
        return Prompt(pre, tuple(post), tuple(labels))

    def choice_prompt(self, question: str, options: Sequence[str], answer: int, where: str = "record") -> ChoicePrompt:
        """A multiple-choice item; the question gets the visual block in front (``<video>\\n``)."""
        f = self.fmt
        human = question if VIDEO_PLACEHOLDER in question else f"{VIDEO_PLACEHOLDER}\n{question}"
        before, after = self._split_video(human, where)
        pre = self.ids(f.system_prefix + f.user_prefix + before.strip())
        context = self.ids(after) + self.ids(f.assistant_prefix)
        opts = []
        for k, opt in enumerate(options):
            ids = self.ids(str(opt).strip()) + self.ids(f.answer_suffix)
            if not ids:
                raise ValueError(f"{where}: option {k} ({opt!r}) has no tokens")
            opts.append(ids)
        return ChoicePrompt(pre, context, tuple(opts), answer)

    def visual_block(self, T: int, M: int, summary: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids of the block with pads at visual slots, offsets of the T*M visual slots), cached;
        ``summary`` = (r, w): with summary tokens (:meth:`summary_block`)."""
        if summary is not None:
            return self.summary_block(T, M, *summary)[:2]
        key = (T, M)
        if key not in self._blocks:
            ids: list[int] = []
            slots: list[int] = []
            for i in range(1, T + 1):
                ids += self.ids(self.fmt.frame_label.format(i=i))
                slots += range(len(ids), len(ids) + M)
                ids += [self.pad_id] * M
            self._blocks[key] = (torch.tensor(ids, dtype=torch.long), torch.tensor(slots, dtype=torch.long))
        return self._blocks[key]

    def summary_block(self, T: int, M: int, r: int, w: int) -> tuple[torch.Tensor, ...]:
        """The visual block with Video-XL's summary tokens (:mod:`visctx.summary`): (ids, offsets of
        the T*M raw visual slots, offsets of the summary slots, the window in progress at each
        position of the block), cached. The raw tokens are numbered across frames and cut into
        windows of w; a summary slot follows every r-th raw token of a window, its last one and the
        stream's last one. A frame label belongs to the window of the raw token after it (it stays
        visible to everything after: it is text)."""
        key = (T, M, r, w)
        if key not in self._blocks:
            ids: list[int] = []
            slots: list[int] = []
            sums: list[int] = []
            window: list[int] = []
            g = 0  # raw tokens so far
            for i in range(1, T + 1):
                label = self.ids(self.fmt.frame_label.format(i=i))
                ids += label
                window += [g // w] * len(label)
                for _ in range(M):
                    slots.append(len(ids))
                    ids.append(self.pad_id)
                    window.append(g // w)
                    g += 1
                    in_window = (g - 1) % w + 1  # raw tokens of this window so far
                    if in_window % r == 0 or in_window == w or g == T * M:
                        sums.append(len(ids))
                        ids.append(self.pad_id)
                        window.append((g - 1) // w)
            self._blocks[key] = tuple(torch.tensor(x, dtype=torch.long) for x in (ids, slots, sums, window))
        return self._blocks[key]

    # -- batches ---------------------------------------------------------------------------------

    def _assemble(self, rows: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]], T: int, M: int,
                  keys: Sequence[str] | None = None, summary: tuple[int, int] | None = None) -> dict[str, Any]:
        """rows of (pre, post, post_labels) -> a batch.

        Without ``keys``, or when no two rows share one: every row is its whole sequence, right-padded
        (``input_ids``, ``labels``, ``vis_index``, ``lengths``). With ``keys`` (each row's video), rows
        of one video with the same ``pre`` share ONE prefix, ``pre`` + visual block, computed once:
        ``prefix_ids`` [P, Lp], ``vis_index`` (its visual slots), ``prefix_keys`` (its videos) and
        ``row_prefix`` (each row's prefix); ``input_ids``/``labels`` then hold each row's ``post``
        only, right-padded. Why: the questions of one video share a visual block of up to ~700 tokens
        and a few text tokens each; computing the block once made a training step of 4 videos x 4
        questions 4x faster at T24-M25, with the same outputs (the continuation attends to the cached
        keys and values of the prefix; measured and tested). Rows whose ``pre`` lengths differ keep
        the full layout. With summary tokens rows take the prefix layout even when they share no
        video: their prefixes then run through the evicting cache. ``lengths`` is every row's full
        length either way; ``n_real``/``n_slots`` count the token positions computed and how many
        of them are real (padding accounting).

        ``summary`` = (r, w): the block holds summary slots too (:meth:`summary_block`), given as
        ``sum_index`` (like ``vis_index``) and ``window_id``, the window in progress at each
        position of the rows (or of the prefixes; -1 after the video), which the model's attention
        mask is made of.
        """
        if summary is not None:
            block, slots, sums, window = self.summary_block(T, M, *summary)
        else:
            block, slots = self.visual_block(T, M)
        nb = len(block)
        prefix_of: dict[tuple[str, tuple[int, ...]], int] = {}
        if keys is not None:
            if len(keys) != len(rows):
                raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
            row_prefix = [prefix_of.setdefault((k, pre), len(prefix_of)) for k, (pre, _, _) in zip(keys, rows)]
        # with summary tokens a prefix of its own pays too: the evicting cache (visctx.summary) attends
        # to the kept keys only, where full rows attend through an L x L mask (measured 2.8x faster)
        shared = (keys is not None and (len(prefix_of) < len(rows) or summary is not None)
                  and len({len(r[0]) for r in rows}) == 1 and len(rows[0][0]) + nb >= SHARED_PREFIX_MIN)
        if shared:
            lp = len(rows[0][0])
            Lp = lp + nb
            P, R = len(prefix_of), len(rows)
            prefix_ids = torch.empty((P, Lp), dtype=torch.long)
            for (_, pre), p in prefix_of.items():
                if lp:
                    prefix_ids[p, :lp] = torch.tensor(pre)
                prefix_ids[p, lp:] = block
            Lc = max(1, max(len(post) for _, post, _ in rows))
            ids = torch.full((R, Lc), self.pad_id, dtype=torch.long)
            labels = torch.full((R, Lc), IGNORE, dtype=torch.long)
            for r, (_, post, lab) in enumerate(rows):
                if post:
                    ids[r, :len(post)] = torch.tensor(post)
                    labels[r, :len(post)] = torch.tensor(lab)
            posts = sum(len(post) for _, post, _ in rows)
            out = {"prefix_ids": prefix_ids, "vis_index": (slots + lp).expand(P, -1).clone(),
                   "prefix_keys": [k for k, _ in prefix_of], "row_prefix": torch.tensor(row_prefix),
                   "input_ids": ids, "labels": labels, "lengths": torch.tensor([Lp + len(r[1]) for r in rows]),
                   "n_real": torch.tensor(P * Lp + posts), "n_slots": torch.tensor(P * Lp + R * Lc)}
            if summary is not None:
                out["sum_index"] = (sums + lp).expand(P, -1).clone()
                out["window_id"] = torch.cat([torch.zeros(lp, dtype=torch.long), window]).expand(P, -1).clone()
            return out
        lengths = [len(pre) + nb + len(post) for pre, post, _ in rows]
        Lmax = max(lengths)
        ids = torch.full((len(rows), Lmax), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), Lmax), IGNORE, dtype=torch.long)
        vis = torch.empty((len(rows), T * M), dtype=torch.long)
        for r, (pre, post, lab) in enumerate(rows):
            p = len(pre)
            if p:
                ids[r, :p] = torch.tensor(pre)
            ids[r, p:p + nb] = block
            if post:
                ids[r, p + nb:p + nb + len(post)] = torch.tensor(post)
                labels[r, p + nb:p + nb + len(post)] = torch.tensor(lab)
            vis[r] = slots + p
        out = {"input_ids": ids, "labels": labels, "vis_index": vis, "lengths": torch.tensor(lengths),
               "n_real": torch.tensor(sum(lengths)), "n_slots": torch.tensor(len(rows) * Lmax)}
        if summary is not None:
            out["sum_index"] = torch.stack([sums + len(pre) for pre, _, _ in rows])
            out["window_id"] = torch.full((len(rows), Lmax), -1, dtype=torch.long)
            for r, (pre, _, _) in enumerate(rows):
                out["window_id"][r, :len(pre)] = 0
                out["window_id"][r, len(pre):len(pre) + nb] = window
        return out

    def train_batch(self, prompts: Sequence[Prompt], T: int, M: int, keys: Sequence[str] | None = None,
                    summary: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """``keys``: each prompt's video, so that prompts of one video share the visual prefix;
        ``summary``: (r, w) of summary tokens (``Arm.summary_layout``)."""
        return self._assemble([(p.pre, p.post, p.post_labels) for p in prompts], T, M, keys, summary)

    def generation_batch(self, prompts: Sequence[ChoicePrompt], T: int, M: int,
                         summary: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """``pre`` + visual block + ``context`` per item (the options are not appended): the prompt
        a model continues in generation mode."""
        return self._assemble([(p.pre, p.context, (IGNORE,) * len(p.context)) for p in prompts], T, M,
                              summary=summary)

    def choice_batch(self, prompts: Sequence[ChoicePrompt], T: int, M: int, keys: Sequence[str] | None = None,
                     summary: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Single-token options of all items: one row per item, read the next-token distribution.
        Otherwise one row per (item, option), with labels on the option's tokens. ``keys``: each
        item's video (items of one video share the visual prefix); ``summary``: (r, w)."""
        K = max(len(p.options) for p in prompts)
        single = all(len(o) == 1 for p in prompts for o in p.options)
        if single:
            rows = [(p.pre, p.context, (IGNORE,) * len(p.context)) for p in prompts]
            batch = self._assemble(rows, T, M, keys, summary)
            option_ids = torch.zeros((len(prompts), K), dtype=torch.long)
            option_mask = torch.zeros((len(prompts), K), dtype=torch.bool)
            for b, p in enumerate(prompts):
                option_ids[b, :len(p.options)] = torch.tensor([o[0] for o in p.options])
                option_mask[b, :len(p.options)] = True
            return batch | {"option_ids": option_ids, "option_mask": option_mask,
                            "answer": torch.tensor([p.answer for p in prompts]), "single_token": torch.tensor(True)}
        rows, row_item, row_option = [], [], []
        for b, p in enumerate(prompts):
            for k, opt in enumerate(p.options):
                rows.append((p.pre, p.context + opt, (IGNORE,) * len(p.context) + opt))
                row_item.append(b)
                row_option.append(k)
        batch = self._assemble(rows, T, M, None if keys is None else [keys[b] for b in row_item], summary)
        return batch | {"row_item": torch.tensor(row_item), "row_option": torch.tensor(row_option),
                        "n_items": torch.tensor(len(prompts)), "n_options": torch.tensor(K),
                        "answer": torch.tensor([p.answer for p in prompts]), "single_token": torch.tensor(False)}


# ---------------------------------------------------------------------------------------------
# Modules


class Projector(nn.Module):
    """Vision features -> LLM embeddings: Linear -> SiLU -> Linear (paper §2).

    In front of the first Linear sits a FIXED per-dimension standardisation ``(x - mean) / std``
    (buffers, not trained; identity unless given). Composed with the Linear it is the same
    function class as the paper's MLP -- only the optimisation is preconditioned. Vision features
    share a large common offset per dimension (its spread across dimensions is ~2.5x the
    within-dimension variation for the tiny SigLIP), which hides what differs between frames;
    measured: standardising cut the steps the tiny LLM needs to leave the answer prior 3-4x.
    """

    def __init__(self, vision_dim: int, llm_hidden: int, feature_mean: torch.Tensor | None = None,
                 feature_std: torch.Tensor | None = None):
        super().__init__()
        self.vision_dim, self.llm_hidden = vision_dim, llm_hidden
        mean = torch.zeros(vision_dim) if feature_mean is None else torch.as_tensor(feature_mean, dtype=torch.float32)
        std = torch.ones(vision_dim) if feature_std is None else torch.as_tensor(feature_std, dtype=torch.float32)
        if mean.shape != (vision_dim,) or std.shape != (vision_dim,) or not bool((std > 0).all()):
            raise ValueError(f"feature mean/std must be {vision_dim} values (std > 0), got {tuple(mean.shape)}, "
                             f"{tuple(std.shape)}")
        self.register_buffer("in_mean", mean)
        self.register_buffer("in_std", std)
        self.fc1 = nn.Linear(vision_dim, llm_hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(llm_hidden, llm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.in_mean.to(x.dtype)) / self.in_std.to(x.dtype)
        return self.fc2(self.act(self.fc1(x)))


class VideoModel(nn.Module):
    """Projector + causal LLM: answer-token NLL for training, option log-likelihoods for scoring.

    Batches carry either cached patch features already cut to the arm (``visual``) or, for a
    model with its own tower (``vision``, :class:`visctx.features.VisionEncoder`), the arm's raw
    frames (``frames`` + ``arm``) that the tower encodes and the operators cut in the forward.

    ``summary_tokens``: give the model Video-XL's summary tokens (:mod:`visctx.summary`; also
    :meth:`enable_summary_tokens`), which batches of an arm with ``summary`` > 1 need; a batch
    without summary slots runs exactly as the model without them."""

    def __init__(self, llm, tokenizer, vision_dim: int, prompt_format: PromptFormat = PromptFormat(),
                 projector: Projector | None = None, meta: dict | None = None, vision: nn.Module | None = None,
                 summary_tokens: bool = False):
        super().__init__()
        if vision is not None and vision.dim != vision_dim:
            raise ValueError(f"the vision tower gives {vision.dim}-wide features, the projector expects {vision_dim}")
        self.vision = vision
        self.llm = llm
        self.tokenizer = tokenizer
        hidden = llm.get_input_embeddings().embedding_dim
        self.projector = projector if projector is not None else Projector(vision_dim, hidden)
        if (self.projector.vision_dim, self.projector.llm_hidden) != (vision_dim, hidden):
            raise ValueError(f"projector is {self.projector.vision_dim}->{self.projector.llm_hidden}, "
                             f"model needs {vision_dim}->{hidden}")
        self.projector.to(next(llm.parameters()).dtype)
        self.vision_dim = vision_dim
        self.prompt_format = prompt_format
        self.encoder = PromptEncoder(tokenizer, prompt_format)
        self.meta: dict[str, Any] = dict(meta or {})
        self.summary_tokens = None
        if summary_tokens:
            self.enable_summary_tokens()

    def enable_summary_tokens(self):
        """Add the summary embedding and per-layer summary projections, initialised from the LLM's
        current ones (once; a model that has them keeps them). Returns the module."""
        if self.summary_tokens is None:
            from visctx.summary import SummaryTokens

            self.summary_tokens = SummaryTokens(self.llm)
        return self.summary_tokens

    # -- forward ---------------------------------------------------------------------------------

    def visual_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[B, T, M, D]``: the batch's cached context, or its frames through the tower and the
        arm's operators (the same :func:`visctx.context.visual_context` as on the cache)."""
        if "frames" not in batch:
            if self.vision is not None:
                raise ValueError("this model encodes frames with its own vision tower; the batch holds cached "
                                 "features (give it the frame store, model.vision_features: forward)")
            return batch["visual"]
        if self.vision is None:
            raise ValueError("the batch holds frames but this model has no vision tower (it was trained on "
                             "cached features; give it the feature store)")
        from visctx.config import parse_arm
        from visctx.context import visual_context

        return visual_context(self.vision(batch["frames"]), parse_arm(batch["arm"]), batch.get("mask_seeds"),
                              self.training)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the projected visual tokens scattered into their slots (of the
        prefixes, in a shared-prefix batch)."""
        ids = batch["prefix_ids"] if "prefix_ids" in batch else batch["input_ids"]
        emb = self.llm.get_input_embeddings()(ids)
        visual = self.visual_tokens(batch)  # [R, T, M, D] (R < rows: one per item of a choice batch)
        R, T, M, D = visual.shape
        if D != self.vision_dim:
            raise ValueError(f"visual features are {D} wide, the projector expects {self.vision_dim}")
        if batch["vis_index"].shape != (emb.shape[0], T * M):
            raise ValueError(f"vis_index {tuple(batch['vis_index'].shape)} does not match {emb.shape[0]} rows "
                             f"x T*M={T * M} visual tokens")
        if R != emb.shape[0]:  # one row per (item, option): repeat each item's visual context
            visual = visual[batch["row_item"]]
        v = self.projector(visual.to(emb.dtype)).reshape(emb.shape[0], T * M, -1)
        idx = batch["vis_index"].unsqueeze(-1).expand(-1, -1, emb.shape[-1])
        emb = emb.scatter(1, idx, v)
        if "sum_index" in batch:
            if self.summary_tokens is None:
                raise ValueError("the batch has summary-token slots (an arm with summary > 1) but this model has no "
                                 "summary tokens (VideoModel.enable_summary_tokens)")
            sidx = batch["sum_index"].unsqueeze(-1).expand(-1, -1, emb.shape[-1])
            emb = emb.scatter(1, sidx, self.summary_tokens.embedding.to(emb.dtype).expand(sidx.shape))
        return emb

    def _summary_inputs(self, batch: dict[str, Any], L: int) -> dict[str, Any]:
        """The forward keywords of a full-row summary batch: the 4-D mask and the summary flags."""
        from visctx.summary import FLAGS, attention_mask, mask_for

        if "sum_index" not in batch:
            return {}
        B = batch["vis_index"].shape[0]
        dev = batch["vis_index"].device
        raw = torch.zeros(B, L, dtype=torch.bool, device=dev).scatter_(1, batch["vis_index"], True)
        flags = torch.zeros(B, L, dtype=torch.bool, device=dev).scatter_(1, batch["sum_index"], True)
        mask = attention_mask(raw, batch["window_id"][:, :L])
        return {"attention_mask": mask_for(self.llm, mask, self.llm.get_input_embeddings().weight.dtype), FLAGS: flags}

    def _summary_layout(self, batch: dict[str, Any], row: int, end: int) -> tuple[torch.Tensor, ...]:
        """(raw, summary flags, window) of ``row``'s first ``end`` positions: the prefix
        :func:`visctx.summary.prefill` runs."""
        dev = batch["vis_index"].device
        raw = torch.zeros(end, dtype=torch.bool, device=dev).scatter_(0, batch["vis_index"][row], True)
        flags = torch.zeros(end, dtype=torch.bool, device=dev).scatter_(0, batch["sum_index"][row], True)
        return raw, flags, batch["window_id"][row, :end]

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embed(batch)
        out = self.llm.base_model(inputs_embeds=emb, use_cache=False, **self._summary_inputs(batch, emb.shape[1]))
        return out.last_hidden_state

    def _unshared(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A shared-prefix batch as full rows (prefix + continuation): where the key/value cache
        cannot be used (transformers turns it off under gradient checkpointing in training)."""
        rp, Lp = batch["row_prefix"], batch["prefix_ids"].shape[1]
        out = {k: v for k, v in batch.items() if k not in ("prefix_ids", "prefix_keys", "row_prefix")}
        out["input_ids"] = torch.cat([batch["prefix_ids"][rp], batch["input_ids"]], 1)
        out["labels"] = torch.cat([torch.full_like(batch["prefix_ids"][rp], IGNORE), batch["labels"]], 1)
        out["vis_index"] = batch["vis_index"][rp]
        for key in ("visual", "frames"):
            if key in batch:
                out[key] = batch[key][rp]
        if "mask_seeds" in batch:
            out["mask_seeds"] = [batch["mask_seeds"][int(p)] for p in rp]
        if "sum_index" in batch:
            out["sum_index"] = batch["sum_index"][rp]
            out["window_id"] = F.pad(batch["window_id"][rp], (0, batch["input_ids"].shape[1]), value=-1)
        return out

    def _predicting_states(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden states [R, L, H], the label each one predicts [R, L] (IGNORE where none), the
        position of each row's last real token in them [R]), for either batch layout."""
        name = "is_activation_checkpointing" if hasattr(self.llm, "is_activation_checkpointing") else "is_gradient_checkpointing"
        if "row_prefix" in batch and self.training and getattr(self.llm, name, False):
            batch = self._unshared(batch)
        labels = batch["labels"]
        if "row_prefix" not in batch:  # h[:, t] predicts token t + 1
            return self.hidden_states(batch), F.pad(labels[:, 1:], (0, 1), value=IGNORE), batch["lengths"] - 1
        from transformers import DynamicCache

        rp = batch["row_prefix"]
        if "sum_index" in batch:  # the prefix window by window, each window's raw keys/values evicted
            from visctx.summary import prefill, run_chunk

            emb = self.embed(batch)
            Lp = emb.shape[1]
            cache, last, _ = prefill(self.llm, emb, *self._summary_layout(batch, 0, Lp))
            cache.batch_select_indices(rp)
            cont = run_chunk(self.llm, self.llm.get_input_embeddings()(batch["input_ids"]), cache, Lp)
            h = torch.cat([last[rp].unsqueeze(1), cont], 1)
            return h, F.pad(batch["labels"], (0, 1), value=IGNORE), batch["lengths"] - Lp
        out = self.llm.base_model(inputs_embeds=self.embed(batch), past_key_values=DynamicCache(config=self.llm.config),
                                  use_cache=True)
        cache = out.past_key_values
        cache.batch_select_indices(rp)  # each row continues its own prefix
        cont = self.llm.base_model(inputs_embeds=self.llm.get_input_embeddings()(batch["input_ids"]),
                                   past_key_values=cache, use_cache=True).last_hidden_state
        # [the prefix's last state, continuation states]: h[:, t] predicts continuation token t
        h = torch.cat([out.last_hidden_state[:, -1][rp].unsqueeze(1), cont], 1)
        return h, F.pad(labels, (0, 1), value=IGNORE), batch["lengths"] - batch["prefix_ids"].shape[1]

    def token_nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(NLL of every loss-carrying token, its row), logits only at those positions."""
        h, target, _ = self._predicting_states(batch)
        rows, pos = (target != IGNORE).nonzero(as_tuple=True)
        logits = self.llm.get_output_embeddings()(h[rows, pos]).float()
        return F.cross_entropy(logits, target[rows, pos], reduction="none"), rows

    def per_row_nll(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed NLL, answer-token count) per row."""
        nll, rows = self.token_nll(batch)
        n = batch["input_ids"].shape[0]
        sums = torch.zeros(n, dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
        counts = torch.bincount(rows, minlength=n)
        return sums, counts

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean NLL per answer token over the batch."""
        nll, _ = self.token_nll(batch)
        return nll.mean()

    @torch.no_grad()
    def score_options(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``logprob`` [B, K] summed over each option's tokens (-inf for absent options) and
        ``ntokens`` [B, K]; built by :meth:`PromptEncoder.choice_batch`."""
        if bool(batch["single_token"]):
            h, _, last = self._predicting_states(batch)  # the last real token predicts the option
            logits = self.llm.get_output_embeddings()(h[torch.arange(h.shape[0]), last]).float()
            logp = logits.log_softmax(-1).gather(1, batch["option_ids"])
            mask = batch["option_mask"]
            return {"logprob": logp.masked_fill(~mask, -math.inf), "ntokens": mask.long()}
        sums, counts = self.per_row_nll(batch)
        B, K = int(batch["n_items"]), int(batch["n_options"])
        logprob = torch.full((B, K), -math.inf, device=sums.device)
        ntokens = torch.zeros((B, K), dtype=torch.long, device=sums.device)
        logprob[batch["row_item"], batch["row_option"]] = -sums
        ntokens[batch["row_item"], batch["row_option"]] = counts
        return {"logprob": logprob, "ntokens": ntokens}

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int = 16) -> list[str]:
        """Greedy continuations of a :meth:`PromptEncoder.generation_batch`, decoded to text.

        The rows are right-padded; generation appends after each row's last token, so they are
        moved to the right end (left padding) with the mask and positions following them. With
        summary tokens each row is decoded on its own from the evicting cache
        (:meth:`_generate_with_summaries`)."""
        if "sum_index" in batch:
            return self._generate_with_summaries(batch, max_new_tokens)
        emb = self.embed(batch)
        B, L, _ = emb.shape
        lengths = batch["lengths"].tolist()
        left = torch.zeros_like(emb)
        mask = torch.zeros((B, L), dtype=torch.long, device=emb.device)
        for r, n in enumerate(lengths):
            left[r, L - n:] = emb[r, :n]
            mask[r, L - n:] = 1
        pad = self.encoder.pad_id
        eos = self.tokenizer.eos_token_id
        out = self.llm.generate(inputs_embeds=left, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def _generate_with_summaries(self, batch: dict[str, torch.Tensor], max_new_tokens: int) -> list[str]:
        """Greedy decoding as :meth:`generate`, each row's visual prefix run window by window with
        its raw keys and values evicted, so the text after the video sees only the summaries."""
        from visctx.summary import prefill, run_chunk

        emb = self.embed(batch)
        head, embed_tokens = self.llm.get_output_embeddings(), self.llm.get_input_embeddings()
        eos = self.tokenizer.eos_token_id
        texts = []
        for r in range(emb.shape[0]):
            end, n = int(batch["sum_index"][r, -1]) + 1, int(batch["lengths"][r])  # the block ends with a summary
            cache, h, _ = prefill(self.llm, emb[r:r + 1, :end], *self._summary_layout(batch, r, end))
            if n > end:
                h = run_chunk(self.llm, emb[r:r + 1, end:n], cache, end)[:, -1]
            new: list[int] = []
            for pos in range(n, n + max_new_tokens):
                tok = int(head(h).argmax(-1))
                if tok == eos:
                    break
                new.append(tok)
                h = run_chunk(self.llm, embed_tokens(torch.tensor([[tok]], device=emb.device)), cache, pos)[:, -1]
            texts.append(self.tokenizer.decode(new, skip_special_tokens=True).strip())
        return texts

    # -- persistence -----------------------------------------------------------------------------

    def save(self, out_dir: str | Path, **meta: Any) -> Path:
        """Write the model dir: ``llm/`` (save_pretrained + tokenizer), ``projector.safetensors``,
        ``model.json`` (dims, prompt format, provenance), ``vision/`` for a model with its own
        tower, ``summary_tokens.safetensors`` for one with summary tokens. Not atomic; see
        ``train`` for that."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.llm.save_pretrained(out / "llm")
        if self.vision is not None:
            self.vision.save(out / "vision")
        self.tokenizer.save_pretrained(out / "llm")
        save_file({k: v.detach().contiguous() for k, v in self.projector.state_dict().items()},
                  str(out / "projector.safetensors"))
        if self.summary_tokens is not None:  # beside the LLM, which save_pretrained writes plain
            save_file({k: v.detach().contiguous() for k, v in self.summary_tokens.state_dict().items()},
                      str(out / SUMMARY_FILE))
        info = {
            "format": MODEL_FORMAT,
            "vision_dim": self.vision_dim,
            "llm_hidden": self.projector.llm_hidden,
            "projector": "standardize-linear-silu-linear",
            "prompt_format": asdict(self.prompt_format),
            **({"vision": {"layer": self.vision.layer, "trainable": self.vision.trainable}} if self.vision else {}),
            **self.meta,
            **meta,
        }
        with open(out / "model.json", "w") as f:
            json.dump(info, f, indent=2, default=str)
        return out

    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32) -> "VideoModel":
        from safetensors.torch import load_file

        d = Path(model_dir)
        try:
            with open(d / "model.json") as f:
                info = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{d}: not a trained model dir (no model.json)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{d / 'model.json'}: not valid JSON, truncated? ({e})") from None
        for key in ("vision_dim", "llm_hidden"):
            if key not in info:
                raise ValueError(f"{d / 'model.json'}: missing key {key!r}")
        if not (d / "projector.safetensors").is_file():
            raise ValueError(f"{d}: missing projector.safetensors")
        for f in sorted(d.rglob("*.safetensors")):  # a short file must not load as garbage or fail deep down
            check_safetensors(f)
        llm, tok = load_llm(d / "llm", dtype=dtype)
        proj = Projector(info["vision_dim"], info["llm_hidden"])
        try:
            state = load_file(str(d / "projector.safetensors"))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise ValueError(f"{d / 'projector.safetensors'}: cannot be read ({type(e).__name__}: {e})") from None
        state.setdefault("in_mean", proj.in_mean)  # a projector saved without standardisation
        state.setdefault("in_std", proj.in_std)
        proj.load_state_dict(state)
        fmt = PromptFormat(**info.get("prompt_format", {}))
        vision = None
        if "vision" in info:
            from visctx.features import VisionEncoder

            vision = VisionEncoder.load(d / "vision", trainable=bool(info["vision"].get("trainable")), dtype=dtype)
        meta = {k: v for k, v in info.items()
                if k not in ("format", "vision_dim", "llm_hidden", "projector", "prompt_format", "vision")}
        model = cls(llm, tok, info["vision_dim"], fmt, projector=proj.to(dtype), meta=meta, vision=vision)
        if (d / SUMMARY_FILE).is_file():
            model.enable_summary_tokens().load_state_dict(load_file(str(d / SUMMARY_FILE)))
        return model


def check_safetensors(path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless its header parses and the file holds every
    tensor byte the header promises (a truncated copy of a model dir is otherwise caught, if at
    all, by an opaque error deep inside safetensors or transformers)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError(f"header of {n} bytes")
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
        raise ValueError(f"{path}: not a valid safetensors file, truncated? ({e})") from None
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise ValueError(f"{path}: truncated: {size} bytes, expected {expected}")


def check_checkpoint(path: str | Path) -> int:
    """The global step saved in a Lightning checkpoint; ``ValueError`` naming ``path`` if the file
    is missing, empty, truncated or overwritten.

    For resuming: a checkpoint cut short by a killed job or a full disk must be reported (and then
    discarded) rather than loaded as garbage or crash the resume in torch's zip reader. The zip
    CRCs catch damage anywhere in the file; the load is memory-mapped (tensors are not read). A
    DeepSpeed checkpoint is a directory of ZeRO shards (checked by DeepSpeed when it loads): its
    step is the one in its name (``step=N``), -1 for ``last.ckpt``, so a numbered one is preferred.
    """
    import re
    import zipfile

    path = Path(path)
    if path.is_dir():
        m = re.search(r"step=(\d+)", path.name)
        return int(m[1]) if m else -1
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: checkpoint is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise ValueError(f"member {bad} fails its CRC")
        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])
    except Exception as e:  # noqa: BLE001 - zipfile, torch and a missing key each raise their own
        raise ValueError(f"{path}: unreadable checkpoint, truncated? ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None


def is_model_dir(path: str | Path) -> bool:
    """A trained model dir (continue from it) rather than a pretrained LLM (fresh projector)."""
    return (Path(path) / "projector.safetensors").is_file()


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written ``tmp`` dir to ``final``, replacing what was there."""
    final = Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
