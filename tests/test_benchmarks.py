"""Benchmark loaders on each benchmark's published format, letter parsing, and the scoring rules:
each official rule pinned case by case, the expected result read off the official script (file
and lines named at each case; versions in ``benchmarks.RULES``), and by the benchmarks' own
example result files. The same rules were run against the official scripts themselves on random
prediction sets outside the repository (README, "Real benchmarks")."""

import dataclasses
import json
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from visctx.benchmarks import (LOADERS, MLVU_LMMS_EVAL_TASKS, SCORERS, STRICT_RULE, BenchItem, bootstrap_score,
                               circular_orderings, evaluation_answers, evaluation_items, eventbench_match,
                               lmms_eval_letter, load_eventbench, load_longvideobench, load_mlvu, load_videomme,
                               load_vnbench, longvideobench_letter, mlvu_match, mlvu_open_ended, paired_difference, parse_letter,
                               prompt_letters, random_fallback, rule_of, score, score_eventbench,
                               score_eventbench_results, score_lmms_eval_samples, score_longvideobench, score_mlvu,
                               score_mlvu_results, score_videomme, score_videomme_results, score_vnbench,
                               score_vnbench_results, scoring_mode, videomme_letter, vnbench_letter)

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


def item(i, answer=0, task="t", group="", n=4, duration=""):
    return BenchItem(f"q{i}", f"v{i}.mp4", "q?", tuple(f"o{k}" for k in range(n)), answer, task,
                     duration_group=duration, group=group)


# ---------------------------------------------------------------------------------------------
# Loaders on the published formats


def test_mlvu_real_files(capsys):
    """The dev json/ folder as published: the 7 multiple-choice files load, the open-ended
    8_sub_scene / 9_summary are skipped and reported with their count."""
    items = load_mlvu(FIX / "mlvu", video_root="/data/MLVU/video")
    assert "skipped 4 open-ended records" in capsys.readouterr().err  # 2 + 2 in the fixture
    files = [f for f in sorted((FIX / "mlvu").glob("*.json")) if not f.stem.startswith(("8_", "9_"))]
    recs = [(f.stem, r) for f in files for r in json.loads(f.read_text())]
    assert len(items) == len(recs) == 21
    for it, (stem, r) in zip(items, recs):
        assert it.options == tuple(r["candidates"]) and it.options[it.answer] == r["answer"]
        assert it.question == r["question"] and it.video == f"/data/MLVU/video/{stem}/{r['video']}"
        # the official task names are choice_bench.py's data_list keys (lines 123-131), by file
        assert it.task_type == stem.split("_", 1)[1]
    assert {it.task_type for it in items} == {"count", "ego", "needle", "order", "plotQA", "anomaly_reco",
                                              "topic_reasoning"}
    assert "findNeedle" in {r["question_type"] for _, r in recs}  # what the records call the needle task
    assert len({it.id for it in items}) == 21
    assert load_mlvu(FIX / "mlvu" / "4_count.json")[1].video == "4_count/count_151.mp4"
    assert mlvu_open_ended(FIX / "mlvu") == {"8_sub_scene.json": 2, "9_summary.json": 2}
    with pytest.raises(ValueError, match="no multiple-choice MLVU records"):
        load_mlvu(FIX / "mlvu" / "9_summary.json")


def test_vnbench_annotation():
    items = load_vnbench(FIX / "vnbench" / "VNBench-main-4try.json", video_root="/d")
    raw = json.loads((FIX / "vnbench" / "VNBench-main-4try.json").read_text())
    assert len(items) == 8
    for it, r in zip(items, raw):
        assert it.options[it.answer] == r["gt"] and it.try_index == r["try"] and it.task_type == r["type"]
    assert {it.group for it in items} == {"v_PkRvgIFREJU_ord_insert2", "3261112327_ret_insert1"}
    ret = [it for it in items if it.task_type == "ret_insert1"]
    # ids follow the official result files' question_id, whose gt letters are D, B, B, A
    assert [it.id for it in ret] == [f"3261112327_ret_insert1_{t}" for t in range(4)]
    assert ["ABCD"[it.answer] for it in ret] == ["D", "B", "B", "A"]
    assert items[0].video == "/d/VNBench/v_PkRvgIFREJU_ord_insert2.mp4"


def test_eventbench_annotation_expands_circular_orderings():
    items = load_eventbench(FIX / "eventbench" / "test.jsonl")
    raw = [json.loads(line) for line in (FIX / "eventbench" / "test.jsonl").read_text().splitlines()]
    assert len(items) == 4 * len(raw)
    for j, r in enumerate(raw):
        group = [it for it in items if it.group == str(j)]
        assert [it.try_index for it in group] == [0, 1, 2, 3]
        assert group[0].options == tuple(r["candidates"])
        truth = re.sub(r"^\([A-D]\) ", "", r["answer"])
        assert all(it.options[it.answer] == truth and it.task_type == r["task_type"] for it in group)
        assert len({it.options for it in group}) == 4


def test_longvideobench_annotation():
    items = load_longvideobench(FIX / "longvideobench" / "lvb_val.json", video_root="videos")
    raw = json.loads((FIX / "longvideobench" / "lvb_val.json").read_text())
    assert [it.id for it in items] == [r["id"] for r in raw]
    assert [len(it.options) for it in items] == [5, 4, 3]
    for it, r in zip(items, raw):
        assert it.answer == r["correct_choice"] and it.task_type == r["question_category"]
        assert it.duration_group == str(r["duration_group"]) and it.video == f"videos/{r['video_path']}"


def test_videomme_json_and_jsonl(tmp_path):
    path = FIX / "videomme" / "videomme.json"
    raw = json.loads(path.read_text())
    jl = tmp_path / "videomme.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in raw))
    for items in (load_videomme(path), load_videomme(jl)):
        assert [it.duration_group for it in items] == ["short", "medium", "long"]
        assert items[0].options == ("One.", "Two.", "Three.", "Four.")
        for it, r in zip(items, raw):
            assert f"{'ABCD'[it.answer]}. {it.options[it.answer]}" == r["options"]["ABCD".index(r["answer"])]
            assert it.video == f"{r['videoID']}.mp4" and it.id == r["question_id"]


def test_videomme_parquet_as_published(tmp_path):
    """Video-MME ships parquet: list columns come back as numpy arrays, the loader sees lists."""
    import pandas as pd

    raw = json.loads((FIX / "videomme" / "videomme.json").read_text())
    pd.DataFrame(raw).to_parquet(tmp_path / "test.parquet")
    assert load_videomme(tmp_path / "test.parquet") == load_videomme(FIX / "videomme" / "videomme.json")


def test_registries():
    assert set(LOADERS) == set(SCORERS) == {"mlvu", "vnbench", "eventbench", "longvideobench", "videomme"}


# ---------------------------------------------------------------------------------------------
# Errors name the file, the record and the field


def copy_json(tmp_path, src, edit):
    data = json.loads(src.read_text())
    edit(data)
    dst = tmp_path / src.name
    dst.write_text(json.dumps(data))
    return dst


