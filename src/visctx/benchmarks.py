"""The paper's benchmarks: loaders for each one's own published annotation format, letter parsing
for generated answers, and each benchmark's official scoring rule.

The benchmarks differ exactly where reported numbers move: Event-Bench and VNBench count an item
only when every ordering / try is right, MLVU reports the mean of per-task accuracies (M-avg),
LongVideoBench turns an unparsable answer into a random choice. Plain accuracy would not reproduce
the paper's tables, so each rule sits here next to its loader (paper-notes §4). Pure Python: no
torch, so scoring runs anywhere.
"""

from __future__ import annotations

import ast
import json
import numbers
import random
import re
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class BenchItem:
    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options
    task_type: str
    duration_group: str = ""
    group: str = ""  # the id that several orderings / tries of one question share
    try_index: int = 0


# ---------------------------------------------------------------------------------------------
# Reading


def _records(path: Path) -> list[tuple[int, dict]]:
    """A JSON list, JSON Lines (``.jsonl``) or parquet file as ``(index, record)`` pairs."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    if path.suffix == ".parquet":
        try:
            import pandas as pd
            frame = pd.read_parquet(path)
        except ImportError as e:
            raise ValueError(f"{path}: reading parquet needs pyarrow or fastparquet ({e})") from None
        rows = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}
                for r in frame.to_dict("records")]
    elif path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {n}: not valid JSON ({e})") from None
    else:
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i} is not an object")
    return list(enumerate(rows))


def _field(where: str, rec: dict, key: str, types: type | tuple[type, ...]) -> Any:
    if key not in rec:
        raise ValueError(f"{where}: missing field {key!r}")
    value = rec[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _options(where: str, rec: dict, key: str) -> tuple[str, ...]:
    opts = _field(where, rec, key, list)
    if not 2 <= len(opts) <= len(LETTERS) or not all(isinstance(o, str) and o.strip() for o in opts):
        raise ValueError(f"{where}: field {key!r} must be 2..{len(LETTERS)} non-empty strings")
    return tuple(opts)


def _norm(s: str) -> str:
    return s.strip().rstrip(".").strip().casefold()


def _answer_index(where: str, key: str, value: Any, options: Sequence[str], letters: bool = True) -> int:
    """The option index of an answer given as the option text, or (``letters``) as an index,
    ``"C"``, ``"(C)"`` or ``"(C) text"``; a letter whose text names another option is an error."""
    if isinstance(value, str) and value in options:
        return list(options).index(value)
    idx = None
    if letters and isinstance(value, int) and not isinstance(value, bool):
        idx = value
    elif letters and isinstance(value, str):
        m = re.fullmatch(r"\s*\(?([A-Za-z])\)?[.:]?(?:\s+(.*?))?\s*", value, re.S)
        if m:
            idx = LETTERS.index(m[1].upper())
            if m[2] and idx < len(options) and _norm(m[2]) != _norm(options[idx]):
                raise ValueError(f"{where}: field {key!r}={value!r}: letter {m[1]} is option {options[idx]!r}")
    if idx is None or not 0 <= idx < len(options):
        raise ValueError(f"{where}: field {key!r}={value!r} is not one of the {len(options)} options")
    return idx


def _video(video_root: str | Path, *parts: str) -> str:
    return str(Path(video_root or "", *parts))


def _unique(path: Path, items: list[BenchItem]) -> list[BenchItem]:
    seen: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.id in seen:
            raise ValueError(f"{path}: item {i} (id {it.id!r}): duplicate id (also item {seen[it.id]})")
        seen[it.id] = i
    return items


# ---------------------------------------------------------------------------------------------
# Loaders: each benchmark's published annotation format -> BenchItems


def load_mlvu(root: str | Path, video_root: str | Path = "") -> list[BenchItem]:
    """MLVU dev: a directory of per-task ``*.json`` files (or one file). MLVU keeps each task's
    videos in a folder named like its json file (``json/1_plotQA.json`` -> ``video/1_plotQA/``),
    so ``video`` is ``<video_root>/<json stem>/<video>``; pass MLVU's ``video`` folder as root."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.glob("*.json"))
    if not files:
        raise ValueError(f"{root}: no MLVU *.json files")
    items = []
    for path in files:
        for i, rec in _records(path):
            rid = f"{path.stem}_{i}"
            where = f"{path}: record {i} (id {rid!r})"
            options = _options(where, rec, "candidates")
            answer = _answer_index(where, "answer", _field(where, rec, "answer", str), options, letters=False)
            items.append(BenchItem(rid, _video(video_root, path.stem, _field(where, rec, "video", str)),
                                   _field(where, rec, "question", str), options, answer,
                                   _field(where, rec, "question_type", str)))
    return _unique(root, items)


