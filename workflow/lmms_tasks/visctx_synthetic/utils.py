"""lmms-eval task functions over visctx's multiple-choice records ({id, video, question, options,
answer, task_type}): the prompts and the scoring rule of `visctx evaluate` on the synthetic split."""

import os
from collections import defaultdict

import numpy as np

from visctx.benchmarks import parse_letter, prompt_letters

VIDEO_ROOT = os.path.join("results", "data", "videos")  # relative to where lmms-eval runs, like data_files


def doc_to_visual(doc):
    path = os.path.abspath(os.path.join(VIDEO_ROOT, doc["video"]))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"record {doc['id']!r}: video {path} not found (run lmms-eval from the repository root)")
    return [path]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return list(doc["options"])


def doc_to_text_letters(doc, lmms_eval_specific_kwargs=None):
    return prompt_letters(doc["question"], doc["options"])


def _result(doc, pred):
    correct = float(pred == doc["answer"])
    return {"accuracy": correct, "score": {"task_type": doc["task_type"], "correct": correct, "pred": pred}}


def process_loglik(doc, results):
    """results: (NLL, is_greedy) per option; the answer is the lowest NLL (the first on ties)."""
    return _result(doc, int(np.argmin([r[0] for r in results])))


def process_generation(doc, results):
    return _result(doc, parse_letter(results[0], len(doc["options"])))


def mean_of_task_accuracies(results):
    """The synthetic suite's official score (visctx.benchmarks.score): mean of per-task accuracies."""
    by_task = defaultdict(list)
    for r in results:
        by_task[r["task_type"]].append(r["correct"])
    return float(np.mean([np.mean(v) for v in by_task.values()]))