def test_mlvu_open_ended_record_in_a_choice_file(tmp_path):
    d = tmp_path / "mlvu"
    d.mkdir()
    shutil.copy(FIX / "mlvu" / "1_plotQA.json", d)
    copy_json(d, FIX / "mlvu" / "2_needle.json", lambda data: data[1].pop("candidates"))
    with pytest.raises(ValueError, match=r"2_needle\.json: record 1 \(id '2_needle_1'\): missing field 'candidates'"):
        load_mlvu(d)
    copy_json(d, FIX / "mlvu" / "2_needle.json", lambda data: data[1].update(answer=3))
    with pytest.raises(ValueError, match=r"2_needle\.json: record 1 \(id '2_needle_1'\): field 'answer' has type int"):
        load_mlvu(d)


@pytest.mark.parametrize("bench,src,field", [
    ("vnbench", "vnbench/VNBench-main-4try.json", "question"),
    ("vnbench", "vnbench/VNBench-main-4try.json", "gt"),
    ("longvideobench", "longvideobench/lvb_val.json", "correct_choice"),
    ("videomme", "videomme/videomme.json", "options"),
    ("mlvu", "mlvu/3_ego.json", "candidates"),
])
def test_missing_field(tmp_path, bench, src, field):
    path = copy_json(tmp_path, FIX / src, lambda data: data[2].pop(field))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: record 2 \(id '[^']+'\): missing field '{field}'"):
        LOADERS[bench](path)


def test_eventbench_errors(tmp_path):
    raw = [json.loads(line) for line in (FIX / "eventbench" / "test.jsonl").read_text().splitlines()]
    p = tmp_path / "test.jsonl"
    raw[1]["answer"] = "Nobody knows."
    p.write_text("".join(json.dumps(r) + "\n" for r in raw))
    with pytest.raises(ValueError, match=r"test\.jsonl: record 1 \(id '1'\): field 'answer'='Nobody knows\.' is not"):
        load_eventbench(p)
    raw[1]["answer"] = "(B) He wants to turn off the stove."  # letter and text disagree
    p.write_text("".join(json.dumps(r) + "\n" for r in raw))
    with pytest.raises(ValueError, match=r"record 1 .*field 'answer'.*letter B is option 'He hears"):
        load_eventbench(p)
    p.write_text(json.dumps(raw[0]) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"test\.jsonl: line 2: not valid JSON"):
        load_eventbench(p)


def test_out_of_range_answers(tmp_path):
    lvb = copy_json(tmp_path, FIX / "longvideobench" / "lvb_val.json", lambda d: d[2].update(correct_choice=3))
    with pytest.raises(ValueError, match=r"record 2 \(id 'pQ0vA8S1o2E_1'\): field 'correct_choice'=3"):
        load_longvideobench(lvb)
    vm = copy_json(tmp_path, FIX / "videomme" / "videomme.json", lambda d: d[0].update(answer="E"))
    with pytest.raises(ValueError, match=r"record 0 \(id '001-1'\): field 'answer'='E'"):
        load_videomme(vm)


def test_duplicate_ids(tmp_path):
    path = copy_json(tmp_path, FIX / "vnbench" / "VNBench-main-4try.json", lambda d: d[1].update({"try": 0}))
    with pytest.raises(ValueError, match=r"item 1 \(id 'v_PkRvgIFREJU_ord_insert2_0'\): duplicate id"):
        load_vnbench(path)


# ---------------------------------------------------------------------------------------------
# Circular orderings


def test_circular_orderings():
    opts = ("w", "x", "y", "z")
    rot = circular_orderings(opts, 2)
    assert len(rot) == 4 and len({o for o, _ in rot}) == 4
    assert rot[0] == (opts, 2)
    for o, a in rot:
        assert o[a] == "y" and sorted(o) == sorted(opts)
        k = o.index("w")  # a rotation: cyclic order preserved
        assert o[k:] + o[:k] == opts
    with pytest.raises(ValueError):
        circular_orderings(opts, 4)


def test_circular_orderings_match_event_bench_result_file():
    """The official result file's 4 candidate lists are exactly our 4 rotations, and its gt letters
    are where the answer moved to."""
    rec = json.loads((FIX / "eventbench" / "example_result.jsonl").read_text())
    cands = [tuple(c) for c in rec["candidates"]]
    truth = rec["gt"][0].split(" ", 1)[1]
    ours = circular_orderings(cands[0], cands[0].index(truth))
    assert {o for o, _ in ours} == set(cands)
    by_opts = dict(ours)
    for c, gt in zip(cands, rec["gt"]):
        assert gt.startswith(f"({'ABCD'[by_opts[c]]}) ")


# ---------------------------------------------------------------------------------------------
# Official scoring rules, by hand-made cases


def event_items(group, task, answer=1):
    return [BenchItem(f"{group}_{k}", "v.mp4", "q", o, a, task, group=group, try_index=k)
            for k, (o, a) in enumerate(circular_orderings(("a", "b", "c", "d"), answer))]


def test_eventbench_all_orderings_must_be_right():
    items = event_items("1", "Episodic Reasoning")
    right = [it.answer for it in items]
    assert score_eventbench(items, right)["overall"] == 1.0
    for wrong in range(4):
        preds = list(right)
        preds[wrong] = (preds[wrong] + 1) % 4
        assert score_eventbench(items, preds)["overall"] == 0.0
    assert score_eventbench(items, right[:3] + [None])["overall"] == 0.0


def test_eventbench_micro_average_and_task_subset():
    items = event_items("1", "Episodic Reasoning") + event_items("2", "Episodic Reasoning") + event_items("3", "Other")
    preds = [it.answer for it in items]
    preds[4] = None  # group 2 loses one ordering
    s = score_eventbench(items, preds)
    assert s["overall"] == pytest.approx(2 / 3) and s["n"] == 3
    assert s["per_task"] == {"Episodic Reasoning": 0.5, "Other": 1.0}
    assert score_eventbench(items, preds, tasks=["Episodic Reasoning"])["overall"] == 0.5
    with pytest.raises(ValueError, match="no items"):
        score_eventbench(items, preds, tasks=["Nope"])
    fixture = load_eventbench(FIX / "eventbench" / "test.jsonl")
    assert score_eventbench(fixture, [it.answer for it in fixture])["overall"] == 1.0


def test_vnbench_mean_over_types_not_micro():
    items, preds = [], []
    for g, kind, right in [("a", "ret", True), ("b", "cnt", False), ("c", "cnt", False), ("d", "cnt", False)]:
        for t in range(4):
            items.append(BenchItem(f"{g}_{t}", "v", "q", ("w", "x", "y", "z"), t, kind, group=g, try_index=t))
            preds.append(t if right or t else 3)  # wrong groups miss only their first try
    s = score_vnbench(items, preds)
    micro = 1 / 4  # one group of four right
    assert s["per_type"] == {"cnt": 0.0, "ret": 1.0}
    assert s["overall"] == 0.5 != micro