def load_vnbench(path: str | Path, video_root: str | Path = "") -> list[BenchItem]:
    """VNBench ``VNBench-main-4try.json``: one record per (video, question, try); each try shuffles
    the options. Ids follow the official result files, ``<video stem>_<type>_<try>``, and the
    group drops the try (a stem already ending in ``_<type>`` is not suffixed twice)."""
    path = Path(path)
    items = []
    for i, rec in _records(path):
        where = f"{path}: record {i}"
        video = _field(where, rec, "video", str)
        kind = _field(where, rec, "type", str)
        try_index = _field(where, rec, "try", int)
        stem = Path(video).stem
        group = stem if stem.endswith(f"_{kind}") else f"{stem}_{kind}"
        rid = f"{group}_{try_index}"
        where = f"{path}: record {i} (id {rid!r})"
        options = _options(where, rec, "options")
        answer = _answer_index(where, "gt", _field(where, rec, "gt", (str, int)), options)
        items.append(BenchItem(rid, _video(video_root, video), _field(where, rec, "question", str), options,
                               answer, kind, group=group, try_index=try_index))
    return _unique(path, items)


def circular_orderings(options: Sequence[str], answer: int) -> list[tuple[tuple[str, ...], int]]:
    """The n rotations of the options (rotation k starts at option k), answer index following its
    option: Event-Bench asks every item once per rotation, so position bias cannot score."""
    n = len(options)
    if not 0 <= answer < n:
        raise ValueError(f"answer {answer} is not an index into {n} options")
    return [(tuple(options[k:]) + tuple(options[:k]), (answer - k) % n) for k in range(n)]


def load_eventbench(path: str | Path, video_root: str | Path = "") -> list[BenchItem]:
    """Event-Bench ``test.jsonl``, each record expanded into its circular orderings (try_index = k).
    The answer may be the candidate text, a letter or ``"(C) text"``; the id is the record's
    ``id`` when present, else its position in the file."""
    path = Path(path)
    items = []
    for i, rec in _records(path):
        group = str(rec.get("id", i))
        where = f"{path}: record {i} (id {group!r})"
        options = _options(where, rec, "candidates")
        answer = _answer_index(where, "answer", _field(where, rec, "answer", (str, int)), options)
        video = _video(video_root, _field(where, rec, "video", str))
        question = _field(where, rec, "question", str)
        task = _field(where, rec, "task_type", str)
        for k, (opts, ans) in enumerate(circular_orderings(options, answer)):
            items.append(BenchItem(f"{group}_{k}", video, question, opts, ans, task, group=group, try_index=k))
    return _unique(path, items)


def load_longvideobench(path: str | Path, video_root: str | Path = "") -> list[BenchItem]:
    """LongVideoBench ``lvb_val.json`` (up to 5 candidates, ``correct_choice`` an index)."""
    path = Path(path)
    items = []
    for i, rec in _records(path):
        rid = str(rec.get("id", i))
        where = f"{path}: record {i} (id {rid!r})"
        options = _options(where, rec, "candidates")
        answer = _field(where, rec, "correct_choice", int)
        if not 0 <= answer < len(options):
            raise ValueError(f"{where}: field 'correct_choice'={answer} is not an index into {len(options)} candidates")
        items.append(BenchItem(rid, _video(video_root, _field(where, rec, "video_path", str)),
                               _field(where, rec, "question", str), options, answer,
                               _field(where, rec, "question_category", str),
                               duration_group=str(_field(where, rec, "duration_group", (int, float, str)))))
    return _unique(path, items)


