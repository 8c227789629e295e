"""The paper's benchmarks: loaders for each one's own published annotation and result formats,
letter parsing for generated answers, and each benchmark's scoring rule in three modes.

The benchmarks differ exactly where reported numbers move: Event-Bench and VNBench count an item
only when every ordering / try is right, MLVU reports the mean of per-task accuracies (M-avg),
LongVideoBench turns an unparsable answer into a random choice, Video-MME leaves unparsable answers
out of its denominator. How a generated answer is read differs as much. So each benchmark has
(``evaluate.scoring``, paper-notes §4):

- ``official`` (the default): the benchmark's own evaluation script, rule for rule -- its answer
  extraction, denominators, tie and duplicate handling, odd behaviour included. Each rule's
  docstring names the repository, file and lines it follows (``RULES`` lists them).
- ``lmms_eval``: lmms-eval's task where it differs (MLVU, Video-MME); LongVideoBench's official
  rule *is* lmms-eval's, and VNBench and Event-Bench have no lmms-eval task (their official rule).
- ``strict``: the project's own :func:`parse_letter` with the averaging above and an unparsable
  answer counted wrong (LongVideoBench: a seeded random choice) -- ours, not any author's.

An answer is an option index (log-likelihood scoring: every mode agrees), a generated text (read
by the mode's extractor) or None (no answer). Scores come with bootstrap intervals clustered by
video (:func:`bootstrap_score`, :func:`paired_difference`). Pure Python (numpy for the bootstrap
only): no torch, so scoring runs anywhere.
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
from typing import Any, Callable, Iterable, Mapping, Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class BenchItem:
    id: str
    video: str
    question: str
    options: tuple[str, ...]
    answer: int  # index into options; -1: no option is the answer (MLVU: answer not among candidates)
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
        rows = _json_lenient(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
    for i, rec in enumerate(rows):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i} is not an object")
    return list(enumerate(rows))


# A string (kept) or a comma right before a closing bracket (dropped).
_TRAILING_COMMA = re.compile(r'"(?:\\.|[^"\\])*"|,(?=\s*[}\]])', re.S)


def _json_lenient(path: Path) -> Any:
    """JSON, or JSON with trailing commas: Video-MME's own output template
    (``evaluation/output_test_template.json``) has one after every ``"response"``."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        try:
            return json.loads(_TRAILING_COMMA.sub(lambda m: m[0] if m[0] != "," else "", text))
        except json.JSONDecodeError:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def _field(where: str, rec: dict, key: str, types: type | tuple[type, ...]) -> Any:
    if key not in rec:
        raise ValueError(f"{where}: missing field {key!r}")
    value = rec[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _options(where: str, rec: dict, key: str, allow_empty: bool = False) -> tuple[str, ...]:
    """2..26 option strings; ``allow_empty``: MLVU's published candidates include empty strings."""
    opts = _field(where, rec, key, list)
    lo = 1 if allow_empty else 2
    if not lo <= len(opts) <= len(LETTERS) or not all(isinstance(o, str) and (allow_empty or o.strip())
                                                      for o in opts):
        raise ValueError(f"{where}: field {key!r} must be {lo}..{len(LETTERS)} "
                         f"{'' if allow_empty else 'non-empty '}strings")
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


def mlvu_answer_index(candidates: Sequence[str], answer: str) -> int:
    """The candidate MLVU's official scorer takes as the answer: the *last* candidate equal to
    ``answer``, -1 when none is (JUNJIE99/MLVU evaluation/multiple_choice_evaluation/
    choice_bench.py, ``MLVU.qa_template`` lines 83-89: the loop overwrites ``answer_idx``; -1
    makes the gold letter ``chr(ord('A') - 1) == '@'``, which no real answer names)."""
    return max((k for k, c in enumerate(candidates) if c == answer), default=-1)


def mlvu_task(path: str | Path) -> str:
    """The task name MLVU's official scorer reports for a file: the key its ``data_list`` gives
    it, which is the file name without the number (``2_needle.json`` -> ``needle``, while the
    records say ``question_type: findNeedle``; choice_bench.py lines 123-131)."""
    return re.sub(r"^\d+_", "", Path(path).stem)


def _mlvu_files(root: Path) -> tuple[list[Path], dict[str, int]]:
    """(multiple-choice files, {open-ended file name: record count}): open-ended tasks
    (``8_sub_scene.json``, ``9_summary.json``) have no ``candidates`` and no official choice rule."""
    files = [root] if root.is_file() else sorted(root.glob("*.json"))
    if not files:
        raise ValueError(f"{root}: no MLVU *.json files")
    choice, open_ended = [], {}
    for path in files:
        recs = _records(path)
        has = [("candidates" in rec) for _, rec in recs]
        if recs and not any(has):
            open_ended[path.name] = len(recs)
        elif not all(has):
            i = has.index(False)
            raise ValueError(f"{path}: record {i} (id {f'{path.stem}_{i}'!r}): missing field 'candidates' "
                             f"(the file's other records are multiple-choice)")
        else:
            choice.append(path)
    return choice, open_ended


def mlvu_open_ended(root: str | Path) -> dict[str, int]:
    """{file name: record count} of the open-ended MLVU files under ``root`` (skipped by
    :func:`load_mlvu`; scored by MLVU's GPT-judged generation evaluation, not here)."""
    return _mlvu_files(Path(root))[1]


def load_mlvu(root: str | Path, video_root: str | Path = "") -> list[BenchItem]:
    """MLVU dev: its ``json/`` directory as published (or one file). MLVU keeps each task's
    videos in a folder named like its json file (``json/1_plotQA.json`` -> ``video/1_plotQA/``),
    so ``video`` is ``<video_root>/<json stem>/<video>``; pass MLVU's ``video`` folder as root.

    As the official scorer reads them: the task is the file's (:func:`mlvu_task`), the answer
    the last candidate equal to it, or -1 when none is (:func:`mlvu_answer_index`); empty and
    duplicate candidates are kept. Open-ended files are skipped and reported on stderr."""
    root = Path(root)
    files, open_ended = _mlvu_files(root)
    if open_ended:
        print(f"mlvu: skipped {sum(open_ended.values())} open-ended records (no candidates): "
              + ", ".join(f"{k} ({v})" for k, v in sorted(open_ended.items())), file=sys.stderr, flush=True)
    items = []
    for path in files:
        for i, rec in _records(path):
            rid = f"{path.stem}_{i}"
            where = f"{path}: record {i} (id {rid!r})"
            options = _options(where, rec, "candidates", allow_empty=True)
            answer = mlvu_answer_index(options, _field(where, rec, "answer", str))
            items.append(BenchItem(rid, _video(video_root, path.stem, _field(where, rec, "video", str)),
                                   _field(where, rec, "question", str), options, answer, mlvu_task(path)))
    if not items:
        raise ValueError(f"{root}: no multiple-choice MLVU records (open-ended only: {sorted(open_ended)})")
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
# Prompt and the project's own answer parsing (the `strict` mode)


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
# The official answer rules, one per script (rewritten here from reading each script; the
# line numbers are those of the versions named in RULES)

SCORING_MODES = ("official", "lmms_eval", "strict")

RULES: dict[tuple[str, str], str] = {
    ("eventbench", "official"): "RUCAIBox/Event-Bench@2dcf5bc evaluation/evaluate_em.py",
    ("vnbench", "official"): "joez17/VideoNIAH@8193a3b evaluation/eval.py",
    ("mlvu", "official"): "JUNJIE99/MLVU@fd060c1 evaluation/multiple_choice_evaluation/choice_bench.py",
    ("mlvu", "lmms_eval"): "EvolvingLMMs-Lab/lmms-eval@75571cf lmms_eval/tasks/mlvu/utils.py",
    ("longvideobench", "official"): "EvolvingLMMs-Lab/lmms-eval@75571cf lmms_eval/tasks/longvideobench/utils.py "
                                    "(the lmms-eval task LongVideoBench's README points to)",
    ("videomme", "official"): "thanku-all/parse_answer@afd52cf eval_your_results.py (linked from BradyFU/Video-MME "
                              "README, Evaluation)",
    ("videomme", "lmms_eval"): "EvolvingLMMs-Lab/lmms-eval@75571cf lmms_eval/tasks/videomme/utils.py",
    ("synthetic", "official"): "visctx (no official script: strict reading, mean of per-task accuracies)",
}
STRICT_RULE = "visctx.benchmarks.parse_letter (the project's own reading, not any author's)"


def scoring_mode(scoring: str | Mapping[str, str] | None, benchmark: str) -> str:
    """The mode ``evaluate.scoring`` gives ``benchmark``: one mode for every benchmark, or a
    mapping ``{benchmark: mode}`` (an unlisted benchmark: ``official``)."""
    mode = (scoring or {}).get(benchmark, "official") if isinstance(scoring, Mapping) else (scoring or "official")
    if mode not in SCORING_MODES:
        raise ValueError(f"scoring={mode!r} for {benchmark}; allowed: {', '.join(SCORING_MODES)}")
    return mode


def rule_of(benchmark: str, mode: str) -> tuple[str, str]:
    """(the mode actually applied, its source): ``lmms_eval`` on a benchmark whose lmms-eval task
    is its official rule (LongVideoBench) or that has none (VNBench, Event-Bench, synthetic) is
    the official rule; ``official`` on LongVideoBench is lmms-eval's parser."""
    mode = scoring_mode(mode, benchmark)
    if mode == "strict":
        return "strict", STRICT_RULE
    if mode == "lmms_eval" and (benchmark, "lmms_eval") in RULES:
        return "lmms_eval", RULES[(benchmark, "lmms_eval")]
    if (benchmark, "official") not in RULES:
        raise ValueError(f"unknown benchmark {benchmark!r}; allowed: "
                         f"{', '.join(sorted({b for b, _ in RULES}))}")
    return "official", RULES[(benchmark, "official")]


def gold_letter(answer: int) -> str:
    """The letter of option ``answer`` as the scripts build it, ``chr(ord('A') + answer)``; -1
    (MLVU: no candidate is the answer) gives ``'@'``."""
    return chr(ord("A") + answer)


def vnbench_letter(pred: str) -> str:
    """VNBench ``eval.py`` (lines 18, 40-48): the text up to the first ``.``; then ``A`` if it
    contains an ``A`` anywhere, else ``B``, ``C``, ``D`` in that order of preference (so
    ``"B or A"`` reads A and ``"Answer: C"`` reads A); with none of them, the cut text itself,
    which then has to equal the gt letter (``"b"`` does not)."""
    head = pred.split(".")[0]
    return next((c for c in "ABCD" if c in head), head)


def vnbench_llava_judge(where: str, pred: Any, gt: Any) -> bool:
    """VNBench's LLaVA example scorer (joez17/VideoNIAH llava_examples/evaluation_utils.py, line
    11): right iff the *first character* of ``pred`` equals ``gt``. The script fails on an empty
    or null ``pred`` (IndexError / TypeError); so does this, naming the line."""
    if not isinstance(pred, str) or not pred:
        raise ValueError(f"{where}: field 'pred'={pred!r}: the official evaluation_utils.py reads pred[0] and "
                         f"fails on it (score with rule='eval.py' to skip null preds as eval.py does)")
    return pred[0] == gt


def eventbench_match(pred: str, gt: str) -> bool:
    """Event-Bench ``evaluate_em.py`` ``check_ans`` (lines 13-28): lower-case both, take the text
    before the first space of each (the "option"); right iff pred's option without ``.`` occurs
    in gt's option, or gt's occurs in pred's. So ``""`` and ``" D"`` (empty first token) are
    right, ``"c"``, ``"(c)"``, ``"C."`` and ``"c)"`` are right for ``"(C) ..."``, and ``"I think
    C"``, ``"Answer: C"`` or an option's text are wrong. The script fails (IndexError, line 20)
    on a gt with nothing after its option; so does this."""
    p = pred.lower().split(" ")[0]
    g, *content = gt.lower().split(" ")
    if not " ".join(content):
        raise ValueError(f"gt {gt!r} has no text after its option: the official check_ans fails on it (line 20)")
    return p.replace(".", "") in g or g in p


def eventbench_gt(options: Sequence[str], answer: int) -> str:
    """The gt string of one ordering as Event-Bench's result files hold it: ``"(C) text"``."""
    return f"({gold_letter(answer)}) {options[answer]}"


def mlvu_match(pred: str, gt_letter: str) -> bool:
    """MLVU ``choice_bench.py`` ``check_ans`` (lines 105-119): when pred contains ``)``, the one
    character before its first ``)`` (nothing when ``)`` comes first); else the whole pred; right
    iff that equals the gold letter exactly. So ``"(B)"``, ``"B)"`` and ``"B) text"`` read B;
    ``"B"`` is right but ``"B."``, ``"b"``, ``" B"`` and ``"Answer: B"`` are not."""
    if ")" in pred:
        cut = pred.index(")")
        pred = pred[cut - 1] if cut > 0 else ""
    return pred == gt_letter


def mlvu_gold(where: str, gt: Any) -> str:
    """The gold letter of an MLVU result line's ``gt`` (``"(C) text"``): between the first ``(``
    and the first ``)`` (choice_bench.py lines 108-110, which fail without them)."""
    if not isinstance(gt, str) or "(" not in gt or ")" not in gt:
        raise ValueError(f"{where}: field 'gt'={gt!r} is not '(<letter>) <answer>' "
                         f"(the official check_ans fails on it)")
    return gt[gt.index("(") + 1:gt.index(")")]


_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                 "The best option is", "The correct option is", "Best answer:", "Best option:")


