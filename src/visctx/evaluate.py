"""Evaluate one arm on one multiple-choice benchmark: option log-likelihood accuracy, the
benchmark's official score, and held-out loss.

Three answering modes (``evaluate.answer_mode``). ``loglik`` (the default; the tiny model cannot be
asked to emit a letter): the answer is the option with the highest summed log-likelihood, each
option scored as a continuation of a prompt that does not list the options, so option order cannot
matter and circular orderings (Event-Bench) give the same answer every time. A sum favours short
options on real benchmarks (every token costs log-probability), so ``loglik_norm`` takes the highest
log-likelihood per option token instead (lm-eval's ``acc_norm`` divides by the option's bytes; per
token is the length that the model scores). Either loglik mode records both accuracies
(``loglik_accuracy``: ``sum``, ``per_token``); the tables use the mode's. ``generate`` (what the
official harnesses do): the prompt lists the options as ``A. ...`` lines with the instruction to
answer with the letter, the model decodes greedily, and :func:`visctx.benchmarks.parse_letter`
reads the letter into ``predictions`` (``None``: unparsable). The score is the benchmark's rule in
the ``scoring`` mode (``evaluate.scoring``: ``official`` by default, :mod:`visctx.benchmarks`), which
reads the generated text itself with its own extractor -- the official scripts read answers
differently from ``parse_letter`` -- and decides how items, tries and tasks are averaged.
The held-out LM loss is the study's y-axis: mean NLL per answer token of the correct option, with
the same layout and answer tokens as in training.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch

from visctx.config import Arm
from visctx.files import write_json_atomic, write_timing


def evaluate(
    model_dir: str,
    eval_json: str,
    features_dir: str,
    arm: Arm,
    out_json: str,
    batch_size: int = 32,
    threads: int = 1,
    benchmark: str = "synthetic",
    answer_mode: str = "loglik",
    max_new_tokens: int = 16,
    scoring: str = "official",
) -> dict:
    """Score every item of ``eval_json`` with the model in ``model_dir`` under ``arm``; write
    ``{"arm", "benchmark", "n", "loss", "accuracy", "score", "official", "scoring", "predictions",
    "per_task", "T", "M", "token_op", "frame_op", "pooled_from"}`` to ``out_json`` atomically and
    return it (``official``: the benchmark's rule in the ``scoring`` mode).

    Args:
        model_dir: the trained model dir (``VideoModel.save``).
        eval_json: the evaluation JSON (multiple-choice records).
        features_dir: the features (or frames) of the evaluation videos.
        arm: the arm (``T<frames>-M<tokens>-<op>[-from<S>]``) whose context the model sees.
        out_json: the evaluation to write.
        batch_size: items scored at once.
        threads: torch's CPU threads.
        benchmark: whose official rule scores the answers (``synthetic`` or a benchmark's name).
        answer_mode: ``loglik`` (the option of highest summed log-likelihood), ``loglik_norm``
            (highest per option token) or ``generate`` (decode a letter).
        max_new_tokens: the most tokens decoded per answer (``generate``).
        scoring: ``official`` (the benchmark's own script's rule), ``lmms_eval`` or ``strict``
            (:mod:`visctx.benchmarks`).
    """
    from visctx.model import VideoModel

    torch.set_num_threads(threads)
    items, store = _open(eval_json, features_dir)
    return evaluate_model(VideoModel.load(model_dir), items, store, arm, out_json, batch_size, benchmark,
                          model_dir=str(model_dir), source=str(eval_json), answer_mode=answer_mode,
                          max_new_tokens=max_new_tokens, scoring=scoring)


def _open(eval_json: str, features_dir: str):
    """The evaluation items (read and checked once per job, however many arms it scores) and the
    feature store that must hold every item's video; items of quarantined videos are dropped
    (the same ones for every arm: they all read this store)."""
    from visctx.benchmarks import read_items
    from visctx.data import usable_records
    from visctx.features import open_store

    items = read_items(eval_json)
    if not items:
        raise ValueError(f"{eval_json}: no records to evaluate")
    store = open_store(features_dir)
    return usable_records(items, store, f"{eval_json} ({store.kind}s in {features_dir})"), store


ANSWER_MODES = ("loglik", "loglik_norm", "generate")


def best_option(logprob: torch.Tensor, ntokens: torch.Tensor, mode: str) -> torch.Tensor:
    """Each item's chosen option from its options' summed log-likelihoods ``[B, K]`` and token counts:
    the highest sum (``loglik``) or the highest mean per token (``loglik_norm``). A padded option slot
    (-inf over 0 tokens) stays -inf, never nan."""
    if mode == "loglik":
        return logprob.argmax(1)
    if mode == "loglik_norm":
        return (logprob / ntokens.clamp(min=1)).argmax(1)
    raise ValueError(f"best_option: mode={mode!r}; allowed: loglik, loglik_norm")


def evaluate_model(model, items: list, store, arm: Arm, out_json: str, batch_size: int = 32,
                   benchmark: str = "synthetic", model_dir: str = "", source: str = "eval",
                   answer_mode: str = "loglik", max_new_tokens: int = 16, scoring: str = "official") -> dict:
    """:func:`evaluate` for an already loaded ``VideoModel`` on items from :func:`_open`."""
    if answer_mode not in ANSWER_MODES:
        raise ValueError(f"answer_mode={answer_mode!r}; allowed: {', '.join(ANSWER_MODES)}")
    from visctx.benchmarks import rule_of, score
    from visctx import cpu
    from visctx.data import ContextCache, EvalRecord, choice_loader, is_frames, videos_sha

    arm = arm if isinstance(arm, Arm) else Arm.from_id(str(arm))
    kernels = cpu.check()
    cpu.require_same(model.meta.get("cpu"), kernels, model_dir or "the model")
    rule_of(benchmark, scoring)  # a bad mode fails before any item is scored
    if is_frames(store) != (model.vision is not None):
        raise ValueError(f"{model_dir or 'the model'}: a model {'with' if model.vision else 'without'} its own vision "
                         f"tower cannot be evaluated on {store.kind}s ({store.dir}); "
                         f"model.vision_features must be the one it was trained with")
    t0 = time.perf_counter()
    # data.EvalRecord is benchmarks.BenchItem without the scoring fields (one type: next data.py change)
    records = [EvalRecord(it.id, it.video, it.question, it.options, it.answer, it.task_type) for it in items]
    model.eval()
    cache = ContextCache(store)  # scoring and generation read each item's context once
    loader = choice_loader(records, store, model.encoder, arm, batch_size, source=source, cache=cache)

    pred = torch.zeros(len(records), dtype=torch.long)
    pred_norm = torch.zeros(len(records), dtype=torch.long)
    nll = torch.zeros(len(records), dtype=torch.float64)
    ntok = torch.zeros(len(records), dtype=torch.long)
    answers = torch.tensor([r.answer for r in records], dtype=torch.long)
    with torch.inference_mode():
        for batch in loader:
            s = model.score_options(batch)
            idx, ans = batch["index"], batch["answer"]
            rows = torch.arange(len(idx))
            pred[idx] = best_option(s["logprob"], s["ntokens"], "loglik")
            pred_norm[idx] = best_option(s["logprob"], s["ntokens"], "loglik_norm")
            has = ans >= 0  # MLVU's answer -1 (not among the candidates) has no option to take the loss of
            nll[idx] = torch.where(has, -s["logprob"][rows, ans.clamp(min=0)].double(), 0.0)
            ntok[idx] = torch.where(has, s["ntokens"][rows, ans.clamp(min=0)], 0)

    loglik_acc = {"sum": float((pred == answers).double().mean()),
                  "per_token": float((pred_norm == answers).double().mean())}
    chosen = pred_norm if answer_mode == "loglik_norm" else pred
    correct = chosen == answers
    preds: list[int | None] = chosen.tolist()
    texts = None
    if answer_mode == "generate":
        texts, preds = generate_answers(model, records, store, arm, batch_size, max_new_tokens, source, cache)
        correct = torch.tensor([p == r.answer for p, r in zip(preds, records)])

    def summarise(sel: list[int]) -> dict:
        ii = torch.tensor(sel)
        return {"n": len(sel), "loss": float(nll[ii].sum() / ntok[ii].sum()),
                "accuracy": float(correct[ii].double().mean())}

    by_task: dict[str, list[int]] = defaultdict(list)
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_task[r.task_type].append(i)
        by_video[r.video].append(i)
    overall = summarise(list(range(len(records))))
    official = score(benchmark, items, texts if texts is not None else preds, scoring=scoring)
    result = {
        "arm": arm.id,
        "benchmark": benchmark,
        "n": overall["n"],
        "videos_sha": videos_sha(r.video for r in records),  # collect refuses arms scored on different videos
        "loss": overall["loss"],
        "accuracy": overall["accuracy"],
        "score": official["overall"],  # the benchmark's own rule (synthetic: mean of per-task accuracies)
        "official": official,
        "scoring": official["scoring"],  # the mode applied (its rule: official["rule"])
        "answer_mode": answer_mode,
        **({"loglik_accuracy": loglik_acc} if answer_mode != "generate" else {}),
        "ids": [r.id for r in records],  # the items scored (quarantined videos' items are not)
        "predictions": preds,  # per item, in eval_json order (generate: parse_letter's reading, None: unparsable);
        # the rules re-apply to benchmarks.evaluation_answers(result): these, or the generated texts
        **({"generations": texts, "unparsed": sum(p is None for p in preds)} if texts is not None else {}),
        "per_task": {t: summarise(sel) for t, sel in sorted(by_task.items())},
        # per video: items, summed answer NLL, answer tokens, correct items -- what a bootstrap over
        # evaluation videos resamples (a video's questions are not independent)
        "videos": {v: [len(sel), float(nll[sel].sum()), int(ntok[sel].sum()), int(correct[sel].sum())]
                   for v, sel in sorted(by_video.items())},
        "seed": model.meta.get("seed"),  # the training replicate (the model's own record)
        "T": arm.T,
        "M": arm.M,
        "token_op": arm.token_op,
        "frame_op": arm.frame_op,
        "pooled_from": arm.pooled_from,
        "model_dir": str(model_dir),
        "cpu": kernels,
    }
    seconds = time.perf_counter() - t0
    write_json_atomic(out_json, result, indent=2)
    write_timing(out_json, seconds)  # beside the result, not in it: a rerun writes the same bytes
    return result | {"seconds": round(seconds, 3)}


def generate_answers(model, records: list, store, arm: Arm, batch_size: int, max_new_tokens: int,
                     source: str = "eval", cache=None) -> tuple[list[str], list[int | None]]:
    """(generated texts, parsed option indices) for the records in order, prompts with lettered
    options; ``cache``: the scoring pass's :class:`visctx.data.ContextCache`, whose contexts it reuses."""
    from visctx.benchmarks import parse_letter, prompt_letters
    from visctx.data import ContextCache, add_context

    enc = model.encoder
    cache = cache if cache is not None else ContextCache(store)
    texts: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            prompts = [enc.choice_prompt(prompt_letters(r.question, r.options), r.options, r.answer,
                                         where=f"{source}: record {start + i} (id {r.id!r})")
                       for i, r in enumerate(chunk)]
            batch = enc.generation_batch(prompts, arm.T, arm.M, summary=arm.summary_layout)
            videos = [r.video for r in chunk]
            add_context(batch, cache.get(videos, arm), store, arm, videos)
            texts += model.generate(batch, max_new_tokens)
    return texts, [parse_letter(t, len(r.options)) for t, r in zip(texts, records)]


def evaluate_arms(
    arms: list[Arm],
    arms_dir: str,
    eval_json: str,
    features_dir: str,
    benchmark: str = "synthetic",
    batch_size: int = 32,
    threads: int = 1,
    answer_mode: str = "loglik",
    max_new_tokens: int = 16,
    scoring: str = "official",
) -> dict:
    """:func:`evaluate` for each arm's ``<arms_dir>/<arm>/model`` into
    ``<arms_dir>/<arm>/eval/<benchmark>.json``, in one process (items and features opened once).

    Args:
        arms: the arms to evaluate, each its own ``<arms_dir>/<arm>/model``.
        arms_dir: the root of the per-arm layout.
        eval_json: the evaluation JSON (multiple-choice records).
        features_dir: the features (or frames) of the evaluation videos.
        benchmark: whose official rule scores the answers (``synthetic`` or a benchmark's name).
        batch_size: items scored at once.
        threads: torch's CPU threads.
        answer_mode: ``loglik`` (the option of highest summed log-likelihood), ``loglik_norm``
            (highest per option token) or ``generate`` (decode a letter).
        max_new_tokens: the most tokens decoded per answer (``generate``).
        scoring: ``official`` (the benchmark's own script's rule), ``lmms_eval`` or ``strict``
            (:mod:`visctx.benchmarks`).
    """
    from visctx.model import VideoModel

    torch.set_num_threads(threads)
    items, store = _open(eval_json, features_dir)
    out = {}
    for arm in arms:
        arm = arm if isinstance(arm, Arm) else Arm.from_id(str(arm))
        root = Path(arms_dir) / arm.id
        r = evaluate_model(VideoModel.load(root / "model"), items, store, arm,
                           str(root / "eval" / f"{benchmark}.json"), batch_size, benchmark,
                           model_dir=str(root / "model"), source=str(eval_json), answer_mode=answer_mode,
                           max_new_tokens=max_new_tokens, scoring=scoring)
        out[arm.id] = {k: r[k] for k in ("n", "loss", "accuracy", "seconds")}
        print(f"{arm.id}: loss {r['loss']:.4f}, accuracy {r['accuracy']:.3f} ({r['seconds']} s)", flush=True)
    return out