def load_videomme(path: str | Path, video_root: str | Path = "") -> list[BenchItem]:
    """Video-MME annotations (published as parquet; JSON / JSONL with the same fields accepted).
    Options lose their ``"A. "`` prefixes; videos are ``<video_root>/<videoID>.mp4``."""
    path = Path(path)
    items = []
    for i, rec in _records(path):
        vid = _field(f"{path}: record {i} (id {rec.get('question_id')!r})", rec, "videoID", str)
        rid = str(rec.get("question_id", f"{vid}-{i}"))
        where = f"{path}: record {i} (id {rid!r})"
        options = tuple(re.sub(rf"^\s*\(?{LETTERS[k]}\)?[.:)]\s*", "", o)
                        for k, o in enumerate(_options(where, rec, "options")))
        letter = _field(where, rec, "answer", str).strip()
        if len(letter) != 1 or letter.upper() not in LETTERS[:len(options)]:
            raise ValueError(f"{where}: field 'answer'={letter!r} is not a letter among {len(options)} options")
        items.append(BenchItem(rid, _video(video_root, f"{vid}.mp4"), _field(where, rec, "question", str), options,
                               LETTERS.index(letter.upper()), _field(where, rec, "task_type", str),
                               duration_group=_field(where, rec, "duration", str)))
    return _unique(path, items)


LOADERS: dict[str, Callable[..., list[BenchItem]]] = {
    "mlvu": load_mlvu, "vnbench": load_vnbench, "eventbench": load_eventbench,
    "longvideobench": load_longvideobench, "videomme": load_videomme,
}


# ---------------------------------------------------------------------------------------------
# Prompt and answer parsing (generation mode)


