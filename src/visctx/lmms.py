"""A trained arm as an lmms-eval model: any of the community's video tasks on any arm.

``lmms-eval --model visctx --model_args pretrained=<arm model dir>[,T=..,M=..,token_op=..] --tasks <task>``
(the ``lmms_eval.models`` entry point in ``pyproject.toml`` registers the name; ``pip install -e
'.[lmms]'``, see ``scripts/setup.sh``). Everything an arm sees goes through the project's own code,
so a task's items are answered exactly as ``visctx evaluate`` answers the same items:

* the task's video (``doc_to_visual``: a path) is decoded by :func:`visctx.video.read_video` as frame
  extraction decodes it (1 fps, then ``max_frames`` uniformly, decoded at the encoder's size);
* the arm's own operators cut (T, M) out of it (:func:`visctx.data.load_context`, the loaders'
  function): the arm's trained (T, M, method) from ``model.json`` unless overridden (with a warning);
* a model that runs its tower in the forward (frozen or trained) gets the frames; a model trained on
  the feature cache gets the cached features' equivalent: the cache's tower (recorded in the training
  feature shards, or ``vision_tower=``) encodes the frames, rounded to float16 as the cache is;
* ``generate_until`` decodes greedily (:meth:`VideoModel.generate`), ``loglikelihood`` is the option
  scorer (:meth:`VideoModel.score_options`, one item per question with all its options, batched as
  the evaluation batches them).

``loglikelihood`` returns each continuation's summed negative log-likelihood (the convention of
lmms-eval's models, whose multiple-choice scorer takes the argmin), not the log-probability its
docstring names; with it lmms-eval's ``acc`` is the project's option-log-likelihood accuracy. Each
``(nll, is_greedy)`` pair is wrapped in lmms-eval's ``GenerationResult``: lmms-eval 0.7.x turns
any other non-text response into its ``str`` (``api.instance.unwrap_generation_output``, unchanged
at its head), after which its own multiple-choice scoring cannot read the pair.

Decoding settings (``fps``, ``max_frames``, ``size``) and the cache's tower default to what the arm
was trained on, read from the shards of the training store that ``model.json`` records
(``features_dir``); a model dir moved away from that store needs them as model args.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

try:
    from lmms_eval.api.instance import GenerationResult, Instance
    from lmms_eval.api.model import lmms
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(f"visctx.lmms needs lmms-eval, the lmms extra: VISCTX_EXTRAS=lmms bash scripts/setup.sh ({e})") from e

from visctx.config import Arm

MODEL_NAME = "visctx"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ARM_ARGS = ("T", "M", "token_op", "pooled_from")


def manifest():
    """The ``lmms_eval.models`` entry point: ``--model visctx`` is :class:`VisctxArm`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.VisctxArm")


# ---------------------------------------------------------------------------------------------
# Videos on disk as the store the project's loaders read


class _Video:
    """One video's ``[max_frames, ...]`` row, decoded when indexed (the loaders' context cache keeps
    the result): frame indices give those frames, or for a feature source their features (only
    those frames encoded)."""

    def __init__(self, source: "VideoSource", path: str):
        self.source, self.path = source, path

    def __getitem__(self, idx: Sequence[int]) -> np.ndarray:
        from visctx.video import read_video

        s = self.source
        frames, _ = read_video(self.path, s.fps, s.max_frames, s.size)
        frames = frames[list(idx)]
        if s.kind == "frame":
            return frames
        from visctx.features import encode_frames

        # float16 as the cache stores it (encode_shard), so the context is the cached one
        return encode_frames(s.tower, s.processor, frames, s.layer).numpy().astype(np.float16)


class VideoSource:
    """Video files as a :class:`visctx.data.FeatureSource`: ``kind`` "frame" (the model's own tower
    encodes them) or "feature" (``tower`` encodes them here, as ``encode_shard`` did for the cache),
    so :func:`visctx.data.load_context` and its cache cut the arm's context exactly as in training."""

    def __init__(self, fps: float, max_frames: int, size: int, tower=None, processor=None, layer: int = -2):
        self.fps, self.max_frames, self.frames, self.size = fps, max_frames, max_frames, size
        self.tower, self.processor, self.layer = tower, processor, layer
        self.kind = "frame" if tower is None else "feature"
        self.quarantined: dict[str, str] = {}
        if tower is not None:
            patch = int(tower.config.patch_size)
            self.grid, self.dim = int(tower.config.image_size) // patch, int(tower.config.hidden_size)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def get(self, key: str) -> _Video:
        return _Video(self, key)