def longvideobench_letter(response: str, n_options: int, rng: random.Random) -> str:
    """lmms-eval ``longvideobench/utils.py`` ``parse_multi_choice_response`` (lines 187-213):
    strip, delete each answer prefix (in order, case-sensitive), then the first capital A-E
    anywhere (``"I think C"`` -> C, ``"Answer: C"`` -> A, ``"E"`` on 4 options -> E, wrong);
    none -> ``random.choice`` of the item's letters. ``rng`` plays lmms-eval's global ``random``
    (``random.seed(0)`` at start, ``--seed``): one draw per fallback, in item order, as
    ``random.choice`` draws (``_randbelow(n)``)."""
    s = response.strip()
    for prefix in _LVB_PREFIXES:
        s = s.replace(prefix, "")
    m = re.search("[ABCDE]", s)  # (the >10-words check before it returns the same random choice)
    return m[0] if m else LETTERS[rng.randrange(n_options)]


# Python joins adjacent string literals: the script's list has "The best option is" "The correct
# option is" and "Best answer:" "Best option:" without commas, so each pair is one prefix.
_VIDEOMME_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option isThe correct option is", "Best answer:Best option:", "Answer:", "Option:",
                      "The correct answer", "The correct option")


def videomme_letter(response: str) -> str:
    """Video-MME ``eval_your_results.py`` ``extract_characters_regex`` (lines 65-89): strip,
    delete each prefix in order (case-sensitive; two pairs fused by missing commas, so ``"Best
    answer: C"`` keeps its ``B``), then the first capital A-D anywhere, else ``""`` -- which the
    script leaves out of every denominator (lines 173-181)."""
    s = response.strip()
    for prefix in _VIDEOMME_PREFIXES:
        s = s.replace(prefix, "")
    m = re.search("[ABCD]", s)
    return m[0] if m else ""