def prompt_letters(question: str, options: Sequence[str]) -> str:
    """The usual multiple-choice prompt (VNBench's and Event-Bench's official one): question,
    ``A. opt`` lines, then the instruction to answer with the letter."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options; at most {len(LETTERS)} can be lettered")
    return "\n".join([question.rstrip(), *(f"{LETTERS[k]}. {o}" for k, o in enumerate(options)), ANSWER_INSTRUCTION])


# A letter at the head of the answer: "(B)", "B", "B.", "B)", "B:", "B, ..." or "B text".
_HEAD = re.compile(r"\(([A-Za-z])\)|([A-Za-z])(?:[.:)]|(?=[\s,])|$)")
# A second letter right after the first ("B or C", "(A)/(B)", "A, B"): the answer hedges.
_ALSO = re.compile(r"\s*(?:or|and|/|,)\s*\(?[A-Za-z]\)?(?![A-Za-z])")
_PHRASE = re.compile(r"(?:\b(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*)+", re.I)
_PROSE, _AMBIGUOUS = "prose", "ambiguous"


def _head(s: str) -> str | None:
    m = _HEAD.match(s)
    if not m:
        return None
    if _ALSO.match(s, m.end()):
        return _AMBIGUOUS
    if m[2] and m[2] in "aAiI" and m.end() == 1 and re.match(r"\s+[a-z]", s[1:]):
        return _PROSE  # "A man walks", "I think": a one-letter English word, not an answer
    return m[1] or m[2]


def parse_letter(text: str, n_options: int) -> int | None:
    """The option index a generated answer names, or None when it names none, names a letter out
    of range, or hedges between letters. A bare ``A``/``I`` followed by a lowercase word is read
    as prose (the article or pronoun), not as option A; ``A.``, ``(A)`` or ``A)`` count."""
    if not 1 <= n_options <= len(LETTERS):
        raise ValueError(f"n_options={n_options}; allowed 1..{len(LETTERS)}")
    s = text.strip(" \t\r\n*`'\"")
    letter = _head(s)
    if letter in (None, _PROSE):
        m = _PHRASE.search(s)  # "The answer is B", "Answer: (c) the cat", "I'd pick option B"
        letter = _head(s[m.end():].lstrip("*`'\"")) if m else None
    if letter in (None, _PROSE, _AMBIGUOUS):
        return None
    idx = LETTERS.index(letter.upper())
    return idx if idx < n_options else None


# ---------------------------------------------------------------------------------------------
# Official scoring: predictions are option indices (None = unparsable), aligned with the items


Preds = Sequence[int | None]


def _check(items: Sequence[BenchItem], preds: Preds) -> list[int | None]:
    """Predictions as plain ints (numpy argmax results included) or None."""
    if len(items) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(items)} items")
    if not items:
        raise ValueError("no items to score")
    for i, p in enumerate(preds):
        if p is not None and (not isinstance(p, numbers.Integral) or isinstance(p, bool)):
            raise ValueError(f"prediction {i} (item {items[i].id!r}) is {p!r}, not an option index or None")
    return [None if p is None else int(p) for p in preds]


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _by(keys: Iterable[str], values: Iterable[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for k, v in zip(keys, values):
        groups[k].append(v)
    return {k: _mean(groups[k]) for k in sorted(groups)}


def _all_right(units: Iterable[tuple[str, str, bool]]) -> dict[str, tuple[str, bool]]:
    """(group, task, right) per asked item -> {group: (task, every asking right)}."""
    out: dict[str, tuple[str, bool]] = {}
    for group, task, right in units:
        prev = out.get(group, (task, True))
        out[group] = (task, prev[1] and right)
    return out


def score_eventbench(items: Sequence[BenchItem], preds: Preds, tasks: Iterable[str] | None = None) -> dict:
    """An item counts only if all its orderings are right; overall = micro average over items.
    ``tasks`` keeps a subset of task types (the paper reports the episodic-reasoning task)."""
    preds = _check(items, preds)
    keep = None if tasks is None else set(tasks)
    groups = _all_right((it.group or it.id, it.task_type, p == it.answer) for it, p in zip(items, preds)
                        if keep is None or it.task_type in keep)
    if not groups:
        raise ValueError(f"no items of tasks {sorted(keep or ())}")
    return {"overall": _mean(r for _, r in groups.values()), "n": len(groups),
            "per_task": _by((t for t, _ in groups.values()), (r for _, r in groups.values()))}


def score_vnbench(items: Sequence[BenchItem], preds: Preds) -> dict:
    """A question counts only if all its tries are right; overall = mean over the needle types."""
    preds = _check(items, preds)
    groups = _all_right((it.group or it.id, it.task_type, p == it.answer) for it, p in zip(items, preds))
    per_type = _by((t for t, _ in groups.values()), (r for _, r in groups.values()))
    return {"overall": _mean(per_type.values()), "n": len(groups), "per_type": per_type}


def score_mlvu(items: Sequence[BenchItem], preds: Preds) -> dict:
    """M-avg: the mean of per-task accuracies, so small tasks weigh as much as large ones."""
    preds = _check(items, preds)
    per_task = _by((it.task_type for it in items), (p == it.answer for it, p in zip(items, preds)))
    return {"overall": _mean(per_task.values()), "n": len(items), "per_task": per_task}


def random_fallback(items: Sequence[BenchItem], preds: Preds, seed: int = 0) -> list[int]:
    """Each None prediction replaced by a seeded uniform choice among that item's options, as
    LongVideoBench's official scorer does for unparsable answers (seeded here, so reruns agree)."""
    preds = _check(items, preds)
    rng = random.Random(seed)
    return [p if p is not None else rng.randrange(len(it.options)) for it, p in zip(items, preds)]