def test_mlvu_m_avg_not_micro():
    items = [item(0, 1, "plotQA")] + [item(i, 2, "count") for i in range(1, 4)]
    s = score_mlvu(items, [1, 0, 0, 2])
    micro = 2 / 4
    assert s["per_task"] == {"count": pytest.approx(1 / 3), "plotQA": 1.0}
    assert s["overall"] == pytest.approx(2 / 3) != micro


def test_longvideobench_random_fallback():
    items = [item(i, answer=i % 2, n=2 + i % 4, duration="600") for i in range(400)]
    preds = [None if i % 3 else it.answer for i, it in enumerate(items)]
    filled = random_fallback(items, preds, seed=3)
    assert all(f == p for f, p in zip(filled, preds) if p is not None)
    assert all(0 <= f < len(it.options) for f, it in zip(filled, items))
    assert random_fallback(items, preds, seed=3) == filled
    a, b = score_longvideobench(items, preds, seed=3), score_longvideobench(items, preds, seed=3)
    assert a == b and a["n_random"] == sum(p is None for p in preds)
    assert len({score_longvideobench(items, preds, seed=s)["overall"] for s in range(8)}) > 1
    # the fallback is uniform: all-None on 2-option items scores about a half
    two = [item(i, answer=i % 2, n=2) for i in range(400)]
    assert 0.4 < score_longvideobench(two, [None] * 400, seed=0)["overall"] < 0.6


def test_longvideobench_breakdowns():
    items = load_longvideobench(FIX / "longvideobench" / "lvb_val.json")
    s = score_longvideobench(items, [1, 0, 0])  # right, wrong, right
    assert s["overall"] == pytest.approx(2 / 3) and s["n_random"] == 0
    assert s["per_duration"] == {"15": 0.0, "3600": 1.0, "600": 1.0}
    assert s["per_task"] == {"E2O": 1.0, "S2A": 0.0, "TOS": 1.0}


def test_videomme_per_duration():
    items = ([item(0, 0, "count", duration="short"), item(1, 1, "count", duration="short")]
             + [item(2, 2, "ocr", duration="medium"), item(3, 3, "count", duration="medium")]
             + [item(4, 0, "ocr", duration="long")])
    s = score_videomme(items, [0, 1, 2, None, 1], scoring="strict")  # no answer counts wrong
    assert s["overall"] == pytest.approx(3 / 5)
    assert s["per_duration"] == {"long": 0.0, "medium": 0.5, "short": 1.0}
    assert s["per_task"] == {"count": pytest.approx(2 / 3), "ocr": 0.5}
    # officially an unanswered question is in no denominator (eval_your_results.py lines 173-181)
    s = score_videomme(items, [0, 1, 2, None, 1])
    assert s["overall"] == pytest.approx(3 / 4) and s["n"] == 4 and s["n_unanswered"] == 1
    assert s["per_duration"] == {"long": 0.0, "medium": 1.0, "short": 1.0}
    assert s["per_task"] == {"count": 1.0, "ocr": 0.5}


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_check_predictions(name):
    # VNBench questions have 4 tries (eval.py counts a question right at exactly 4 right tries)
    items = ([BenchItem(f"q_{t}", "v", "q", ("w", "x", "y", "z"), t, "count", group="q", try_index=t) for t in range(4)]
             if name == "vnbench" else [item(i, answer=i, task="count") for i in range(4)])
    with pytest.raises(ValueError, match="2 answers for 4 items"):
        SCORERS[name](items, [0, 0])
    with pytest.raises(ValueError, match=r"answer 1 \(item 'q[_]?1'\) is 1.5: not an option index, a generated text"):
        SCORERS[name](items, [0, 1.5, 2, 3])
    assert SCORERS[name](items, list(np.arange(4)))["overall"] == 1.0  # numpy argmax results
    # an index and an exact letter are right in every mode (lmms-eval's MLVU averages its 7 tasks)
    for mode in ("official", "lmms_eval", "strict"):
        full = 1 / 7 if (name, mode) == ("mlvu", "lmms_eval") else 1.0
        assert SCORERS[name](items, list(np.arange(4)), scoring=mode)["overall"] == pytest.approx(full)
        assert SCORERS[name](items, ["A", "B", "C", "D"], scoring=mode)["overall"] == pytest.approx(full)


# ---------------------------------------------------------------------------------------------
# Generation mode: prompt and letter parsing


def test_prompt_letters():
    assert prompt_letters("Where?", ["here", "there"]) == (
        "Where?\nA. here\nB. there\nAnswer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("text,n,expect", [
    ("(B)", 4, 1), ("B.", 4, 1), ("B", 4, 1), ("b", 4, 1), ("The answer is B", 4, 1),
    ("Answer: (c) the cat", 4, 2), ("B) blue", 4, 1), ("\n\n  C", 4, 2), ("  (D) a dog\n", 4, 3),
    ("A.", 4, 0), ("(A) A man walks", 4, 0), ("B blue", 4, 1), ("The correct answer is option D.", 4, 3),
    ("**C**", 4, 2), ("C, because the dog barks", 4, 2), ("E", 5, 4), ("Answer: A", 4, 0),
    ("I think the answer is B", 4, 1), ("a", 4, 0), ("B\n\nBecause the man waves.", 4, 1),
    ("", 4, None), ("I don't know", 4, None), ("E", 4, None), ("(E) five", 4, None),
    ("The answer is (A) or (B)", 4, None), ("A or B", 4, None), ("B or C", 4, None), ("(A) or (B)", 4, None),
    ("A/B", 4, None), ("A, B", 4, None),
    ("A man walks into the room", 4, None), ("a cat", 4, None), ("None of the above", 4, None),
])
def test_parse_letter(text, n, expect):
    assert parse_letter(text, n) == expect


# ---------------------------------------------------------------------------------------------
# The benchmarks' own example result files


def test_vnbench_example_result_file():
    path = FIX / "vnbench" / "example_result.jsonl"
    lines = path.read_text().splitlines()
    with pytest.raises(json.JSONDecodeError):  # the fallback reader is what makes this file readable
        json.loads(lines[0])
    # independent reading: the fields are plain "key": "value" pairs
    groups = defaultdict(list)
    for line in lines:
        f = dict(re.findall(r'"(question_id|pred|gt|type)": "([^"]*)"', line))
        groups[(f["type"], f["question_id"].rsplit("_", 1)[0])].append(f["pred"] == f["gt"])
    per_type = defaultdict(list)
    for (kind, _), rights in groups.items():
        per_type[kind].append(all(rights))
    expect = sum(sum(v) / len(v) for v in per_type.values()) / len(per_type)
    s = score_vnbench_results(path)
    assert s["overall"] == pytest.approx(expect) == pytest.approx(2 / 3)  # ret_edit1 misses 3 tries
    assert s["per_type"]["ret_edit1"] == 0.0 and s["n"] == 3