_MCQ_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
                "best answer is", "the correct option is", "correct option is", "the best option is",
                "best option is", "the choice is", "choice is", "the correct choice is", "correct choice is",
                "i choose", "i select", "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:",
                "答案是", "答案为", "选", "答えは")
# (format, how the letter appears, rank): a higher rank wins, then the later position.
_MCQ_FORMATS = (("parentheses", "({})", 6), ("period", "{}.", 5), ("colon", "{}:", 4), ("right_paren", "{})", 3),
                ("space", "{} ", 2))


def lmms_eval_letter(response: str, choices: str = "ABCD") -> str:
    """lmms-eval ``_task_utils/mcq_extract.py`` ``extract_mcq_answer`` (lines 66-158), which its
    Video-MME and MLVU tasks use: every way a letter can appear is a candidate -- ``(X)``, ``X.``,
    ``X:``, ``X)``, ``X `` (each at its last occurrence), after an answer phrase, standing alone
    at the start or the end, and only if none, anywhere -- and the best-ranked one wins (start >
    end > phrase > parentheses > period > colon > right paren > space > anywhere; then the later
    position). ``""`` when no letter appears."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for ch in ",.!?;:'\"":  # one character class after another, as the script strips them
        text = text.strip(ch)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for _, shape, rank in _MCQ_FORMATS:
        for ch in choices:
            pos = text.rfind(shape.format(ch))
            if pos >= 0:
                found.append((rank, pos, ch))
    lower = text.lower()
    for phrase in _MCQ_PHRASES:
        at = lower.find(phrase)
        if at >= 0:
            for ch in choices:
                pos = text.find(ch, at + len(phrase))
                if pos >= 0:
                    found.append((7, pos, ch))
    bare = text.strip()
    found += [(10, 0, ch) for ch in choices if bare.startswith(ch) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [(9, len(text) - 1, ch) for ch in choices
              if bare.endswith(ch) and (len(bare) == 1 or not bare[-2].isalpha())]
    if not found:
        found = [(0, text.rfind(ch), ch) for ch in choices if ch in text]
    if not found:
        return ""
    best = max(r[:2] for r in found)
    return next(ch for r, p, ch in found if (r, p) == best)  # the script's stable sort: first listed


# ---------------------------------------------------------------------------------------------
# Scoring: answers -> units (one per scored question, with the video it clusters on) -> averages.
# The split lets the bootstrap re-apply the averaging of the official rule to resampled videos.


@dataclass(frozen=True)
class Unit:
    """One scored question: ``right`` under the rule; ``counted``: in the denominator (Video-MME's
    official script leaves unparsable answers out); ``cluster``: its video."""
    cluster: str
    task: str
    right: bool
    counted: bool = True
    duration: str = ""


# Per benchmark: how the units average, and the name of the per-task breakdown.
MLVU_LMMS_EVAL_TASKS = ("anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning")
_AVERAGE = {"eventbench": ("micro", "per_task"), "vnbench": ("macro", "per_type"), "mlvu": ("macro", "per_task"),
            "longvideobench": ("micro", "per_task"), "videomme": ("micro", "per_task"),
            "synthetic": ("macro", "per_task"), "vnbench_llava": ("families", "per_type")}


def _average(benchmark: str, mode: str) -> str:
    kind = _AVERAGE[benchmark][0]
    return "macro_fixed" if (benchmark, mode) == ("mlvu", "lmms_eval") else kind


def _rate(units: Sequence[Unit]) -> float:
    """Right / counted; 0 with nothing counted (the scripts print 0 for an empty denominator)."""
    n = sum(u.counted for u in units)
    return sum(u.right for u in units if u.counted) / n if n else 0.0


def _by_key(units: Sequence[Unit], key: Callable[[Unit], str]) -> dict[str, float]:
    groups: dict[str, list[Unit]] = defaultdict(list)
    for u in units:
        groups[key(u)].append(u)
    return {k: _rate(groups[k]) for k in sorted(groups)}


def _families(per_type: Mapping[str, float]) -> dict[str, float]:
    """VNBench's evaluation_utils.py (lines 36-57): each of ret / ord / cnt sums the accuracies of
    the types whose name contains it and divides by 3, whatever their number."""
    return {f: sum(v for k, v in per_type.items() if f in k) / 3 for f in ("cnt", "ord", "ret")}


def aggregate(benchmark: str, mode: str, units: Sequence[Unit]) -> dict:
    """The rule's averages over ``units``: ``micro`` (Event-Bench, LongVideoBench, Video-MME:
    right / counted overall), ``macro`` (VNBench, MLVU: the mean of the per-task accuracies of the
    tasks present), ``macro_fixed`` (lmms-eval's MLVU: over its 7 task names, an absent one as 0)."""
    per, kind = _AVERAGE[benchmark][1], _average(benchmark, mode)
    per_task = _by_key(units, lambda u: u.task)
    if kind == "micro":
        overall = _rate(units)
    elif kind == "macro":
        overall = sum(per_task.values()) / len(per_task) if per_task else 0.0
    elif kind == "macro_fixed":
        unknown = sorted(set(per_task) - set(MLVU_LMMS_EVAL_TASKS))
        if unknown:
            raise ValueError(f"tasks {unknown}: lmms-eval's MLVU dev scorer knows only {list(MLVU_LMMS_EVAL_TASKS)} "
                             f"(mlvu/utils.py line 96) and fails on others")
        per_task = {t: per_task.get(t, 0.0) for t in sorted(MLVU_LMMS_EVAL_TASKS)}
        overall = sum(per_task.values()) / len(per_task)
    else:  # families
        fam = _families(per_task)
        overall = sum(fam.values()) / 3
    out = {"overall": overall, "n": sum(u.counted for u in units), per: per_task}
    if kind == "families":
        out["per_family"] = fam
    if any(u.duration for u in units):
        out["per_duration"] = _by_key(units, lambda u: u.duration)
    return out


Answers = Sequence[Any]  # per item: an option index, a generated text, or None (no answer)


def _check(items: Sequence[BenchItem], answers: Answers) -> list[int | str | None]:
    """Answers as plain ints (numpy argmax results included), texts or None."""
    if len(items) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(items)} items")
    if not items:
        raise ValueError("no items to score")
    out: list[int | str | None] = []
    for i, p in enumerate(answers):
        if p is None or isinstance(p, str):
            out.append(p)
        elif isinstance(p, numbers.Integral) and not isinstance(p, bool):
            out.append(int(p))
        else:
            raise ValueError(f"answer {i} (item {items[i].id!r}) is {p!r}: not an option index, a generated "
                             f"text or None")
    return out


