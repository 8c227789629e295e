"""train() and evaluate() end to end on a trivially learnable feature -> answer mapping."""

import json
import re
import math

import numpy as np
import pytest
import torch

from visctx.config import Arm
from visctx.evaluate import evaluate, evaluate_arms
from visctx.files import read_seconds
from visctx.pretrained import build_tiny_llm
from visctx.train import VideoLM, train, train_arms

F, G, D = 4, 27, 4
COLOURS = ["red", "green", "blue", "yellow"]
ARMS = [Arm(2, 4, "pool"), Arm(1, 9, "sample")]


def make_split(root, split, n, rng):
    """Colour c adds +3 to feature channel c everywhere: learnable from any arm."""
    x = rng.normal(size=(n, F, G, G, D)).astype(np.float32)
    keys, train_recs, eval_recs = [], [], []
    for i in range(n):
        c = int(rng.integers(4))
        x[i, ..., c] += 3.0
        key = f"{split}/v{i:03d}.mp4"
        keys.append(key)
        task = ["color", "shade"][i % 2]
        train_recs.append({"id": f"{split}{i}", "video": key, "task_type": task, "conversations": [
            {"from": "human", "value": f"<video>\nwhat {task} is the ball ?"}, {"from": "gpt", "value": COLOURS[c]}]})
        eval_recs.append({"id": f"{split}{i}", "video": key, "question": f"what {task} is the ball ?",
                          "options": COLOURS, "answer": c, "task_type": task})
    d = root / "features" / split
    d.mkdir(parents=True)
    np.save(d / "shard-000.npy", x.astype(np.float16))
    (d / "shard-000.json").write_text(json.dumps({"videos": keys, "frames": F, "grid": G, "dim": D}))
    (root / f"{split}.json").write_text(json.dumps(train_recs if split == "train" else eval_recs))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    make_split(root, "train", 48, rng)
    make_split(root, "eval", 16, rng)
    build_tiny_llm(root / "llm", [root / "train.json", root / "eval.json"], max_frames=4, hidden_size=32,
                   num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)
    return root


def run(root, out, init, arms, steps, log, **kw):
    args = dict(batch_size=8, lr=3e-3, warmup_steps=3, seed=0, threads=1, progress_bar=False)
    args.update(kw)
    return train(str(root / out), str(root / "train.json"), str(root / "features" / "train"), str(init), arms,
                 steps=steps, log_dir=str(root / log), **args)


@pytest.fixture(scope="module")
def base(setup):
    summary = run(setup, "base", setup / "llm", ARMS, 60, "logs/base")
    return setup, summary


def test_base_learns_and_saves_a_model_dir(base):
    root, s = base
    assert s["steps"] == 60 and s["init_kind"] == "llm" and not s["resumed"]
    assert s["final_loss"] < 0.5 * s["first_loss"] and s["final_loss"] < np.log(4)  # below the answer prior
    d = root / "base"
    assert {"llm", "projector.safetensors", "model.json", "train_summary.json"} <= {p.name for p in d.iterdir()}
    # the wall time sits in a sidecar, so a rerun writes the same summary bytes
    assert "seconds" not in json.loads((d / "train_summary.json").read_text())
    assert 0 < read_seconds(d / "train_summary.json") == s["seconds"]
    info = json.loads((d / "model.json").read_text())
    assert info["arm"] == "mixture" and info["arms"] == [a.id for a in ARMS] and info["steps_total"] == 60
    assert (root / "logs/base/metrics.csv").is_file()
    assert not list((root / "logs/base").glob("*.ckpt"))  # finished: nothing to resume
    assert not [p for p in root.iterdir() if p.name.startswith(".base")]  # no tmp dir left