def test_vnbench_result_file_bad_line(tmp_path):
    p = tmp_path / "res.jsonl"
    p.write_text((FIX / "vnbench" / "example_result.jsonl").read_text().splitlines()[0] + "\n{'pred': \n")
    with pytest.raises(ValueError, match=r"res\.jsonl: line 2: neither JSON nor a Python literal"):
        score_vnbench_results(p)
    p.write_text('{"question_id": "x_ret_0", "pred": "A", "type": "ret"}\n')
    with pytest.raises(ValueError, match=r"res\.jsonl: line 1 \(id 'x_ret_0'\): missing field 'gt'"):
        score_vnbench_results(p)


def test_eventbench_example_result_file(tmp_path):
    path = FIX / "eventbench" / "example_result.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    expect = sum(all(p.split(" ")[0] == g.split(" ")[0] for p, g in zip(r["pred"], r["gt"])) for r in recs) / len(recs)
    s = score_eventbench_results(path)
    assert s["overall"] == expect == 1.0
    assert s["per_task"] == {recs[0]["task"]: 1.0}
    # one ordering wrong -> the item scores 0; a bare letter still matches "(C) ..."
    rec = dict(recs[0], pred=["C", "(B)", "(D) x", "(B) wrong"])
    p = tmp_path / "res.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    assert score_eventbench_results(p)["overall"] == 0.0
    p.write_text(json.dumps(dict(rec, pred=["C", "(B)", "(D) x", "(A)"])) + "\n")
    assert score_eventbench_results(p)["overall"] == 1.0
    # "" is right officially: its first token '' occurs in every gt option (evaluate_em.py line 23)
    p.write_text(json.dumps(dict(rec, pred=["", "(B)", " (D)", "(A)"])) + "\n")
    assert score_eventbench_results(p)["overall"] == 1.0
    p.write_text(json.dumps(dict(rec, pred=["I think C", "(B)", "(D)", "(A)"])) + "\n")
    assert score_eventbench_results(p)["overall"] == 0.0