def random_fallback(items: Sequence[BenchItem], preds: Answers, seed: int = 0) -> list[int]:
    """Each None prediction (option indices otherwise) replaced by a seeded uniform choice among
    that item's options, as LongVideoBench's scorer does for unparsable answers (seeded here, so
    reruns agree)."""
    preds = _check(items, preds)
    rng = random.Random(seed)
    return [p if p is not None else rng.randrange(len(it.options)) for it, p in zip(items, preds)]


def _strict(it: BenchItem, a: int | str | None) -> int | None:
    return parse_letter(a, len(it.options)) if isinstance(a, str) else a


def _lvb_random(rng: random.Random, it: BenchItem) -> tuple[bool, bool, bool]:
    return LETTERS[rng.randrange(len(it.options))] == gold_letter(it.answer), True, True


def _right_one(benchmark: str, mode: str, it: BenchItem, a: int | str | None,
               rng: random.Random) -> tuple[bool, bool, bool]:
    """(right, counted, random) of one asked item under the rule: an index is right iff it is the
    answer (every rule reads an exact letter so); texts go through the rule's extractor; None is
    no answer; ``random``: LongVideoBench's fallback chose it."""
    if mode == "strict" or benchmark == "synthetic":
        a = _strict(it, a)
        if benchmark == "longvideobench" and a is None:
            return _lvb_random(rng, it)
        return a == it.answer, True, False
    if isinstance(a, int):
        return a == it.answer, True, False
    gold = gold_letter(it.answer)
    if benchmark == "videomme":
        if a is None:
            return False, mode == "lmms_eval", False  # no answer: the official script's "" (not counted)
        got = videomme_letter(a) if mode == "official" else lmms_eval_letter(a)
        return got == gold, mode == "lmms_eval" or got != "", False
    if benchmark == "longvideobench":
        if a is None or not re.search("[ABCDE]", _strip_prefixes(a, _LVB_PREFIXES)):
            return _lvb_random(rng, it)
        return longvideobench_letter(a, len(it.options), rng) == gold, True, False
    if a is None:  # no answer at all: wrong (the scripts would fail on None; VNBench's skips it, below)
        return False, True, False
    if benchmark == "mlvu":
        return (mlvu_match(a, gold) if mode == "official" else lmms_eval_letter(a) == gold), True, False
    if benchmark == "eventbench":
        return eventbench_match(a, eventbench_gt(it.options, it.answer)), True, False
    if benchmark == "vnbench":
        return vnbench_letter(a) == gold, True, False
    raise ValueError(f"unknown benchmark {benchmark!r}")


def units(benchmark: str, items: Sequence[BenchItem], answers: Answers, scoring: str = "official",
          seed: int = 0) -> tuple[list[Unit], dict]:
    """(units, extra counts) of ``answers`` on ``items`` under ``scoring``. Event-Bench and
    VNBench questions group their orderings / tries (``group``): Event-Bench's is right iff all
    are (``evaluate_em.py`` lines 36-40); VNBench's official one iff exactly 4 non-null tries are
    right, and a question whose tries are all null is dropped (``eval.py`` lines 12-13, 51-53:
    null preds are skipped before the question is ever seen). ``seed``: LongVideoBench's random
    fallback."""
    mode, _ = rule_of(benchmark, scoring)
    answers = _check(items, answers)
    rng = random.Random(seed)
    extra: dict[str, int] = {}
    if benchmark not in ("eventbench", "vnbench"):
        out, n_random = [], 0
        for it, a in zip(items, answers):
            right, counted, randomised = _right_one(benchmark, mode, it, a, rng)
            n_random += randomised
            out.append(Unit(it.video, it.task_type, right, counted, it.duration_group))
        if benchmark == "longvideobench":
            extra["n_random"] = n_random
        if benchmark == "videomme":
            extra["n_unanswered"] = sum(not u.counted for u in out) if mode == "official" else 0
        return out, extra
    groups: dict[tuple[str, str], list[tuple[BenchItem, int | str | None]]] = {}
    for it, a in zip(items, answers):
        groups.setdefault((it.task_type, it.group or it.id), []).append((it, a))
    out, dropped = [], 0
    for (task, _), members in groups.items():
        video = members[0][0].video
        if benchmark == "vnbench" and mode == "official":
            asked = [(it, a) for it, a in members if a is not None]
            if not asked:
                dropped += 1
                continue
            right = sum(_right_one(benchmark, mode, it, a, rng)[0] for it, a in asked) == 4
        else:
            right = all(_right_one(benchmark, mode, it, a, rng)[0] for it, a in members)
        out.append(Unit(video, task, right))
    if benchmark == "vnbench" and mode == "official":
        extra["n_dropped"] = dropped
    return out, extra