def test_fine_tune_continues_from_the_base_and_evaluate_writes_json(base):
    root, _ = base
    arm = ARMS[0]
    s = run(root, f"arms/{arm.id}/model", root / "base", [arm], 8, f"logs/{arm.id}", lr=1e-3)
    assert s["init_kind"] == "model"
    info = json.loads((root / f"arms/{arm.id}/model/model.json").read_text())
    assert info["arm"]["id"] == arm.id and info["steps"] == 8 and info["steps_total"] == 68
    out = root / f"arms/{arm.id}/eval/synthetic.json"
    r = evaluate(str(root / f"arms/{arm.id}/model"), str(root / "eval.json"), str(root / "features/eval"), arm,
                 str(out), batch_size=5)
    assert json.loads(out.read_text()) == {k: v for k, v in r.items() if k != "seconds"}  # timing: a sidecar
    assert read_seconds(out) == r["seconds"]
    assert {"arm", "benchmark", "n", "loss", "accuracy", "per_task", "T", "M", "token_op", "frame_op",
            "pooled_from"} <= set(r)
    # the synthetic suite's official rule: the mean of per-task accuracies, from the per-item predictions
    assert r["score"] == pytest.approx(np.mean([t["accuracy"] for t in r["per_task"].values()]))
    truth = [rec["answer"] for rec in json.loads((root / "eval.json").read_text())]
    assert np.mean(np.equal(r["predictions"], truth)) == pytest.approx(r["accuracy"])
    assert r["arm"] == arm.id and r["n"] == 16 and (r["T"], r["M"], r["frame_op"]) == (2, 4, "sample")
    assert set(r["per_task"]) == {"color", "shade"}
    for v in [r, *r["per_task"].values()]:
        assert 0.0 <= v["accuracy"] <= 1.0 and v["loss"] > 0
    assert sum(v["n"] for v in r["per_task"].values()) == 16
    assert r["accuracy"] > 0.5 and r["loss"] < np.log(4)  # learnt, and generalises to new videos
    assert {p.name for p in out.parent.iterdir()} == {out.name, "synthetic.timing.json"}  # atomic: no tmp left
    # the length-normalised score is the same pass's other reading; its mode's accuracy is that one
    assert r["answer_mode"] == "loglik" and r["loglik_accuracy"]["sum"] == r["accuracy"]
    norm = evaluate(str(root / f"arms/{arm.id}/model"), str(root / "eval.json"), str(root / "features/eval"), arm,
                    str(root / "norm.json"), batch_size=5, answer_mode="loglik_norm")
    assert norm["accuracy"] == r["loglik_accuracy"]["per_token"] == norm["loglik_accuracy"]["per_token"]
    assert norm["loss"] == r["loss"]  # the held-out loss does not depend on how an answer is picked


def test_length_normalised_choice_favours_no_length():
    """Summed log-likelihood prefers the short option; per token the long one that fits better."""
    from visctx.evaluate import best_option

    logprob = torch.tensor([[-2.0, -3.0, -math.inf], [-1.0, -6.0, -2.0]])  # [items, options]; -inf: padding
    ntokens = torch.tensor([[1, 3, 0], [1, 2, 4]])
    assert best_option(logprob, ntokens, "loglik").tolist() == [0, 0]
    assert best_option(logprob, ntokens, "loglik_norm").tolist() == [1, 2]  # -1/tok and -0.5/tok
    with pytest.raises(ValueError, match="mode"):
        best_option(logprob, ntokens, "vote")


def test_interrupted_run_resumes_from_last_ckpt(base, monkeypatch):
    root, _ = base
    arm = ARMS[1]
    original = VideoLM.training_step

    def crash(self, batch, batch_idx):
        if self.global_step == 4:
            raise KeyboardInterrupt  # Lightning handles it: stops the run, keeps checkpoints
        return original(self, batch, batch_idx)

    monkeypatch.setattr(VideoLM, "training_step", crash)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(root, "resumed", root / "base", [arm], 6, "logs/resume", ckpt_every=3)
    assert (root / "logs/resume/last.ckpt").is_file() and not (root / "resumed").exists()
    monkeypatch.setattr(VideoLM, "training_step", original)
    s = run(root, "resumed", root / "base", [arm], 6, "logs/resume", ckpt_every=3)
    assert s["resumed"] and s["steps"] == 6


def test_arms_sharing_a_process_train_and_score_exactly_as_alone(base):
    """train_arms/evaluate_arms only save start-up: each arm is the run it would be on its own."""
    from safetensors.torch import load_file

    root, _ = base
    args = dict(batch_size=8, lr=1e-3, warmup_steps=3, seed=0, threads=1, progress_bar=False)
    summaries = train_arms(ARMS, str(root / "grouped"), str(root / "train.json"), str(root / "features/train"),
                           str(root / "base"), steps=5, **args)
    assert list(summaries) == [a.id for a in ARMS] and all(s["steps"] == 5 for s in summaries.values())
    alone = ARMS[1]
    run(root, "alone/model", root / "base", [alone], 5, "alone/train", lr=1e-3)
    grouped = load_file(str(root / f"grouped/{alone.id}/model/projector.safetensors"))
    single = load_file(str(root / "alone/model/projector.safetensors"))
    assert all(np.array_equal(grouped[k].numpy(), single[k].numpy()) for k in single)
    assert (root / f"grouped/{alone.id}/train/metrics.csv").is_file()

    scores = evaluate_arms(ARMS, str(root / "grouped"), str(root / "eval.json"), str(root / "features/eval"),
                           batch_size=5)
    r = evaluate(str(root / "alone/model"), str(root / "eval.json"), str(root / "features/eval"), alone,
                 str(root / "alone/eval.json"), batch_size=5)
    assert scores[alone.id]["loss"] == pytest.approx(r["loss"], rel=1e-6)
    for arm in ARMS:
        saved = json.loads((root / f"grouped/{arm.id}/eval/synthetic.json").read_text())
        assert saved["arm"] == arm.id and saved["loss"] == scores[arm.id]["loss"]
    with pytest.raises(ValueError, match="twice"):
        train_arms([ARMS[0], ARMS[0]], str(root / "dup"), str(root / "train.json"), str(root / "features/train"),
                   str(root / "base"), steps=1, **args)