def test_write_items_round_trips_and_names_missing_videos(tmp_path):
    from visctx.benchmarks import read_items, score, write_items

    ann = FIX / "longvideobench" / "lvb_val.json"
    items = load_longvideobench(ann)
    root = tmp_path / "videos"
    for it in items:
        (root / it.video).parent.mkdir(parents=True, exist_ok=True)
        (root / it.video).write_bytes(b"x")
    out = tmp_path / "items.json"
    assert write_items("longvideobench", str(ann), str(out), str(root))["items"] == len(items)
    assert read_items(out) == items  # the pipeline's JSON keeps what the official rule needs
    (root / items[-1].video).unlink()  # one missing video: reported, then quarantined at extraction
    again = write_items("longvideobench", str(ann), str(tmp_path / "again.json"), str(root))
    assert again["missing_videos"] == 1 and read_items(tmp_path / "again.json") == items
    with pytest.raises(ValueError, match=re.escape(f"none of the {again['videos']} videos") + ".*nowhere"):
        write_items("longvideobench", str(ann), str(tmp_path / "again.json"), str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        write_items("nope", str(ann), str(out))
    # the synthetic suite is scored like MLVU: the mean of per-task accuracies
    syn = [item(i, task="a" if i < 3 else "b") for i in range(4)]
    assert score("synthetic", syn, [0, 0, 0, 1])["overall"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Scoring modes


def test_scoring_modes_per_benchmark():
    assert scoring_mode(None, "mlvu") == scoring_mode("official", "mlvu") == "official"
    assert scoring_mode({"videomme": "lmms_eval"}, "videomme") == "lmms_eval"
    assert scoring_mode({"videomme": "lmms_eval"}, "mlvu") == "official"  # unlisted: official
    with pytest.raises(ValueError, match=r"scoring='loose' for mlvu; allowed: official, lmms_eval, strict"):
        scoring_mode({"mlvu": "loose"}, "mlvu")
    # lmms-eval has no VNBench / Event-Bench task, and its LongVideoBench task is the official rule
    assert rule_of("vnbench", "lmms_eval") == rule_of("vnbench", "official")
    assert rule_of("longvideobench", "lmms_eval")[0] == "official"
    assert "lmms-eval" in rule_of("longvideobench", "official")[1]
    assert rule_of("videomme", "lmms_eval")[1].endswith("lmms_eval/tasks/videomme/utils.py")
    assert rule_of("mlvu", "strict") == ("strict", STRICT_RULE)
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'"):
        rule_of("imagenet", "official")
    s = score("videomme", [item(0, 1)], ["B"], scoring="lmms_eval")
    assert s["scoring"] == "lmms_eval" and "mcq" not in s["rule"] and s["rule"].startswith("EvolvingLMMs-Lab")


# ---------------------------------------------------------------------------------------------
# Official rules, answer shape by answer shape. Each expected value is read off the official
# code (file and lines in each test's docstring; versions in benchmarks.RULES).

EB_GT = "(C) The girl didn't try to relieve her drowsiness."  # a gt of Event-Bench's example result


@pytest.mark.parametrize("pred, right", [
    ("(C)", True), ("(B)", False), ("C.", True), ("B.", False), ("c", True), ("b", False),
    (" D", True),  # first token '' is 'in' every option (line 23)
    ("", True),  # the same
    ("I think C", False), ("Answer: C", False),  # first tokens 'i', 'answer:'
    ("C or E", True), ("B or E", False),  # only the first token counts
    ("The girl didn't try to relieve her drowsiness.", False),  # the option's text: 'the'
    ("zzz", False), ("C) blue", True), (")", True),  # 'c)' and ')' occur in '(c)'
    ("(c)x", True),  # the other way round: '(c)' occurs in '(c)x' (line 25)
    ("(C) Snoring.", True),  # the text after the option is never compared
])
def test_eventbench_official_shapes(pred, right):
    """RUCAIBox/Event-Bench evaluation/evaluate_em.py check_ans, lines 16-26."""
    assert eventbench_match(pred, EB_GT) is right


def test_eventbench_official_on_items():
    """An item is right only if all 4 orderings are (lines 36-40); a generated " D" is right in
    every ordering officially (line 23), only where D is the answer for the strict reading."""
    items = event_items("1", "Episodic Reasoning")
    assert score_eventbench(items, [" D"] * 4)["overall"] == 1.0
    assert score_eventbench(items, [" D"] * 4, scoring="strict")["overall"] == 0.0
    gold = ["ABCD"[it.answer] for it in items]
    assert score_eventbench(items, gold)["overall"] == 1.0
    assert score_eventbench(items, gold[:3] + ["I think " + gold[3]])["overall"] == 0.0  # 'i' is no option
    assert score_eventbench(items, gold[:3] + [None])["overall"] == 0.0  # no answer: wrong
    with pytest.raises(ValueError, match=r"has no text after its option: the official check_ans fails"):
        eventbench_match("C", "(C)")


@pytest.mark.parametrize("pred, letter", [
    ("(B)", "B"), ("B.", "B"), ("b", "b"), (" D", "D"), ("", ""), ("I think C", "C"),
    ("Answer: C", "A"),  # the 'A' of 'Answer' wins: A is tested first (line 41)
    ("B or E", "B"), ("E or B", "B"), ("B or A", "A"),  # A before B before C before D, wherever they are
    ("tv monitor, cow, sheep", "tv monitor, cow, sheep"),  # no capital: the text itself, never a letter
    ("Cow, sheep", "C"), ("zzz", "zzz"),
    ("D. A book", "D"),  # cut at the first '.' (line 18) before looking
    ("A book (D)", "A"),
])
def test_vnbench_official_shapes(pred, letter):
    """joez17/VideoNIAH evaluation/eval.py lines 18 and 40-48; the letter then has to equal gt."""
    assert vnbench_letter(pred) == letter


def vn_items(n_questions, kind="ret_insert1"):
    return [BenchItem(f"q{g}_{kind}_{t}", f"v{g}.mp4", "q", ("w", "x", "y", "z"), 1, kind,
                      group=f"q{g}_{kind}", try_index=t) for g in range(n_questions) for t in range(4)]


def test_vnbench_official_nulls_and_tries():
    """eval.py lines 12-13: a null pred is skipped before its question is seen, so a question whose
    4 tries are all null is in no denominator, and one with a null try can never reach the 4
    right tries it needs (lines 51-53); a type with only null preds is absent from the mean."""
    items = vn_items(3) + vn_items(1, "cnt_edit1")
    answers = ["B"] * 4 + [None] * 4 + ["B", "B", "B", None] + [None] * 4
    s = score_vnbench(items, answers)
    assert s["per_type"] == {"ret_insert1": 0.5} and s["n"] == 2 and s["n_dropped"] == 2
    assert s["overall"] == 0.5
    strict = score_vnbench(items, answers, scoring="strict")  # ours: no answer is a wrong try
    assert strict["per_type"] == {"cnt_edit1": 0.0, "ret_insert1": pytest.approx(1 / 3)} and strict["n"] == 4
    with pytest.raises(ValueError, match="every question was dropped"):
        score_vnbench(vn_items(1), [None] * 4)
    # "exactly 4 right" (line 52): a question asked 5 times with 4 right still counts
    five = vn_items(1) + [BenchItem("q0_ret_insert1_4", "v0.mp4", "q", ("w", "x", "y", "z"), 1, "ret_insert1",
                                    group="q0_ret_insert1", try_index=4)]
    assert score_vnbench(five, ["B"] * 4 + ["A"])["overall"] == 1.0
    assert score_vnbench(five, ["B"] * 5)["overall"] == 0.0


@pytest.mark.parametrize("pred, right", [
    ("(B)", True), ("B", True), ("B) blue", True), ("(B) blue", True), ("xB)", True),  # the char before ')'
    ("B.", False), ("b", False), (" B", False), ("", False), ("b)", False),  # exact, case-sensitive
    ("I think B", False), ("Answer: B", False), ("B or E", False), ("Blue", False),  # an option's text
    ("(A) or (B)", False),  # the first ')' decides: A
    (")", False),  # ')' first: nothing before it
    ("zzz", False),
])
def test_mlvu_official_shapes(pred, right):
    """JUNJIE99/MLVU evaluation/multiple_choice_evaluation/choice_bench.py check_ans, lines 105-119
    (gold letter B)."""
    assert mlvu_match(pred, "B") is right


def test_mlvu_real_odd_annotations():
    """Real records of the published dev files (tests/fixtures/benchmarks/mlvu_odd): duplicate
    candidates -> the last match is the answer, an empty candidate is an option like any, an answer
    outside the candidates makes the gold letter '@' (qa_template, lines 83-89)."""
    items = {it.id: it for it in load_mlvu(FIX / "mlvu_odd")}
    answers = {"1_plotQA_0": 2, "1_plotQA_1": 1, "1_plotQA_2": 2, "2_needle_0": -1, "2_needle_1": -1, "3_ego_0": 2,
               "3_ego_1": 3, "6_anomaly_reco_0": 3, "6_anomaly_reco_1": 2, "7_topic_reasoning_0": 3,
               "7_topic_reasoning_1": 3}
    assert {k: it.answer for k, it in items.items()} == answers
    assert items["7_topic_reasoning_0"].options == ("", "", "", "")
    assert items["1_plotQA_2"].options[1] == items["1_plotQA_2"].options[2] == "Three"
    one = lambda rid, a: score_mlvu([items[rid]], [a])["overall"]  # noqa: E731
    assert one("1_plotQA_2", "(C)") == 1.0 and one("1_plotQA_2", "(B)") == 0.0  # the same text, first copy
    assert one("1_plotQA_2", 1) == 0.0  # also as an index: a log-likelihood tie picks the first copy
    assert one("2_needle_0", "(B)") == 0.0 and one("2_needle_0", 1) == 0.0  # no candidate is the answer...
    assert one("2_needle_0", "(@)") == 1.0  # ...except officially the letter '@'
    assert one("3_ego_0", "(C)") == 1.0 and one("7_topic_reasoning_0", "D)") == 1.0


def test_mlvu_lmms_eval_rule():
    """lmms-eval mlvu/utils.py: extract_mcq_answer (lines 66-86) against the gold letter, then the
    mean over its 7 dev task names with an absent task as 0 (lines 89-124)."""
    items = [item(0, 1, "count"), item(1, 1, "count"), item(2, 0, "ego")]
    s = score_mlvu(items, ["B.", "b", "Answer: A"], scoring="lmms_eval")
    assert s["per_task"]["count"] == 0.5 and s["per_task"]["ego"] == 1.0 and s["per_task"]["order"] == 0.0
    assert s["overall"] == pytest.approx(1.5 / 7)
    assert score_mlvu(items, ["B.", "b", "Answer: A"])["overall"] == 0.0  # officially none is right
    with pytest.raises(ValueError, match=r"tasks \['findNeedle'\]: lmms-eval's MLVU dev scorer knows only"):
        score_mlvu([item(0, 1, "findNeedle")], ["B"], scoring="lmms_eval")


RANDOM = "random"


@pytest.mark.parametrize("pred, letter", [
    ("(B)", "B"), ("B.", "B"), ("b", RANDOM), (" D", "D"), ("", RANDOM), ("I think C", "C"),
    ("Answer: C", "A"),  # the 'A' of 'Answer': the first capital A-E anywhere (line 210)
    ("B or E", "B"), ("E or B", "E"),  # E on a 4-option item: read, and wrong (not random)
    ("a red cat", RANDOM), ("Eating", "E"),  # an option's text: its capitals
    ("zzz", RANDOM),
    ("Best answer: C", "C"), ("The answer is C", "C"),  # prefixes deleted first (lines 193-205)
])
def test_longvideobench_official_shapes(pred, letter):
    """lmms-eval longvideobench/utils.py parse_multi_choice_response, lines 187-213 (the parser
    LongVideoBench's README points to): a parse failure is random.choice of the item's letters,
    drawn from Python's random as lmms-eval draws it (random.seed(s), then random.choice)."""
    for seed in range(5):
        lmms = random.Random(seed).choice(list("ABCD"))  # what random.seed(seed); random.choice(...) gives
        got = longvideobench_letter(pred, 4, random.Random(seed))
        assert got == (lmms if letter == RANDOM else letter)


def test_longvideobench_official_on_items():
    items = [item(i, 2, "TOS", duration="600") for i in range(3)]
    s = score_longvideobench(items, ["I think C", "Answer: C", "C"], seed=0)
    assert s["overall"] == pytest.approx(2 / 3) and s["n_random"] == 0
    strict = score_longvideobench(items, ["I think C", "Answer: C", "C"], seed=0, scoring="strict")
    assert strict["n_random"] == 1 and strict["per_duration"] == {"600": strict["overall"]}  # ours: "I think"


@pytest.mark.parametrize("pred, official, lmms", [
    ("(B)", "B", "B"), ("B.", "B", "B"), ("b", "", ""), (" D", "D", "D"), ("", "", ""),
    ("I think C", "C", "C"),
    ("Answer: C", "C", "C"),  # official: "Answer:" is one of its prefixes (parse_answer line 76)
    ("B or E", "B", "B"), ("E or B", "B", "B"),
    ("Apples.", "A", "A"),  # an option's text: its capital A-D (fallback, lmms mcq_extract line 146)
    ("zzz", "", ""),
    ("Best answer: C", "B", "C"),  # official: "Best answer:" "Best option:" fused by a missing comma (74-75)
    ("The answer is (A) or (B)", "A", "B"),  # lmms: after the phrase, the later letter wins
    ("A book (D)", "A", "A"),  # lmms: a standalone letter at the start outranks "(D)"
    ("The best option isThe correct option is D", "D", "D"),
    ("**C**", "C", "C"), ("I choose B.", "B", "B"),
])
def test_videomme_official_and_lmms_eval_shapes(pred, official, lmms):
    """Official: thanku-all/parse_answer eval_your_results.py extract_characters_regex, lines
    65-89 (the script Video-MME's README links). lmms-eval: videomme/utils.py line 256 ->
    _task_utils/mcq_extract.py extract_mcq_answer, lines 66-158."""
    assert videomme_letter(pred) == official
    assert lmms_eval_letter(pred) == lmms


def test_videomme_denominators():
    """Officially an empty extraction is in no denominator (lines 173-181); lmms-eval counts every
    question (videomme/utils.py lines 320-327); strict counts it wrong too."""
    items = [item(i, 1, "OCR Problems", duration="short") for i in range(4)]  # gold: B
    answers = ["B", "b", "zzz", "Best answer: C"]
    official = score_videomme(items, answers)  # B; ""; ""; B (from "Best"): 2 of the 2 answered
    assert official["overall"] == 1.0 and official["n"] == 2 and official["n_unanswered"] == 2
    assert score_videomme(items, answers, scoring="lmms_eval")["overall"] == pytest.approx(1 / 4)  # B; ""; ""; C
    assert score_videomme(items, answers, scoring="strict")["overall"] == pytest.approx(2 / 4)  # B; b; -; C
    assert score_videomme(items, ["zzz"] * 4)["overall"] == 0.0  # nothing answered: the script prints 0


# ---------------------------------------------------------------------------------------------
# Result files in the benchmarks' own formats (real samples: tests/fixtures/benchmarks/README.md)

LLAVA = FIX / "vnbench" / "llava-ov-7b-videoniah-result.jsonl"


def test_vnbench_llava_example_results():
    """VideoNIAH's LLaVA-OneVision results (18 videos x 4 tries copied from llava_examples/), by
    the scorer they ship with, evaluation_utils.py: the numbers its get_detail_result prints on
    this file (run outside the repository), including its ret_insert1 / ret_insert2 label swap
    (lines 48-50) and the family means (lines 36-57)."""
    s = score_vnbench_results(LLAVA)
    printed = {"cnt_edit1": 0.5, "cnt_edit2": 0.0, "cnt_insert1": 0.5, "ord_edit1": 1.0, "ord_insert1": 0.5,
               "ord_insert2": 1 / 3, "ret_edit1": 0.5, "ret_insert1": 2 / 3, "ret_insert2": 0.5}
    assert s["per_type"] == pytest.approx(printed) and s["overall"] == pytest.approx(0.5)
    assert s["per_family"] == pytest.approx({"cnt": 1 / 3, "ord": 0.6111111111111, "ret": 0.5555555555556})
    assert s["n"] == 18 and s["rule"].endswith("llava_examples/evaluation_utils.py")
    # independent reading: first character of pred == gt, 4 of 4 per video
    rows = [json.loads(line) for line in LLAVA.read_text().splitlines()]
    per_video = defaultdict(list)
    for r in rows:
        per_video[(r["task_type"], r["video_path"])].append(r["pred"][0] == r["gt"])
    per_type = defaultdict(list)
    for (kind, _), rights in per_video.items():
        per_type[kind].append(len(rights) == 4 and all(rights))
    mine = {k: sum(v) / len(v) for k, v in per_type.items()}
    assert mine["ret_insert2"] == s["per_type"]["ret_insert1"] == pytest.approx(2 / 3)  # the swap
    assert any(r["pred"].endswith(".") for r in rows)  # "B." shapes among the real answers
    # eval.py's rule on the same file: the same overall here (3 types a family), labels unswapped
    e = score_vnbench_results(LLAVA, rule="eval.py")
    assert e["per_type"] == pytest.approx(mine) and e["overall"] == pytest.approx(0.5)


def test_vnbench_llava_results_where_the_official_script_fails(tmp_path):
    rows = LLAVA.read_text().splitlines()
    p = tmp_path / "res.jsonl"
    bad = json.loads(rows[5])
    p.write_text("\n".join(rows[:5] + [json.dumps(dict(bad, pred=""))] + rows[6:]) + "\n")
    with pytest.raises(ValueError, match=r"res\.jsonl: line 6 \(id '\./VNBench/[^']+'\): field 'pred'='': the official "
                                         r"evaluation_utils\.py reads pred\[0\]"):
        score_vnbench_results(p)
    assert score_vnbench_results(p, rule="eval.py")["n"] == 18  # eval.py reads "" (as wrong)
    p.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"71 lines for 18 videos: the official get_detail_result asserts 4 tries"):
        score_vnbench_results(p)
    p.write_text("\n".join(r for r in rows if "ret_insert1" not in json.loads(r)["task_type"]) + "\n")
    with pytest.raises(ValueError, match=r"no \['ret_insert1'\] lines: the official get_detail_result swaps"):
        score_vnbench_results(p)


def test_vnbench_eval_py_results_with_nulls(tmp_path):
    """eval.py's format: null preds skipped (line 12), gt as an index 0-3 turned into a letter
    (16-17), the question id minus its last 2 characters (10), gpt_judge deciding when present."""
    lines = ([{"question_id": f"a_cnt_{t}", "pred": None, "gt": "B", "type": "cnt"} for t in range(4)]
             + [{"question_id": f"b_ret_{t}", "pred": "B. x", "gt": 1, "type": "ret"} for t in range(4)]
             + [{"question_id": f"c_ret_{t}", "pred": "B", "gt": "B", "type": "ret"} for t in range(3)]
             + [{"question_id": "c_ret_3", "pred": "A", "gt": "B", "type": "ret", "gpt_judge": ["1"]}])
    p = tmp_path / "res.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    s = score_vnbench_results(p)
    assert s["per_type"] == {"ret": 1.0} and s["n"] == 2  # the all-null cnt question and type are gone


def test_videomme_output_template(tmp_path):
    """Video-MME's own output template (copied unchanged; json.load refuses its trailing commas,
    so the official script cannot read it; we can): 7 of 9 responses right under the official
    extractor -- "Answer: C. Jade." reads C once "Answer:" is deleted (parse_answer line 76)."""
    path = FIX / "videomme" / "output_test_template.json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())
    s = score_videomme_results(path)
    assert s["overall"] == pytest.approx(7 / 9) and s["n"] == 9 and s["n_unanswered"] == 0
    assert s["per_duration"] == {"short": pytest.approx(7 / 9)}
    assert s["per_domain"] == {"Knowledge": pytest.approx(7 / 9)}
    assert s["per_task"]["Counting Problem"] == pytest.approx(3 / 4)
    assert score_videomme_results(path, scoring="lmms_eval")["overall"] == pytest.approx(7 / 9)
    # an unparsable response leaves the official denominator, not lmms-eval's
    videos = json.loads(re.sub(r",(\s*[}\]])", r"\1", path.read_text()))
    videos[0]["questions"][1]["response"] = "b"  # was "D." (wrong)
    videos[1]["questions"][0]["response"] = "Best answer: C"  # right (C), read B officially
    p = tmp_path / "out.json"
    p.write_text(json.dumps(videos))
    assert score_videomme_results(p)["overall"] == pytest.approx(6 / 8)
    assert score_videomme_results(p, scoring="lmms_eval")["overall"] == pytest.approx(7 / 9)
    videos[0]["questions"][0]["response"] = None
    p.write_text(json.dumps(videos))
    with pytest.raises(ValueError, match=r"out\.json: video 0 \(id '001'\): question 0 \(id '001-1'\): "
                                         r"field 'response'"):
        score_videomme_results(p)


def test_mlvu_result_file(tmp_path):
    """The file choice_bench.py writes (lines 191-196), scored with its check_ans and Avg."""
    res = [{"pred": "B) x", "gt": "(B) Red", "question_type": "count", "video": "v0.mp4"},
           {"pred": "B.", "gt": "(B) Red", "question_type": "count", "video": "v1.mp4"},
           {"pred": "(@)", "gt": "(@) Catching a flying drone quadcopter", "question_type": "needle", "video": "n.mp4"}]
    p = tmp_path / "test_all_choice.json"
    p.write_text(json.dumps({"acc_dict": {}, "res_list": res}))
    s = score_mlvu_results(p)
    assert s["per_task"] == {"count": 0.5, "needle": 1.0} and s["overall"] == pytest.approx(0.75)
    p.write_text(json.dumps([dict(res[0], gt="B Red")]))
    with pytest.raises(ValueError, match=r"test_all_choice\.json: record 0: field 'gt'='B Red' is not"):
        score_mlvu_results(p)


def test_lmms_eval_sample_logs(tmp_path):
    """lmms-eval's --log_samples lines: the metric dict each task's process_results returns."""
    p = tmp_path / "samples_longvideobench_val_v.jsonl"
    lvb = [{"id": "a", "duration_group": 600, "question_category": "TOS", "answer": "B", "parsed_pred": "B"},
           {"id": "b", "duration_group": 15, "question_category": "TOS", "answer": "C", "parsed_pred": "A"}]
    p.write_text("".join(json.dumps({"doc_id": i, "lvb_acc": m, "target": "x"}) + "\n" for i, m in enumerate(lvb)))
    s = score_lmms_eval_samples(p, "longvideobench")
    assert s["overall"] == 0.5 and s["per_duration"] == {"15": 0.0, "600": 1.0} and s["scoring"] == "official"
    m = {"question_id": "001-1", "duration": "short", "category": "Knowledge", "sub_category": "Law",
         "task_category": "OCR Problems", "pred_answer": "", "answer": "C", "score": 0.0, "videoID": "x"}
    p.write_text(json.dumps({"doc_id": 0, "videomme_perception_score": m}) + "\n")
    assert score_lmms_eval_samples(p, "videomme")["overall"] == 0.0  # "" counted (lmms-eval's denominator)
    with pytest.raises(ValueError, match=r"line 1 \(id 0\): missing field 'lvb_acc'"):
        score_lmms_eval_samples(p, "longvideobench")


# ---------------------------------------------------------------------------------------------
# Intervals clustered by video


def mixed_items(seed=0):
    """Items of several benchmarks' shapes: several questions per video, VNBench-style tries."""
    rng = random.Random(seed)
    mlvu = [BenchItem(f"m{i}", f"v{i // 3}.mp4", "q", ("a", "b", "c", "d"), rng.randrange(4) if i % 7 else -1,
                      rng.choice(MLVU_LMMS_EVAL_TASKS[:4]), duration_group=rng.choice(["short", "long"]))
            for i in range(60)]
    kinds = [rng.choice("xyz") for _ in range(20)]
    vn = [BenchItem(f"q{g}_{t}", f"n{g}.mp4", "q", ("a", "b", "c", "d"), rng.randrange(4), kinds[g],
                    group=f"q{g}", try_index=t) for g in range(20) for t in range(4)]
    return mlvu, vn


MESSY = ("{}", "({})", "{}.", "{} or E", "Answer: {}", "zzz", "", "b")


def answers_for(items, rng, p_right=0.6, p_null=0.05, shapes=MESSY):
    out = []
    for it in items:
        if rng.random() < p_null:
            out.append(None)
            continue
        letter = "ABCD"[it.answer] if it.answer >= 0 and rng.random() < p_right else rng.choice("ABCD")
        out.append(rng.choice(shapes).format(letter))
    return out


def resampled(items, answers, row, keys):
    """The resample ``row`` as an explicit item list: a video drawn k times appears k times, its
    copies told apart (ids, groups and video keys suffixed)."""
    by_video = defaultdict(list)
    for it, a in zip(items, answers):
        by_video[it.video].append((it, a))
    its, ans = [], []
    for key, k in zip(keys, row):
        for copy in range(int(k)):
            for it, a in by_video[key]:
                its.append(dataclasses.replace(it, id=f"{it.id}#{copy}", video=f"{it.video}#{copy}",
                                               group=f"{it.group}#{copy}" if it.group else ""))
                ans.append(a)
    return its, ans


@pytest.mark.parametrize("benchmark, scoring, which", [
    ("mlvu", "official", 0), ("mlvu", "lmms_eval", 0), ("mlvu", "strict", 0), ("videomme", "official", 0),
    ("videomme", "lmms_eval", 0), ("longvideobench", "official", 0), ("vnbench", "official", 1),
    ("vnbench", "strict", 1), ("eventbench", "official", 1),
])
def test_bootstrap_re_applies_the_official_rule_to_resampled_videos(benchmark, scoring, which):
    """Each bootstrap value is exactly the rule applied to that resample's items (a video drawn
    twice counts twice, with all its tries), so the interval is the official score's."""
    from visctx.benchmarks import _boot_overall, _boot_weights, units

    rng = random.Random(1)
    items = mixed_items()[which]
    if benchmark == "videomme":
        items = [dataclasses.replace(it, answer=max(it.answer, 0)) for it in items]
    answers = (answers_for(items, rng, p_right=0.9, shapes=("{}", "({})", "{}.", "{} or E")) if which else
               answers_for(items, rng, p_null=0 if benchmark == "longvideobench" else 0.05))
    if benchmark == "longvideobench":  # the random fallback is drawn once, before resampling
        answers = [a if longvideobench_letter(a, 4, random.Random(0)) in "ABCD" and a.strip() and
                   re.search("[ABCDE]", a) else "A" for a in answers]
        items = [dataclasses.replace(it, answer=max(it.answer, 0)) for it in items]
    us, _ = units(benchmark, items, answers, scoring)
    keys, w = _boot_weights([u.cluster for u in us], 6, seed=3)
    boot = _boot_overall(benchmark, scoring, us, keys, w)
    for b in range(6):
        its, ans = resampled(items, answers, w[b], keys)
        assert boot[b] == pytest.approx(score(benchmark, its, ans, scoring=scoring)["overall"], abs=1e-12)
    assert len(set(np.round(boot, 12))) > 1  # the resamples differ


def test_bootstrap_interval_is_seeded_and_clustered():
    mlvu, vn = mixed_items()
    rng = random.Random(2)
    answers = answers_for(vn, rng, p_right=0.9, shapes=("{}", "({})", "{}."))
    a = bootstrap_score("vnbench", vn, answers, n_boot=400, seed=5)
    assert a == bootstrap_score("vnbench", vn, answers, n_boot=400, seed=5)  # deterministic
    assert a != bootstrap_score("vnbench", vn, answers, n_boot=400, seed=6)
    assert a["score"] == score("vnbench", vn, answers)["overall"] and a["low"] <= a["score"] <= a["high"]
    assert a["n_videos"] == 20 and a["n_boot"] == 400 and a["scoring"] == "official"  # 80 tries, 20 videos
    assert a["se"] > 0 and a["high"] - a["low"] > 2 * a["se"]
    wide = bootstrap_score("vnbench", vn, answers, n_boot=400, seed=5, level=0.99)
    assert wide["low"] <= a["low"] and wide["high"] >= a["high"]
    none = bootstrap_score("vnbench", vn, answers, n_boot=0)
    assert none["score"] == a["score"] and none["low"] is None and none["se"] is None
    # clustering matters: one video's 3 questions move together, so the interval is wider than
    # if each question were its own video
    answers = [it.answer if int(it.video[1:-4]) % 2 else (it.answer + 1) % 4 for it in mlvu]  # right by video
    solo = [dataclasses.replace(it, video=it.id) for it in mlvu]
    clustered = bootstrap_score("mlvu", mlvu, answers, scoring="strict", n_boot=1000, seed=0)
    independent = bootstrap_score("mlvu", solo, answers, scoring="strict", n_boot=1000, seed=0)
    assert clustered["n_videos"] == 20 and independent["n_videos"] == 60
    assert clustered["se"] > independent["se"]
    with pytest.raises(ValueError, match="level=1.5 must be in"):
        bootstrap_score("mlvu", mlvu, answers, level=1.5)


def test_paired_difference_on_the_same_resamples():
    mlvu, _ = mixed_items()
    rng = random.Random(3)
    a = answers_for(mlvu, rng, p_right=0.8)
    b = [x if i % 4 else "zzz" for i, x in enumerate(a)]  # b: a with a quarter of its answers lost
    d = paired_difference("mlvu", mlvu, a, b, n_boot=800, seed=1)
    sa, sb = score("mlvu", mlvu, a)["overall"], score("mlvu", mlvu, b)["overall"]
    assert d["a"] == sa and d["b"] == sb and d["diff"] == pytest.approx(sa - sb) and d["diff"] > 0
    assert d["low"] <= d["diff"] <= d["high"]
    # paired: what both arms share cancels, so the difference is tighter than the arms' own spread
    ia = bootstrap_score("mlvu", mlvu, a, n_boot=800, seed=1)
    ib = bootstrap_score("mlvu", mlvu, b, n_boot=800, seed=1)
    assert d["se"] < (ia["se"] ** 2 + ib["se"] ** 2) ** 0.5
    same = paired_difference("mlvu", mlvu, a, a, n_boot=200, seed=1)
    assert same["diff"] == same["low"] == same["high"] == same["se"] == 0.0
    assert d == paired_difference("mlvu", mlvu, a, b, n_boot=800, seed=1)


def test_evaluation_items_follow_the_scored_ids():
    items = [item(i) for i in range(3)]
    assert evaluation_items({"ids": ["q2", "q0"], "predictions": [0, 0]}, items) == [items[2], items[0]]
    assert evaluation_items({"predictions": [0, 0, 0]}, items) == items
    with pytest.raises(ValueError, match="scored 1 items not among the 3 given, e.g. 'q9'"):
        evaluation_items({"ids": ["q9"], "predictions": [0]}, items)
    with pytest.raises(ValueError, match="no 'ids' and 2 answers for 3 items"):
        evaluation_items({"predictions": [0, 0]}, items)


def test_evaluation_answers():
    assert evaluation_answers({"answer_mode": "generate", "generations": ["B."], "predictions": [1]}) == ["B."]
    assert evaluation_answers({"answer_mode": "loglik", "predictions": [2]}) == [2]
    with pytest.raises(ValueError, match="no 'generations'"):
        evaluation_answers({"answer_mode": "generate", "predictions": [1]})


def test_score_results_command(capsys, tmp_path):
    """`visctx score-results` picks the format's scorer: the published files score from the shell."""
    from visctx.cli import run_command as main  # in this process (no preload server)

    assert main(["score-results", "--benchmark", "vnbench", "--path", str(LLAVA)]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == pytest.approx(0.5)
    tpl = str(FIX / "videomme" / "output_test_template.json")
    assert main(["score-results", "--benchmark", "videomme", "--path", tpl, "--scoring", "lmms_eval"]) == 0
    assert json.loads(capsys.readouterr().out)["scoring"] == "lmms_eval"
    assert main(["score-results", "--benchmark", "longvideobench", "--path", tpl]) == 1
    assert "publishes no result format" in capsys.readouterr().err