def _strip_prefixes(s: str, prefixes: Sequence[str]) -> str:
    s = s.strip()
    for p in prefixes:
        s = s.replace(p, "")
    return s


def score(benchmark: str, items: Sequence[BenchItem], answers: Answers, seed: int = 0,
          scoring: str = "official") -> dict:
    """``benchmark``'s score of ``answers`` under ``scoring`` (``official`` | ``lmms_eval`` |
    ``strict``): ``overall``, ``n`` (questions in the denominator), the per-task (VNBench:
    per-type) and, where the benchmark has them, per-duration accuracies, the mode applied and
    the rule it follows. The embedded default's synthetic suite is scored like MLVU (mean of
    per-task accuracies) with the strict reading."""
    if benchmark != "synthetic" and benchmark not in LOADERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; allowed: synthetic, {', '.join(sorted(LOADERS))}")
    mode, rule = rule_of(benchmark, scoring)
    us, extra = units(benchmark, items, answers, mode, seed)
    if not us:
        raise ValueError(f"{benchmark}: nothing to score (every question was dropped)")
    return {**aggregate(benchmark, mode, us), **extra, "scoring": mode, "rule": rule}


def score_eventbench(items: Sequence[BenchItem], answers: Answers, tasks: Iterable[str] | None = None,
                     scoring: str = "official") -> dict:
    """An item counts only if all its orderings are right; overall = micro average over items.
    ``tasks`` keeps a subset of task types (the paper reports the episodic-reasoning task)."""
    if tasks is not None:
        keep = set(tasks)
        pairs = [(it, a) for it, a in zip(items, _check(items, answers)) if it.task_type in keep]
        if not pairs:
            raise ValueError(f"no items of tasks {sorted(keep)}")
        items, answers = [p[0] for p in pairs], [p[1] for p in pairs]
    return score("eventbench", items, answers, scoring=scoring)


def score_vnbench(items: Sequence[BenchItem], answers: Answers, scoring: str = "official") -> dict:
    """A question counts only if all its tries are right; overall = mean over the needle types."""
    return score("vnbench", items, answers, scoring=scoring)


def score_mlvu(items: Sequence[BenchItem], answers: Answers, scoring: str = "official") -> dict:
    """M-avg: the mean of per-task accuracies, so small tasks weigh as much as large ones."""
    return score("mlvu", items, answers, scoring=scoring)


def score_longvideobench(items: Sequence[BenchItem], answers: Answers, seed: int = 0,
                         scoring: str = "official") -> dict:
    """Accuracy (overall, per duration group, per question category) after the random fallback."""
    return score("longvideobench", items, answers, seed, scoring)


def score_videomme(items: Sequence[BenchItem], answers: Answers, scoring: str = "official") -> dict:
    """Accuracy overall, per duration (short / medium / long) and per task type; officially over
    the answered questions only."""
    return score("videomme", items, answers, scoring=scoring)


SCORERS: dict[str, Callable[..., dict]] = {
    "mlvu": score_mlvu, "vnbench": score_vnbench, "eventbench": score_eventbench,
    "longvideobench": score_longvideobench, "videomme": score_videomme,
}


# ---------------------------------------------------------------------------------------------
# Intervals: bootstrap over videos (the questions of one video are not independent)


def _boot_weights(clusters: Sequence[str], n_boot: int, seed: int):
    """(sorted cluster keys, (n_boot, n_clusters) counts): row b says how often resample b drew
    each video (videos drawn with replacement, as many as there are)."""
    import numpy as np

    keys = sorted(set(clusters))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    flat = np.bincount((draws + np.arange(n_boot)[:, None] * len(keys)).ravel(), minlength=n_boot * len(keys))
    return keys, flat.reshape(n_boot, len(keys)).astype(float)


def _boot_overall(benchmark: str, mode: str, us: Sequence[Unit], keys: Sequence[str], weights):
    """The rule's overall score on every resample at once: a video drawn k times contributes its
    units k times, exactly as if the resampled item list were scored (tests check it is)."""
    import numpy as np

    kind = _average(benchmark, mode)
    if kind == "families":
        raise ValueError("VNBench's LLaVA-example rule is for result files; bootstrap the items' rule")
    tasks = sorted(MLVU_LMMS_EVAL_TASKS) if kind == "macro_fixed" else sorted({u.task for u in us})
    col = {k: i for i, k in enumerate(keys)}
    tix = {t: j for j, t in enumerate(tasks)}
    right = np.zeros((len(keys), len(tasks)))
    counted = np.zeros((len(keys), len(tasks)))
    for u in us:
        if u.counted:
            counted[col[u.cluster], tix[u.task]] += 1
            right[col[u.cluster], tix[u.task]] += u.right
    r, n = weights @ right, weights @ counted  # (n_boot, tasks)
    if kind == "micro":
        tot = n.sum(1)
        return np.divide(r.sum(1), tot, out=np.zeros(len(tot)), where=tot > 0)
    acc = np.divide(r, n, out=np.zeros_like(r), where=n > 0)
    if kind == "macro_fixed":
        return acc.mean(1)
    present = (n > 0).sum(1)
    return np.divide(acc.sum(1), present, out=np.zeros(len(present)), where=present > 0)