def test_masking_and_summary_arms_fine_tune_from_the_base_and_evaluate(base):
    """The other ways to spend the window train and evaluate as the others do: a train-only tube
    mask (evaluated pooled to M) and summary tokens, added to the base when its fine-tune starts."""
    from visctx.model import SUMMARY_FILE

    root, _ = base
    arms = [Arm(2, 9, "tubetrain"), Arm(2, 9, "pool", summary=3, summary_window=9)]
    args = dict(batch_size=8, lr=1e-3, warmup_steps=0, seed=0, threads=1, progress_bar=False)
    out = train_arms(arms, str(root / "others"), str(root / "train.json"), str(root / "features/train"),
                     str(root / "base"), steps=4, **args)
    assert all(np.isfinite(s["final_loss"]) for s in out.values())
    assert (root / f"others/{arms[1].id}/model" / SUMMARY_FILE).is_file()
    assert not (root / f"others/{arms[0].id}/model" / SUMMARY_FILE).exists()
    for arm in arms:
        r = evaluate(str(root / f"others/{arm.id}/model"), str(root / "eval.json"), str(root / "features/eval"), arm,
                     str(root / f"others/{arm.id}/eval.json"), batch_size=5, answer_mode="generate", max_new_tokens=2)
        assert r["arm"] == arm.id and r["n"] == 16 and np.isfinite(r["loss"]) and len(r["generations"]) == 16
    info = json.loads((root / f"others/{arms[1].id}/model/model.json").read_text())
    assert info["arm"]["kept_tokens"] == 6 and info["arm"]["summary"] == 3


def test_length_groups_lower_the_padding_trained_on(setup, tmp_path):
    """Answers of 1-6 words, some records with a second turn: grouping records of similar text
    length wastes fewer padded slots; the summary reports the padding and the real tokens."""
    root = setup
    recs = json.loads((root / "train.json").read_text())
    for i, r in enumerate(recs):
        conv = r["conversations"]
        conv[1]["value"] = " ".join([conv[1]["value"]] * (1 + i % 6))
        if i % 3 == 0:
            conv += [{"from": "human", "value": "what color is the ball ?"}, dict(conv[1])]
    corpus = tmp_path / "train.json"
    corpus.write_text(json.dumps(recs))
    arm = ARMS[1]
    summaries = {}
    for groups in (0, 6):
        summaries[groups] = s = train(str(tmp_path / f"g{groups}"), str(corpus), str(root / "features/train"),
                                      str(root / "llm"), [arm], steps=12, batch_size=8, lr=1e-3, warmup_steps=0, seed=0,
                                      threads=1, progress_bar=False, log_dir=str(tmp_path / f"logs{groups}"),
                                      length_groups=groups)
        assert s["steps"] == 12 and s["length_groups"] == groups and 0 <= s["pad_fraction"] < 1
        assert json.loads((tmp_path / f"g{groups}/train_summary.json").read_text())["pad_fraction"] == s["pad_fraction"]
    # two epochs of the same 48 records either way: the same real tokens, less padding when grouped
    assert summaries[6]["tokens"] == summaries[0]["tokens"] and summaries[0]["pad_fraction"] > 0.05
    assert summaries[6]["pad_fraction"] < 0.5 * summaries[0]["pad_fraction"], summaries
    with pytest.raises(ValueError, match="length_groups"):
        train(str(tmp_path / "bad"), str(corpus), str(root / "features/train"), str(root / "llm"), [arm], steps=1,
              batch_size=8, lr=1e-3, warmup_steps=0, seed=0, threads=1, progress_bar=False,
              log_dir=str(tmp_path / "logsbad"), length_groups=-1)


