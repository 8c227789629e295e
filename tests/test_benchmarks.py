"""Benchmark loaders on each benchmark's published format, letter parsing, and the official scoring
rules, pinned by hand-made cases and by the benchmarks' own example result files."""

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from visctx.benchmarks import (LOADERS, SCORERS, BenchItem, circular_orderings, load_eventbench,
                               load_longvideobench, load_mlvu, load_videomme, load_vnbench, parse_letter,
                               prompt_letters, random_fallback, score_eventbench, score_eventbench_results,
                               score_longvideobench, score_mlvu, score_videomme, score_vnbench,
                               score_vnbench_results)

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


def item(i, answer=0, task="t", group="", n=4, duration=""):
    return BenchItem(f"q{i}", f"v{i}.mp4", "q?", tuple(f"o{k}" for k in range(n)), answer, task,
                     duration_group=duration, group=group)


# ---------------------------------------------------------------------------------------------
# Loaders on the published formats


def test_mlvu_real_files():
    items = load_mlvu(FIX / "mlvu", video_root="/data/MLVU/video")
    files = sorted((FIX / "mlvu").glob("*.json"))
    recs = [(f.stem, r) for f in files for r in json.loads(f.read_text())]
    assert len(items) == len(recs) == 21
    for it, (stem, r) in zip(items, recs):
        assert it.options == tuple(r["candidates"]) and it.options[it.answer] == r["answer"]
        assert it.task_type == r["question_type"] and it.question == r["question"]
        assert it.video == f"/data/MLVU/video/{stem}/{r['video']}"
    assert len({it.task_type for it in items}) == 7
    assert len({it.id for it in items}) == 21
    assert load_mlvu(FIX / "mlvu" / "4_count.json")[1].video == "4_count/count_151.mp4"


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


def test_mlvu_answer_not_a_candidate(tmp_path):
    d = tmp_path / "mlvu"
    d.mkdir()
    shutil.copy(FIX / "mlvu" / "1_plotQA.json", d)
    copy_json(d, FIX / "mlvu" / "2_needle.json", lambda data: data[1].update(answer="Swimming"))
    with pytest.raises(ValueError) as e:
        load_mlvu(d)
    msg = str(e.value)
    assert "2_needle.json" in msg and "record 1" in msg and "'2_needle_1'" in msg
    assert "'answer'" in msg and "Swimming" in msg


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
    s = score_videomme(items, [0, 1, 2, None, 1])
    assert s["overall"] == pytest.approx(3 / 5)
    assert s["per_duration"] == {"long": 0.0, "medium": 0.5, "short": 1.0}
    assert s["per_task"] == {"count": pytest.approx(2 / 3), "ocr": 0.5}


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_check_predictions(name):
    items = [item(i, answer=i) for i in range(3)]
    with pytest.raises(ValueError, match="2 predictions for 3 items"):
        SCORERS[name](items, [0, 0])
    with pytest.raises(ValueError, match=r"prediction 1 \(item 'q1'\) is 'B'"):
        SCORERS[name](items, [0, "B", 2])
    assert SCORERS[name](items, list(np.arange(3)))["overall"] == 1.0  # numpy argmax results


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
    p.write_text(json.dumps(dict(rec, pred=["", "(B)", "(D)", "(A)"])) + "\n")
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