# ---------------------------------------------------------------------------------------------
# What the arm was trained on


def training_store(model_dir: Path, meta: dict) -> dict:
    """The first shard json of the store the model was trained on (``model.json``'s
    ``features_dir``): frames (``fps``, ``frames``, ``size``) or features (``frames``,
    ``vision_tower``, ``layer``); ``{}`` where that store is not on this disk. A relative path is
    read from where lmms-eval runs: the DAG records them from the repository root."""
    store = meta.get("features_dir")
    shard = next(iter(sorted(Path(store).glob("shard-*.json"))), None) if store and Path(store).is_dir() else None
    if shard is None:
        return {}
    try:
        return json.loads(shard.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{shard} (the store {model_dir / 'model.json'} was trained on): unreadable ({e})") from None


def resolve_arm(model_dir: Path, meta: dict, overrides: dict[str, Any]) -> tuple[Arm, bool]:
    """(the arm to answer with, whether it differs from the trained one): ``model.json``'s arm with
    the given ``T``/``M``/``token_op``/``pooled_from`` replacing its own."""
    trained = meta.get("arm")
    given = {k: v for k, v in overrides.items() if v is not None}
    if not isinstance(trained, dict):  # the shared base ("mixture") or a foreign dir: no single arm
        missing = [k for k in ("T", "M") if k not in given]
        if missing:
            raise ValueError(f"{model_dir / 'model.json'}: 'arm' is {trained!r}, not one arm's setting; "
                             f"give {', '.join(f'{k}=' for k in missing)} in --model_args")
        trained = {}
    try:
        spec = {k: int(trained[k]) if k in ("T", "M", "pooled_from") else trained[k]
                for k in ARM_ARGS if k in trained}
    except (TypeError, ValueError) as e:
        raise ValueError(f"{model_dir / 'model.json'}: 'arm' {trained!r} is not an arm ({e})") from None
    for k, v in given.items():
        try:
            spec[k] = str(v) if k == "token_op" else int(v)
        except (TypeError, ValueError):
            raise ValueError(f"--model_args {k}={v!r}: not an integer") from None
    arm = Arm(**spec)
    return arm, bool(trained) and arm != Arm(**{k: trained[k] for k in ARM_ARGS if k in trained})


# ---------------------------------------------------------------------------------------------
# The lmms-eval model


class VisctxArm(lmms):
    """``--model visctx``: a ``visctx-model/1`` dir answering lmms-eval requests (module docstring).

    Model args: ``pretrained`` (the model dir, required); ``T``, ``M``, ``token_op``,
    ``pooled_from`` (the arm: its trained one by default); ``fps``, ``max_frames``, ``size`` (frame
    decoding: the training store's by default; ``fps`` 1, ``size`` the encoder's input size where it
    does not say); ``vision_tower``, ``vision_layer`` (a cache-trained model's tower: the one that
    encoded its cache); ``dtype`` (float32 | bfloat16 | float16); ``max_new_tokens`` (where a task
    gives none); ``threads`` (torch's CPU threads). ``batch_size`` and ``device`` come from lmms-eval's
    own options."""

    is_simple = True

    def __init__(self, pretrained: str, T: int | None = None, M: int | None = None, token_op: str | None = None,
                 pooled_from: int | None = None, fps: float | None = None, max_frames: int | None = None,
                 size: int | None = None, vision_tower: str | None = None, vision_layer: int | None = None,
                 dtype: str = "float32", max_new_tokens: int = 16, threads: int | None = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, device: str | None = None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ValueError(f"--model_args: unknown {', '.join(sorted(unknown))} for --model {MODEL_NAME}; allowed: "
                             "pretrained, T, M, token_op, pooled_from, fps, max_frames, size, vision_tower, "
                             "vision_layer, dtype, max_new_tokens, threads")
        from visctx.model import VideoModel

        if dtype not in DTYPES:
            raise ValueError(f"--model_args dtype={dtype!r}; allowed: {', '.join(DTYPES)}")
        try:
            self.batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"--batch_size {batch_size!r}: {MODEL_NAME} needs a number of items (no 'auto')") from None
        if self.batch_size < 1 or int(max_new_tokens) < 1:
            raise ValueError(f"--batch_size {batch_size} and max_new_tokens={max_new_tokens} must be >= 1")
        if threads:
            torch.set_num_threads(int(threads))
        self.max_new_tokens = int(max_new_tokens)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model_dir = Path(str(pretrained))
        model = VideoModel.load(self.model_dir, dtype=DTYPES[dtype])
        self.model = model.to(self.device).eval()
        meta = model.meta
        self.arm, probing = resolve_arm(self.model_dir, meta, dict(T=T, M=M, token_op=token_op,
                                                                    pooled_from=pooled_from))
        if probing:
            warnings.warn(f"{self.model_dir}: answering as arm {self.arm.id}, not the {meta['arm']['id']} it was "
                          f"trained as (probing the arm outside its training setting)", stacklevel=2)
        store = training_store(self.model_dir, meta)
        where = f"{self.model_dir / 'model.json'} (trained on {meta.get('features_dir')!r})"
        tower = processor = None
        layer = -2
        if model.vision is None:  # trained on the feature cache: encode as the cache was encoded
            from visctx.features import load_vision_tower

            vision_tower = vision_tower or store.get("vision_tower")
            if not vision_tower:
                raise ValueError(f"{where}: the model reads cached features and its training store does not name "
                                 f"the tower that encoded them; give vision_tower=<dir or hub name> in --model_args")
            layer = int(vision_layer if vision_layer is not None else store.get("layer", -2))
            tower, processor = load_vision_tower(vision_tower, device=self.device)
            if int(tower.config.hidden_size) != model.vision_dim:
                raise ValueError(f"{vision_tower}: the tower gives {tower.config.hidden_size}-wide features, "
                                 f"{self.model_dir} expects {model.vision_dim}")
            self.vision_tower = str(vision_tower)
        else:
            self.vision_tower = str(self.model_dir / "vision")
        max_frames = max_frames or store.get("frames")
        if not max_frames:
            raise ValueError(f"{where}: that store is not here to say how many frames it decoded per video; give "
                             f"max_frames= (data.extract.max_frames) in --model_args")
        from visctx.features import _processor_size

        size = size or store.get("size") or _processor_size(processor if tower is not None else model.vision.processor)
        fps = float(fps if fps is not None else store.get("fps", 1.0))
        self.source = VideoSource(fps, int(max_frames), int(size), tower, processor, layer)
        if self.arm.frames > self.source.max_frames:
            warnings.warn(f"arm {self.arm.id} takes {self.arm.frames} frames of "
                          f"{self.source.max_frames} decoded: frames repeat", stacklevel=2)
        from visctx.data import ContextCache

        self.cache = ContextCache(self.source)
        self._warned_sampling = False

    # -- requests --------------------------------------------------------------------------------

    def _video(self, req: Instance) -> str:
        """The request's one video path (``doc_to_visual`` of its doc)."""
        doc_to_visual, doc_id, task, split = req.args[2], req.args[-3], req.args[-2], req.args[-1]
        visual = doc_to_visual(self.task_dict[task][split][doc_id])
        visual = visual if isinstance(visual, (list, tuple)) else [visual]
        if len(visual) != 1 or not isinstance(visual[0], (str, Path)):
            raise ValueError(f"task {task!r}, doc {doc_id}: {MODEL_NAME} answers about one video file; doc_to_visual "
                             f"gave {[type(v).__name__ for v in visual]}")
        return str(visual[0])

    def _batch(self, make, prompts: list, videos: list[str]) -> dict[str, Any]:
        from visctx.data import add_context

        batch = make(prompts, self.arm.T, self.arm.M, summary=self.arm.summary_layout)
        add_context(batch, self.cache.get(videos, self.arm), self.source, self.arm, videos)
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(summed NLL of the continuation, whether greedy decoding gives it) per request, each pair
        in a ``GenerationResult`` that lmms-eval passes on as it is (module docstring): every
        continuation asked of the same (doc, context) is one option of one item, and each task's
        items are scored ``batch_size`` at a time in order, as :func:`visctx.evaluate.evaluate`
        scores a benchmark's records (the same batches: the same padding, the same numbers)."""
        enc = self.model.encoder
        items: dict[tuple, list[int]] = {}  # (task, split, doc, context) -> request indices
        for i, req in enumerate(requests):
            ctx, doc_id, task, split = req.args[0], req.args[-3], req.args[-2], req.args[-1]
            items.setdefault((task, split, doc_id, ctx), []).append(i)
        out: list[GenerationResult | None] = [None] * len(requests)
        by_task: dict[str, list[tuple]] = {}  # batches of one task's items, as evaluate batches a benchmark's
        for k in items:
            by_task.setdefault(k[0], []).append(k)
        for chunk in (keys[s:s + self.batch_size] for keys in by_task.values()
                      for s in range(0, len(keys), self.batch_size)):
            prompts = [enc.choice_prompt(k[3], [str(requests[i].args[1]).strip() for i in items[k]], 0,
                                         where=f"task {k[0]!r}, doc {k[2]}") for k in chunk]
            batch = self._batch(enc.choice_batch, prompts, [self._video(requests[items[k][0]]) for k in chunk])
            logprob, greedy = score_with_greedy(self.model, batch)
            for b, k in enumerate(chunk):
                for j, i in enumerate(items[k]):
                    out[i] = GenerationResult(text=(-float(logprob[b, j]), bool(greedy[b, j])))  # type: ignore[arg-type]
        return out  # type: ignore[return-value]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy continuations (:meth:`VideoModel.generate`) of each context after the video, cut
        at the first of the task's ``until`` strings; each task's ``batch_size`` at a time in order,
        as :func:`visctx.evaluate.generate_answers` generates."""
        enc = self.model.encoder
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple[str, int], list[int]] = {}  # one task's requests per batch
        for i, req in enumerate(requests):
            groups.setdefault((req.args[-2], self._max_new_tokens(req.args[1])), []).append(i)
        for (_, max_new), idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                # generation_batch reads a prompt's text only; choice_prompt wants an option, any one
                prompts = [enc.choice_prompt(requests[i].args[0], ["A"], 0, where=f"request {i}") for i in chunk]
                batch = self._batch(enc.generation_batch, prompts, [self._video(requests[i]) for i in chunk])
                with torch.inference_mode():
                    texts = self.model.generate(batch, max_new)
                for i, text in zip(chunk, texts):
                    out[i] = cut_at(text, requests[i].args[1].get("until"))
        return out  # type: ignore[return-value]

    def _max_new_tokens(self, gen_kwargs: dict) -> int:
        if not self._warned_sampling and (gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0
                                          or int(gen_kwargs.get("num_beams") or 1) > 1):
            warnings.warn(f"{MODEL_NAME} decodes greedily; the task's sampling/beam settings are ignored", stacklevel=3)
            self._warned_sampling = True
        return int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError(f"{MODEL_NAME}: multi-round generation is not supported (the arms answer one "
                                  f"question about one video)")


def cut_at(text: str, until: str | Iterable[str] | None) -> str:
    """``text`` up to the first stop string of ``until`` (lmms-eval's stop sequences)."""
    for stop in [until] if isinstance(until, str) else (until or []):
        if stop:
            text = text.split(stop)[0]
    return text


def score_with_greedy(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`VideoModel.score_options` (``logprob`` [B, K]) and whether each option is the greedy
    continuation [B, K], from the logits the scorer computes anyway (read by a hook on the LM head):
    one forward, and the log-likelihoods are the scorer's own."""
    from visctx.model import IGNORE

    seen: list[torch.Tensor] = []
    hook = model.llm.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        scores = model.score_options(batch)
    finally:
        hook.remove()
    top = seen[-1].argmax(-1)
    logprob = scores["logprob"]
    if bool(batch["single_token"]):  # logits at each item's last position, one token per option
        greedy = top.unsqueeze(1) == batch["option_ids"]
    else:  # logits at every option token, rows in (item, option) order
        target = batch["labels"][:, 1:]
        rows, pos = (target != IGNORE).nonzero(as_tuple=True)
        misses = torch.zeros(target.shape[0], dtype=torch.long, device=top.device)
        misses.index_add_(0, rows, (top != target[rows, pos]).long())
        greedy = torch.zeros(logprob.shape, dtype=torch.bool, device=top.device)
        greedy[batch["row_item"], batch["row_option"]] = misses == 0
    return logprob, greedy & torch.isfinite(logprob)