def test_generation_mode_decodes_and_parses_letters(setup, tmp_path):
    """answer_mode=generate: lettered prompt, greedy decoding, parse_letter; batching (left
    padding) changes nothing; the held-out loss is still the log-likelihood one."""
    from visctx.benchmarks import parse_letter, prompt_letters

    root = setup
    recs = json.loads((root / "eval.json").read_text())
    for i, r in enumerate(recs):  # prompts of different lengths, so a batch needs padding
        r["question"] = r["question"] + " , please" * (i % 3)
    evals = tmp_path / "eval.json"
    evals.write_text(json.dumps(recs))
    letters = [{"id": "l", "video": recs[0]["video"], "question": prompt_letters(recs[0]["question"], COLOURS),
                "options": [*COLOURS, "a", "b", "c", "d"], "answer": 0}]
    (tmp_path / "letters.json").write_text(json.dumps(letters))
    build_tiny_llm(tmp_path / "llm", [root / "train.json", evals, tmp_path / "letters.json"], max_frames=4,
                   hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)
    arm = ARMS[0]
    run(root, tmp_path / "model", tmp_path / "llm", [arm], 2, tmp_path / "logs")
    args = (str(tmp_path / "model"), str(evals), str(root / "features/eval"), arm)
    gen = evaluate(*args, str(tmp_path / "gen.json"), batch_size=5, answer_mode="generate", max_new_tokens=3)
    one = evaluate(*args, str(tmp_path / "one.json"), batch_size=1, answer_mode="generate", max_new_tokens=3)
    ll = evaluate(*args, str(tmp_path / "ll.json"), batch_size=5)
    assert gen["answer_mode"] == "generate" and len(gen["generations"]) == gen["n"] == 16
    assert all(g for g in gen["generations"])  # something was decoded for every item
    assert gen["generations"] == one["generations"]  # left padding and batching do not change the text
    assert gen["predictions"] == [parse_letter(t, 4) for t in gen["generations"]]
    assert gen["unparsed"] == sum(p is None for p in gen["predictions"])
    truth = [r["answer"] for r in recs]
    assert gen["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(gen["predictions"], truth)]))
    assert gen["loss"] == pytest.approx(ll["loss"]) and "generations" not in ll
    with pytest.raises(ValueError, match="answer_mode"):
        evaluate(*args, str(tmp_path / "bad.json"), answer_mode="vote")
    # the official rule reads the generated text itself, not parse_letter's reading of it
    from visctx.benchmarks import read_items, score

    items = read_items(evals)
    for mode in ("official", "lmms_eval", "strict"):
        r = evaluate(*args, str(tmp_path / f"vmme-{mode}.json"), batch_size=5, benchmark="videomme",
                     answer_mode="generate", max_new_tokens=3, scoring=mode)
        assert r["scoring"] == mode and r["official"] == score("videomme", items, r["generations"], scoring=mode)
        assert r["predictions"] == gen["predictions"] and r["score"] == r["official"]["overall"]
        assert r["ids"] == [it.id for it in items]
    with pytest.raises(ValueError, match="scoring='loose'"):
        evaluate(*args, str(tmp_path / "bad.json"), benchmark="mlvu", scoring="loose")
    # MLVU's answer outside the candidates (-1): always wrong, and no loss to take
    recs[0]["answer"] = -1
    (tmp_path / "outside.json").write_text(json.dumps(recs))
    out = evaluate(str(tmp_path / "model"), str(tmp_path / "outside.json"), str(root / "features/eval"), arm,
                   str(tmp_path / "outside-out.json"), batch_size=5)
    assert np.isfinite(out["loss"]) and out["loss"] != ll["loss"]
    assert out["accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(out["predictions"], [-1, *truth[1:]])]))
    other = {t: v for t, v in ll["per_task"].items() if t != recs[0]["task_type"]}
    assert other and all(out["per_task"][t] == v for t, v in other.items())  # other tasks' items untouched


def test_a_job_log_shows_progress_with_rate_and_time_left(setup, capfd):
    """Without a progress bar (the rules' --no-progress-bar: a job's output is its log) training
    prints a line per ~5 % of its steps: step, loss, rate, time left."""
    run(setup, "progress", setup / "llm", ARMS[:1], 20, "logs/progress")
    lines = [ln for ln in capfd.readouterr().out.splitlines() if "steps/s" in ln]
    assert len(lines) == 20 and ": step 20/20 (100 %), loss " in lines[-1], lines
    assert all(re.search(r"loss \d+\.\d{4}, \d+\.\d\d steps/s, \d+m\d\ds left$", ln) for ln in lines), lines