def _accuracy_report(items: Sequence[BenchItem], preds: Sequence[int | None]) -> dict:
    right = [p == it.answer for it, p in zip(items, preds)]
    return {"overall": _mean(right), "n": len(items),
            "per_duration": _by((it.duration_group for it in items), right),
            "per_task": _by((it.task_type for it in items), right)}


def score_longvideobench(items: Sequence[BenchItem], preds: Preds, seed: int = 0) -> dict:
    """Accuracy (overall, per duration group, per question category) after the random fallback."""
    filled = random_fallback(items, preds, seed)
    return {**_accuracy_report(items, filled), "n_random": sum(p is None for p in preds)}


def score_videomme(items: Sequence[BenchItem], preds: Preds) -> dict:
    """Accuracy overall, per duration (short / medium / long) and per task type."""
    return _accuracy_report(items, _check(items, preds))


SCORERS: dict[str, Callable[..., dict]] = {
    "mlvu": score_mlvu, "vnbench": score_vnbench, "eventbench": score_eventbench,
    "longvideobench": score_longvideobench, "videomme": score_videomme,
}


# ---------------------------------------------------------------------------------------------
# Official result files (the benchmarks' own example_result.jsonl format)


def _result_lines(path: str | Path) -> list[tuple[str, dict]]:
    """Non-empty lines as ``(where, record)``. VNBench's own example is not strict JSON Lines
    (single-quoted values), so a line JSON rejects is read as a Python literal."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            try:
                rec = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{path}: line {n}: neither JSON nor a Python literal ({e})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: line {n}: not an object")
        out.append((f"{path}: line {n} (id {rec.get('question_id', rec.get('id'))!r})", rec))
    if not out:
        raise ValueError(f"{path}: no result lines")
    return out


def score_vnbench_results(path: str | Path) -> dict:
    """VNBench's ``eval.py`` rule on a result file: ``pred`` is cut at the first '.', then read as
    the first of A-D it contains; a question (``question_id`` minus ``_<try>``) counts if all its
    tries match ``gt``; overall = mean over types. A None pred is wrong (eval.py skips the line)."""
    units = []
    for where, rec in _result_lines(path):
        qid = _field(where, rec, "question_id", str)
        gt = _field(where, rec, "gt", (str, int))
        gt = LETTERS[gt] if isinstance(gt, int) else gt
        pred = rec.get("pred")
        if pred is not None and not isinstance(pred, str):
            raise ValueError(f"{where}: field 'pred' has type {type(pred).__name__}")
        head = None if pred is None else pred.split(".")[0]
        letter = None if head is None else next((c for c in "ABCD" if c in head), head)
        units.append((qid.rsplit("_", 1)[0], _field(where, rec, "type", str), letter == gt))
    groups = _all_right(units)
    per_type = _by((t for t, _ in groups.values()), (r for _, r in groups.values()))
    return {"overall": _mean(per_type.values()), "n": len(groups), "per_type": per_type}


def _eventbench_match(pred: str, gt: str) -> bool:
    """Event-Bench ``check_ans``: the first token of pred, e.g. ``(c)`` or ``c.``, against that of
    gt. An empty first token is wrong here (officially '' is 'in' every gt, so it counted right)."""
    p, g = pred.lower().split(" ")[0], gt.lower().split(" ")[0]
    return bool(p) and (p.replace(".", "") in g or g in p)


def score_eventbench_results(path: str | Path, tasks: Iterable[str] | None = None) -> dict:
    """Event-Bench's ``evaluate_em.py`` rule on a result file: a line (one item, its 4 orderings in
    ``pred`` / ``gt``) counts only if every ordering matches; overall = micro average."""
    keep = None if tasks is None else set(tasks)
    tasks_, rights = [], []
    for where, rec in _result_lines(path):
        preds, gts = _field(where, rec, "pred", list), _field(where, rec, "gt", list)
        if len(preds) != len(gts) or not all(isinstance(x, str) for x in preds + gts):
            raise ValueError(f"{where}: fields 'pred' and 'gt' must be equally long lists of strings")
        task = _field(where, rec, "task", str)
        if keep is None or task in keep:
            tasks_.append(task)
            rights.append(all(_eventbench_match(p, g) for p, g in zip(preds, gts)))
    if not rights:
        raise ValueError(f"{path}: no items of tasks {sorted(keep or ())}")
    return {"overall": _mean(rights), "n": len(rights), "per_task": _by(tasks_, rights)}


# ---------------------------------------------------------------------------------------------
# The pipeline's side: published annotations -> the evaluation JSON every arm is scored on


def write_items(benchmark: str, annotations: str, out_json: str, video_root: str = "") -> dict:
    """Convert ``benchmark``'s published ``annotations`` into the pipeline's evaluation JSON: one
    multiple-choice record per asked item (``id, video, question, options, answer, task_type``,
    plus ``duration_group, group, try_index`` for the official rule). Video paths stay relative
    to ``video_root`` (the frame extraction joins them), so the JSON moves with the data.

    Videos missing under ``video_root`` are reported (stderr and the returned ``missing_videos``)
    but kept: frame extraction quarantines them with the corpus's other unreadable videos, where
    ``data.extract.max_quarantined`` decides whether the benchmark is still usable. Only a root
    holding none of the videos (surely the wrong one) is an error here.

    Args:
        benchmark: which benchmark's format ``annotations`` is in (a key of ``LOADERS``).
        annotations: the published annotation file (JSON, JSONL or parquet, per benchmark).
        out_json: the evaluation JSON to write.
        video_root: where the benchmark's videos are, to report the missing ones ('' skips the
            check).
    """
    if benchmark not in LOADERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; allowed: {', '.join(sorted(LOADERS))}")
    items = LOADERS[benchmark](annotations)
    videos = sorted({it.video for it in items})
    missing = [v for v in videos if video_root and not (Path(video_root) / v).is_file()]
    if missing and len(missing) == len(videos):
        raise ValueError(f"{benchmark}: none of the {len(videos)} videos of {annotations} is under {video_root}, "
                         f"e.g. {missing[0]!r}")
    if missing:
        print(f"{benchmark}: {len(missing)} of {len(videos)} videos of {annotations} are not under {video_root} "
              f"(they will be quarantined), e.g. {missing[0]!r}", file=sys.stderr, flush=True)
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps([{**asdict(it), "options": list(it.options)} for it in items], indent=1))
    tmp.replace(out)
    return {"benchmark": benchmark, "items": len(items), "videos": len(videos), "missing_videos": len(missing)}


def read_items(path: str | Path) -> list[BenchItem]:
    """The evaluation JSON (as :func:`write_items` writes it, or the synthetic corpus's) as items."""
    path = Path(path)
    items = []
    for i, rec in _records(path):
        rid = str(_field(f"{path}: record {i}", rec, "id", (str, int)))
        where = f"{path}: record {i} (id {rid!r})"
        options = _options(where, rec, "options")
        answer = _field(where, rec, "answer", int)
        if not 0 <= answer < len(options):
            raise ValueError(f"{where}: field 'answer'={answer} is not an index into {len(options)} options")
        items.append(BenchItem(rid, _field(where, rec, "video", str), _field(where, rec, "question", str), options,
                               answer, str(rec.get("task_type", "")), str(rec.get("duration_group", "")),
                               str(rec.get("group", "")), int(rec.get("try_index", 0))))
    return _unique(path, items)


def score(benchmark: str, items: Sequence[BenchItem], preds: Preds, seed: int = 0) -> dict:
    """The official rule of ``benchmark``; the embedded default's synthetic suite is scored like
    MLVU (mean of per-task accuracies), so no task type outweighs another."""
    if benchmark == "synthetic":
        return score_mlvu(items, preds)
    if benchmark not in SCORERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; allowed: synthetic, {', '.join(sorted(SCORERS))}")
    if benchmark == "longvideobench":
        return score_longvideobench(items, preds, seed)
    return SCORERS[benchmark](items, preds)