def _interval(values, level: float) -> dict:
    import numpy as np

    if not len(values):
        return {"low": None, "high": None, "se": None}
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return {"low": float(lo), "high": float(hi), "se": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def bootstrap_score(benchmark: str, items: Sequence[BenchItem], answers: Answers, *, scoring: str = "official",
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95, fallback_seed: int = 0) -> dict:
    """``benchmark``'s score of ``answers`` with a percentile bootstrap interval clustered by video:
    each resample draws the videos with replacement and re-applies the rule's averaging to all
    their questions (so a VNBench question keeps its 4 tries, an MLVU task its weight in M-avg).
    ``{"score", "low", "high", "se", "level", "n_boot", "n_videos", "scoring", "rule"}``; ``score``
    is :func:`score`'s ``overall``. Seeded (``seed``) and deterministic; ``n_boot=0`` gives the
    score without an interval. LongVideoBench's random fallback is drawn once (``fallback_seed``)
    and held fixed across resamples."""
    if not 0 < level < 1 or n_boot < 0:
        raise ValueError(f"level={level} must be in (0, 1) and n_boot={n_boot} >= 0")
    mode, rule = rule_of(benchmark, scoring)
    us, _ = units(benchmark, items, answers, mode, fallback_seed)
    if not us:
        raise ValueError(f"{benchmark}: nothing to score (every question was dropped)")
    point = aggregate(benchmark, mode, us)["overall"]
    keys, w = _boot_weights([u.cluster for u in us], n_boot, seed)
    boot = _boot_overall(benchmark, mode, us, keys, w) if n_boot else []
    return {"score": point, **_interval(boot, level), "level": level, "n_boot": n_boot, "n_videos": len(keys),
            "scoring": mode, "rule": rule}


def video_resamples(items: Sequence[BenchItem], n_boot: int, seed: int = 0):
    """(sorted video keys, ``[n_boot, n_videos]`` draw counts): resamples of a benchmark's videos,
    to be shared by every arm and seed scored with :func:`score_draws` (paired comparisons)."""
    return _boot_weights([it.video for it in items], n_boot, seed)


def score_draws(benchmark: str, items: Sequence[BenchItem], answers: Answers, keys: Sequence[str], weights, *,
                scoring: str = "official", fallback_seed: int = 0):
    """``(score, [n_boot] scores)``: the official score of ``answers`` and its value on each video
    resample of :func:`video_resamples` (the same resamples for every answer set given them)."""
    mode, _ = rule_of(benchmark, scoring)
    us, _ = units(benchmark, items, answers, mode, fallback_seed)
    if not us:
        raise ValueError(f"{benchmark}: nothing to score (every question was dropped)")
    unknown = sorted({u.cluster for u in us} - set(keys))
    if unknown:
        raise ValueError(f"{benchmark}: videos {unknown[:3]} are not among the resampled videos")
    return aggregate(benchmark, mode, us)["overall"], _boot_overall(benchmark, mode, us, keys, weights)


def paired_difference(benchmark: str, items: Sequence[BenchItem], answers_a: Answers, answers_b: Answers, *,
                      scoring: str = "official", n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                      fallback_seed: int = 0) -> dict:
    """Score of ``answers_a`` minus that of ``answers_b`` on the same ``items`` (two arms), with a
    percentile interval from the *same* video resamples for both, so what the videos share
    cancels. ``{"a", "b", "diff", "low", "high", "se", "level", "n_boot", "n_videos", "scoring",
    "rule"}``; otherwise as :func:`bootstrap_score`."""
    if not 0 < level < 1 or n_boot < 0:
        raise ValueError(f"level={level} must be in (0, 1) and n_boot={n_boot} >= 0")
    mode, rule = rule_of(benchmark, scoring)
    ua, _ = units(benchmark, items, answers_a, mode, fallback_seed)
    ub, _ = units(benchmark, items, answers_b, mode, fallback_seed)
    if not ua or not ub:
        raise ValueError(f"{benchmark}: nothing to score (every question was dropped)")
    a, b = aggregate(benchmark, mode, ua)["overall"], aggregate(benchmark, mode, ub)["overall"]
    keys, w = _boot_weights([u.cluster for u in ua] + [u.cluster for u in ub], n_boot, seed)
    boot = (_boot_overall(benchmark, mode, ua, keys, w) - _boot_overall(benchmark, mode, ub, keys, w)
            if n_boot else [])
    return {"a": a, "b": b, "diff": a - b, **_interval(boot, level), "level": level, "n_boot": n_boot,
            "n_videos": len(keys), "scoring": mode, "rule": rule}


# ---------------------------------------------------------------------------------------------
# Result files in each benchmark's own published format, scored by its official script's rule


def _result_lines(path: str | Path) -> list[tuple[str, dict]]:
    """Non-empty lines as ``(where, record)``. VNBench's own example is not strict JSON Lines
    (single-quoted values; its own ``eval.py`` cannot read it), so a line JSON rejects is read as
    a Python literal."""
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
        rid = next((rec[k] for k in ("question_id", "id", "video_path", "doc_id") if k in rec), None)
        out.append((f"{path}: line {n} (id {rid!r})", rec))
    if not out:
        raise ValueError(f"{path}: no result lines")
    return out


def _vnbench_gt(where: str, rec: dict) -> str:
    gt = _field(where, rec, "gt", (str, int))
    return gold_letter(gt) if isinstance(gt, int) and 0 <= gt <= 3 else gt  # eval.py lines 16-17


def score_vnbench_results(path: str | Path, rule: str = "auto") -> dict:
    """A VNBench result file, in either published format. ``eval.py``'s (``question_id``,
    ``pred``, ``gt``, ``type``; its README's format): :func:`vnbench_letter`, a null pred skipped,
    a question (``question_id`` minus its last 2 characters, line 10) right iff exactly 4 of its
    lines are, an optional ``gpt_judge`` deciding instead (lines 24-25, 37-38); overall = mean over
    the types present. The LLaVA example's (``video_path``, ``task_type``, ``try``, ``pred``,
    ``gt``; ``llava_examples/``), by the scorer it ships with, ``evaluation_utils.py``
    ``get_detail_result``: :func:`vnbench_llava_judge` per line, a video right iff its judgements
    sum to 4, exactly 4 lines per video (line 24's assertion), ``Overall`` = the mean of the ret /
    ord / cnt family means (:func:`_families`), and the per-type accuracies of ``ret_insert1`` and
    ``ret_insert2`` reported under each other's name (lines 48-50). ``rule``: ``auto`` (by format),
    ``eval.py`` (either format) or ``evaluation_utils``."""
    if rule not in ("auto", "eval.py", "evaluation_utils"):
        raise ValueError(f"rule={rule!r}; allowed: auto, eval.py, evaluation_utils")
    lines = _result_lines(path)
    llava = "question_id" not in lines[0][1]
    if rule == "evaluation_utils" and not llava:
        raise ValueError(f"{path}: rule=evaluation_utils reads the LLaVA example's format (video_path, task_type)")
    if rule == "evaluation_utils" or (rule == "auto" and llava):
        return _vnbench_llava(path, lines)
    counts: dict[tuple[str, str], list[int]] = {}  # (type, question) -> right lines
    for where, rec in lines:
        if llava:
            name, kind = _field(where, rec, "video_path", str), _field(where, rec, "task_type", str)
        else:
            name, kind = _field(where, rec, "question_id", str)[:-2], _field(where, rec, "type", str)
        pred = rec.get("pred", ...)
        if pred is ...:
            raise ValueError(f"{where}: missing field 'pred'")
        if pred is None:
            continue
        if not isinstance(pred, str):
            raise ValueError(f"{where}: field 'pred' has type {type(pred).__name__}")
        gt = _vnbench_gt(where, rec)
        if "gpt_judge" in rec:
            right = rec["gpt_judge"][0] == "1"
        else:
            right = vnbench_letter(pred) == gt
        counts.setdefault((kind, name), []).append(right)
    us = [Unit(name, kind, sum(r) == 4) for (kind, name), r in counts.items()]
    if not us:
        raise ValueError(f"{path}: every pred is null: eval.py has nothing to score")
    return {**aggregate("vnbench", "official", us), "scoring": "official", "rule": RULES[("vnbench", "official")]}


def _vnbench_llava(path: str | Path, lines: list[tuple[str, dict]]) -> dict:
    sums: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for where, rec in lines:
        video = _field(where, rec, "video_path", str)
        if "judge_result" in rec:
            judge = int(rec["judge_result"])
        else:
            judge = int(vnbench_llava_judge(where, rec.get("pred"), _field(where, rec, "gt", (str, int))))
        sums[video] = sums.get(video, 0) + judge
        kinds[video] = _field(where, rec, "task_type", str)  # the last line's, as processed_data keeps
    if 4 * len(sums) != len(lines):
        raise ValueError(f"{path}: {len(lines)} lines for {len(sums)} videos: the official get_detail_result "
                         f"asserts 4 tries per video (evaluation_utils.py line 24)")
    us = [Unit(v, kinds[v], s == 4) for v, s in sums.items()]
    out = aggregate("vnbench_llava", "official", us)
    per = out["per_type"]
    missing = {"ret_insert1", "ret_insert2"} - set(per)
    if missing:
        raise ValueError(f"{path}: no {sorted(missing)} lines: the official get_detail_result swaps the "
                         f"ret_insert1 / ret_insert2 labels and fails without both (lines 48-50)")
    per["ret_insert1"], per["ret_insert2"] = per["ret_insert2"], per["ret_insert1"]
    return {**out, "per_type": dict(sorted(per.items())), "scoring": "official",
            "rule": "joez17/VideoNIAH@8193a3b llava_examples/evaluation_utils.py"}


def score_eventbench_results(path: str | Path, tasks: Iterable[str] | None = None) -> dict:
    """Event-Bench's ``evaluate_em.py`` on a result file (``pred`` and ``gt``: one string per
    ordering, ``task``): a line counts only if :func:`eventbench_match` holds for each of its
    ``pred`` strings against the ``gt`` at the same position (lines 36-40: a shorter ``pred``
    list checks only its own length); overall = micro average over lines, per task too.
    ``tasks`` keeps a subset (the paper reports the episodic-reasoning task)."""
    keep = None if tasks is None else set(tasks)
    us = []
    for where, rec in _result_lines(path):
        preds, gts = _field(where, rec, "pred", list), _field(where, rec, "gt", list)
        if len(preds) > len(gts) or not all(isinstance(x, str) for x in preds + gts):
            raise ValueError(f"{where}: fields 'pred' and 'gt' must be lists of strings, 'gt' as long as 'pred' "
                             f"(the official script indexes gt by pred's positions)")
        task = _field(where, rec, "task", str)
        if keep is None or task in keep:
            try:
                right = all(eventbench_match(p, g) for p, g in zip(preds, gts))
            except ValueError as e:
                raise ValueError(f"{where}: field 'gt': {e}") from None
            us.append(Unit(str(rec.get("video", rec.get("id", where))), task, right))
    if not us:
        raise ValueError(f"{path}: no items of tasks {sorted(keep or ())}")
    return {**aggregate("eventbench", "official", us), "scoring": "official",
            "rule": RULES[("eventbench", "official")]}


def score_mlvu_results(path: str | Path) -> dict:
    """MLVU's ``choice_bench.py`` on the file it writes (``{"acc_dict", "res_list"}``, lines
    191-196; a bare ``res_list`` also accepted): :func:`mlvu_match` of each ``pred`` against the
    letter of its ``gt`` (:func:`mlvu_gold`), per ``question_type``; overall = the mean of the
    per-task accuracies (``Avg``, lines 198-205)."""
    path = Path(path)
    data = _json_lenient(path)
    rows = data.get("res_list") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected {{'res_list': [...]}} or a list of result records")
    us = []
    for i, rec in enumerate(rows):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: not an object")
        pred, gold = _field(where, rec, "pred", str), mlvu_gold(where, rec.get("gt"))
        us.append(Unit(str(rec.get("video", i)), _field(where, rec, "question_type", str), mlvu_match(pred, gold)))
    return {**aggregate("mlvu", "official", us), "scoring": "official", "rule": RULES[("mlvu", "official")]}


def score_videomme_results(path: str | Path, scoring: str = "official", skip_missing: bool = False) -> dict:
    """A Video-MME result file as its output template (``evaluation/output_test_template.json``:
    per video ``video_id, duration, domain, sub_category, questions: [{question_id, task_type,
    answer, response, ...}]``; trailing commas as in the template accepted). ``official``:
    ``eval_your_results.py`` -- :func:`videomme_letter`, right iff equal to ``answer``, an empty
    extraction out of every denominator; per duration, domain, sub-category and task type; the
    script's 300-videos-per-duration assertion is not repeated (partial files score).
    ``skip_missing``: its option of the same name (videos marked ``"missing": true`` left out).
    ``lmms_eval``: :func:`lmms_eval_letter`, every question counted."""
    mode, rule = rule_of("videomme", scoring)
    if mode == "strict":
        raise ValueError("scoring=strict needs the options' count: score the items (score('videomme', ...))")
    path = Path(path)
    videos = _json_lenient(path)
    if not isinstance(videos, list):
        raise ValueError(f"{path}: expected a JSON list of videos")
    us, extra = [], defaultdict(list)
    for i, video in enumerate(videos):
        where = f"{path}: video {i} (id {video.get('video_id') if isinstance(video, dict) else None!r})"
        if not isinstance(video, dict):
            raise ValueError(f"{where}: not an object")
        if skip_missing and video.get("missing"):
            continue
        duration = _field(where, video, "duration", str)
        for j, q in enumerate(_field(where, video, "questions", list)):
            qw = f"{where}: question {j} (id {q.get('question_id') if isinstance(q, dict) else None!r})"
            if not isinstance(q, dict):
                raise ValueError(f"{qw}: not an object")
            response = _field(qw, q, "response", str)
            got = videomme_letter(response) if mode == "official" else lmms_eval_letter(response)
            counted = mode == "lmms_eval" or got != ""
            u = Unit(str(video.get("video_id", i)), _field(qw, q, "task_type", str),
                     got == _field(qw, q, "answer", str), counted, duration)
            us.append(u)
            for key in ("domain", "sub_category"):
                if key in video:
                    extra[key].append((str(video[key]), u))
    if not us:
        raise ValueError(f"{path}: no questions")
    out = {**aggregate("videomme", mode, us), "n_unanswered": sum(not u.counted for u in us)}
    for key, pairs in extra.items():
        groups: dict[str, list[Unit]] = defaultdict(list)
        for k, u in pairs:
            groups[k].append(u)
        out[f"per_{key}"] = {k: _rate(v) for k, v in sorted(groups.items())}
    return {**out, "scoring": mode, "rule": rule}


_LMMS_METRICS = {"longvideobench": "lvb_acc", "videomme": "videomme_perception_score", "mlvu": "mlvu_percetion_score"}


def score_lmms_eval_samples(path: str | Path, benchmark: str) -> dict:
    """An lmms-eval per-sample log (``--log_samples``: ``*_samples_<task>.jsonl``), aggregated as
    lmms-eval does from the dict each line's metric holds: LongVideoBench (``lvb_acc``: right iff
    ``parsed_pred == answer``, micro over all, per duration group and category; its official rule),
    Video-MME (``videomme_perception_score``: ``pred_answer == answer``, every line counted) and
    MLVU dev (``mlvu_percetion_score`` [sic]: mean over the 7 task names, an absent one as 0)."""
    if benchmark not in _LMMS_METRICS:
        raise ValueError(f"benchmark={benchmark!r}; lmms-eval sample logs are read for {', '.join(_LMMS_METRICS)}")
    key = _LMMS_METRICS[benchmark]
    us = []
    for where, rec in _result_lines(path):
        m = _field(where, rec, key, dict)
        mw = f"{where}: field {key!r}"
        right = _field(mw, m, "parsed_pred" if benchmark == "longvideobench" else "pred_answer", str) == \
            _field(mw, m, "answer", str)
        if benchmark == "longvideobench":
            us.append(Unit(str(m.get("id", where)), str(_field(mw, m, "question_category", str)), right,
                           duration=str(_field(mw, m, "duration_group", (str, int, float)))))
        elif benchmark == "videomme":
            us.append(Unit(str(m.get("videoID", m.get("question_id", where))), _field(mw, m, "task_category", str),
                           right, duration=_field(mw, m, "duration", str)))
        else:
            us.append(Unit(str(m.get("question_id", where)), _field(mw, m, "task_type", str), right))
    mode = "official" if benchmark == "longvideobench" else "lmms_eval"
    return {**aggregate(benchmark, mode, us), "scoring": mode, "rule": rule_of(benchmark, mode)[1]}


def score_results(benchmark: str, path: str, scoring: str = "official", rule: str = "auto") -> dict:
    """Score a result file in ``benchmark``'s published format by its official script's rule (the
    ``visctx score-results`` command): VNBench (eval.py's format or the LLaVA example's; ``rule``),
    Event-Bench (its result jsonl), MLVU (``test_all_choice.json``), Video-MME (the output
    template; ``scoring``: official or lmms_eval); an lmms-eval ``--log_samples`` file for
    LongVideoBench, Video-MME or MLVU.

    Args:
        benchmark: whose format ``path`` is in (eventbench, vnbench, mlvu, longvideobench, videomme).
        path: the result file (or, for MLVU, its results JSON).
        scoring: ``official`` or ``lmms_eval`` (Video-MME: which extractor and denominator).
        rule: VNBench only: ``auto`` (by the file's fields), ``eval.py`` or ``llava`` (the example's
            own scorer).
    """
    lines = Path(path).suffix == ".jsonl" and Path(path).is_file() and _result_lines(path)
    if lines and benchmark in _LMMS_METRICS and _LMMS_METRICS[benchmark] in lines[0][1]:
        return score_lmms_eval_samples(path, benchmark)
    if benchmark == "vnbench":
        return score_vnbench_results(path, rule)
    if benchmark == "eventbench":
        return score_eventbench_results(path)
    if benchmark == "mlvu":
        return score_mlvu_results(path)
    if benchmark == "videomme":
        return score_videomme_results(path, scoring)
    if benchmark == "longvideobench":
        raise ValueError(f"{path}: LongVideoBench publishes no result format; its official rule is lmms-eval's, "
                         f"so give an lmms-eval --log_samples file (lines with 'lvb_acc')")
    raise ValueError(f"unknown benchmark {benchmark!r}; allowed: {', '.join(sorted(LOADERS))}")


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
    holding none of the videos (surely the wrong one) is an error here. MLVU's open-ended files
    are left out and counted (``skipped``).

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
    summary = {"benchmark": benchmark, "items": len(items), "videos": len(videos), "missing_videos": len(missing)}
    if benchmark == "mlvu":
        summary["skipped"] = mlvu_open_ended(annotations)
    return summary


def read_items(path: str | Path) -> list[BenchItem]:
    """The evaluation JSON (as :func:`write_items` writes it, or the synthetic corpus's) as items;
    ``answer`` -1 is MLVU's "no candidate is the answer" (wrong whatever is answered)."""
    path = Path(path)
    items = []
    for i, rec in _records(path):
        rid = str(_field(f"{path}: record {i}", rec, "id", (str, int)))
        where = f"{path}: record {i} (id {rid!r})"
        options = _options(where, rec, "options", allow_empty=True)
        answer = _field(where, rec, "answer", int)
        if not -1 <= answer < len(options):
            raise ValueError(f"{where}: field 'answer'={answer} is not an index into {len(options)} options (or -1)")
        items.append(BenchItem(rid, _field(where, rec, "video", str), _field(where, rec, "question", str), options,
                               answer, str(rec.get("task_type", "")), str(rec.get("duration_group", "")),
                               str(rec.get("group", "")), int(rec.get("try_index", 0))))
    return _unique(path, items)


def evaluation_items(result: Mapping[str, Any], items: Sequence[BenchItem]) -> list[BenchItem]:
    """The items an evaluation JSON scored, in its order, out of the benchmark's ``items``
    (:func:`read_items` of its eval JSON): evaluation leaves out the items of quarantined videos,
    so its answers align with these, not with every item."""
    by_id = {it.id: it for it in items}
    ids = result.get("ids")
    if ids is None:
        if len(items) != len(result.get("predictions", ())):
            raise ValueError(f"evaluation result has no 'ids' and {len(result.get('predictions', ()))} answers "
                             f"for {len(items)} items")
        return list(items)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(f"evaluation result scored {len(missing)} items not among the {len(items)} given, "
                         f"e.g. {missing[0]!r}")
    return [by_id[i] for i in ids]


def evaluation_answers(result: Mapping[str, Any]) -> list:
    """The answers an evaluation JSON (``visctx.evaluate``) was scored on, to re-score or bootstrap
    it: the generated texts in ``generate`` mode (what the official extractors read), else the
    predicted option indices."""
    key = "generations" if result.get("answer_mode") == "generate" else "predictions"
    if key not in result:
        raise ValueError(f"evaluation result has no {key!r} (answer_mode={result.get('answer_mode')!r})")
    return list(result[key])
