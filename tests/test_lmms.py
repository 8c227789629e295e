"""Trained arms as an lmms-eval model (visctx.lmms), without downloads.

A few synthetic mp4s (the project's generator), decoded and encoded as the DAG does, two arms
trained for a few steps (one on the feature cache, one with its tower in the forward), then the
local lmms-eval task over the same items (workflow/lmms_tasks) through lmms-eval's own CLI and
``simple_evaluate``: its scores, predictions, generations and log-likelihoods must be exactly what
``visctx evaluate`` gives for the same items.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval", reason="the lmms extra: VISCTX_EXTRAS=lmms bash scripts/setup.sh")

from visctx.config import Arm  # noqa: E402
from visctx.synth import TASKS as SYNTH_TASKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "workflow" / "lmms_tasks"
FRAMES, SIZE, BATCH = 8, 54, 5
CACHE_ARM, FORWARD_ARM = Arm(2, 9, "pool"), Arm(2, 4, "sample", pooled_from=4)
N_EVAL = 3  # eval videos of the fixture corpus
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A micro study laid out like the DAG's (relative paths from its root, where every run starts)."""
    from visctx.evaluate import evaluate
    from visctx.features import build_tiny_vision_tower, encode_shard
    from visctx.pretrained import build_tiny_llm
    from visctx.synth import make_corpus, render_shard
    from visctx.train import train
    from visctx.video import extract_shard

    root = tmp_path_factory.mktemp("lmms")
    old = os.getcwd()
    os.chdir(root)
    try:
        data = Path("results/data")
        make_corpus(data / "corpus", n_train=6, n_eval=N_EVAL, seed=0, seconds=12, fps=2, size=SIZE, max_side=6)
        tower = Path("results/models/pretrained/vision")
        build_tiny_vision_tower(tower, image_size=SIZE, patch_size=2, hidden_size=16, num_layers=1, num_heads=1,
                                intermediate_size=32)
        for split in ("train", "eval"):
            render_shard(data / "corpus/videos.json", data / "videos", split, 0, 1, data / f"videos/{split}.json")
            frames, feats = data / "frames" / split, data / "features" / split
            extract_shard(data / f"corpus/{split}.json", data / "videos", 0, 1, frames / "shard-000.npy",
                          frames / "shard-000.json", fps=1.0, max_frames=FRAMES, size=SIZE)
            encode_shard(frames / "shard-000.npy", frames / "shard-000.json", tower, feats / "shard-000.npy",
                         feats / "shard-000.json")
        build_tiny_llm("results/models/pretrained/llm", [data / "corpus/train.json", data / "corpus/eval.json"],
                       max_frames=FRAMES, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                       intermediate_size=64)
        args = dict(steps=3, batch_size=4, lr=3e-3, warmup_steps=0, seed=0, threads=1, progress_bar=False)
        for arm, visual, extra in ((CACHE_ARM, "features", {}), (FORWARD_ARM, "frames", {"vision_tower": str(tower)})):
            train(f"results/arms/{arm.id}/model", str(data / "corpus/train.json"), str(data / visual / "train"),
                  "results/models/pretrained/llm", [arm], log_dir=f"results/arms/{arm.id}/train", **args, **extra)
        evals = {}
        for arm, visual in ((CACHE_ARM, "features"), (FORWARD_ARM, "frames")):
            for mode in ("loglik", "generate"):
                evals[arm.id, mode] = evaluate(f"results/arms/{arm.id}/model", str(data / "corpus/eval.json"),
                                               str(data / visual / "eval"), arm,
                                               f"results/arms/{arm.id}/eval/{mode}.json", batch_size=BATCH,
                                               answer_mode=mode)
    finally:
        os.chdir(old)
    return root, evals


def reference_logprobs(root: Path, arm: Arm, visual: str) -> np.ndarray:
    """[items, options] option log-likelihoods exactly as visctx evaluate computes them (its loader,
    its batches, the option scorer)."""
    from visctx.data import choice_loader, load_eval_records
    from visctx.features import open_store
    from visctx.model import VideoModel

    model = VideoModel.load(root / f"results/arms/{arm.id}/model").eval()
    records = load_eval_records(root / "results/data/corpus/eval.json")
    out = np.zeros((len(records), 4))
    with torch.inference_mode():
        for batch in choice_loader(records, open_store(root / f"results/data/{visual}/eval"), model.encoder, arm, BATCH):
            out[batch["index"].numpy()] = model.score_options(batch)["logprob"].numpy()
    return out


def samples_by_doc(samples: list[dict]) -> list[dict]:
    return sorted(samples, key=lambda s: s["doc_id"])


def test_lmms_eval_cli_scores_equal_visctx_evaluate(study, tmp_path):
    """`lmms-eval --model visctx` (the README's command) on the local task: the same accuracy,
    official score, per-item predictions and generations as `visctx evaluate`."""
    root, evals = study
    out = tmp_path / "out"
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    cmd = [str(Path(sys.executable).with_name("lmms-eval")), "--model", "visctx",
           "--model_args", f"pretrained=results/arms/{CACHE_ARM.id}/model",
           "--tasks", "visctx_synthetic,visctx_synthetic_gen", "--include_path", str(TASKS),
           "--batch_size", str(BATCH), "--device", "cpu", "--output_path", str(out), "--log_samples"]
    run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = sorted(out.rglob("*_results.json"))
    assert len(found) == 1, f"no results written (lmms-eval prints and swallows errors):\n{run.stdout[-3000:]}"
    results = json.loads(found[0].read_text())["results"]
    for task, mode in (("visctx_synthetic", "loglik"), ("visctx_synthetic_gen", "generate")):
        want = evals[CACHE_ARM.id, mode]
        assert results[task]["accuracy,none"] == pytest.approx(want["accuracy"], abs=1e-12)
        assert results[task]["score,none"] == pytest.approx(want["score"], abs=1e-12)
        (samples_file,) = out.rglob(f"*_samples_{task}.jsonl")
        samples = samples_by_doc([json.loads(line) for line in samples_file.read_text().splitlines()])
        assert [s["score"]["pred"] for s in samples] == want["predictions"]
        if mode == "generate":
            assert [s["filtered_resps"] for s in samples] == want["generations"]  # 0.7's jsonl: the text itself
    assert want["n"] == N_EVAL * len(SYNTH_TASKS)  # every eval record, one per (video, task)


@pytest.mark.parametrize("arm, visual", [(CACHE_ARM, "features"), (FORWARD_ARM, "frames")],
                         ids=["cached-features", "tower-in-the-forward"])
def test_loglikelihood_and_generate_until_return_what_visctx_evaluate_gives(study, arm, visual, monkeypatch,
                                                                           tmp_path):
    """Through simple_evaluate: each option's NLL is minus the option scorer's log-likelihood in
    visctx evaluate's own batches (bit for bit), so predictions and the held-out loss match; the
    greedy generations are evaluate's generations."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from visctx.lmms import VisctxArm

    root, evals = study
    for k, v in {**OFFLINE, "HF_HOME": str(root / "hf")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(root)
    lm = VisctxArm(pretrained=f"results/arms/{arm.id}/model", batch_size=BATCH, device="cpu")
    assert lm.arm == arm and lm.source.kind == ("feature" if visual == "features" else "frame")
    assert (lm.source.max_frames, lm.source.size, lm.source.fps) == (FRAMES, SIZE, 1.0)  # from the training store
    enc = lm.model.encoder  # lmms-eval drops the model's modules when it is done (lmms.clean)
    builtin = tmp_path / "builtin"  # the task with lmms-eval's own multiple-choice scoring (acc = argmin NLL)
    shutil.copytree(TASKS / "visctx_synthetic", builtin)
    (builtin / "builtin.yaml").write_text("include: _default_template_yaml\ntask: visctx_builtin_mc\n"
                                          "output_type: multiple_choice\ndoc_to_text: !function utils.doc_to_text\n"
                                          "doc_to_choice: !function utils.doc_to_choice\nmetric_list:\n"
                                          "  - metric: acc\n")
    out = simple_evaluate(model=lm, tasks=["visctx_synthetic", "visctx_synthetic_gen", "visctx_builtin_mc"],
                          log_samples=True, task_manager=TaskManager(include_path=[str(TASKS), str(builtin)]),
                          bootstrap_iters=0)
    loglik, gen = (samples_by_doc(out["samples"][t]) for t in ("visctx_synthetic", "visctx_synthetic_gen"))

    assert all(isinstance(r[0], tuple) for s in loglik for r in s["resps"])  # pairs, not their str (lmms-eval 0.7)
    nll = np.array([[r[0][0] for r in s["resps"]] for s in loglik])
    np.testing.assert_array_equal(nll, -reference_logprobs(root, arm, visual))
    want = evals[arm.id, "loglik"]
    assert nll.argmin(1).tolist() == want["predictions"]
    records = json.loads((root / "results/data/corpus/eval.json").read_text())
    tok = [len(enc.ids(r["options"][r["answer"]])) for r in records]
    loss = sum(n[r["answer"]] for n, r in zip(nll, records)) / sum(tok)
    assert loss == pytest.approx(want["loss"], rel=1e-6)
    assert out["results"]["visctx_builtin_mc"]["acc,none"] == pytest.approx(want["accuracy"], abs=1e-12)
    greedy = np.array([[r[0][1] for r in s["resps"]] for s in loglik])
    assert greedy.dtype == bool and all(g.argmax() == n.argmin() for g, n in zip(greedy, nll) if g.any())

    want = evals[arm.id, "generate"]
    assert [s["resps"][0][0] for s in gen] == want["generations"]
    assert out["results"]["visctx_synthetic_gen"]["accuracy,none"] == pytest.approx(want["accuracy"], abs=1e-12)


def test_is_greedy_of_multi_token_continuations(study, monkeypatch):
    """The multi-token path of the scorer: is_greedy is 'every token is the argmax', checked against
    the full logits of every position; the greedy 2-token continuation itself is greedy."""
    from visctx.lmms import VisctxArm, score_with_greedy

    root, _ = study
    monkeypatch.chdir(root)
    lm = VisctxArm(pretrained=f"results/arms/{CACHE_ARM.id}/model", device="cpu")
    enc, model = lm.model.encoder, lm.model
    video = str(root / "results/data/videos/eval/syn-00000.mp4")
    question = "What colour was the flash"
    prompt = enc.choice_prompt(question, ["red"], 0)
    batch = lm._batch(enc.generation_batch, [prompt], [video])
    with torch.inference_mode():
        best = model.generate(batch, max_new_tokens=2)[0]  # the greedy continuation
    assert len(best.split()) == 2
    prompts = [enc.choice_prompt(question, [best, "red blue", "green"], 0)]
    batch = lm._batch(enc.choice_batch, prompts, [video] * len(prompts))
    assert not bool(batch["single_token"])
    logprob, greedy = score_with_greedy(model, batch)
    torch.testing.assert_close(logprob, model.score_options(batch)["logprob"], rtol=0, atol=0)
    with torch.inference_mode():
        top = model.llm.get_output_embeddings()(model.hidden_states(batch)).argmax(-1)[:, :-1]
    target = batch["labels"][:, 1:]
    want = torch.zeros_like(greedy)
    for r in range(len(target)):
        on = target[r] != -100
        want[batch["row_item"][r], batch["row_option"][r]] = bool((top[r][on] == target[r][on]).all())
    assert torch.equal(greedy, want) and bool(greedy[0, 0])


def test_an_arm_probed_outside_its_setting_warns_and_cuts_the_new_context(study, monkeypatch):
    from visctx.lmms import VisctxArm

    root, _ = study
    monkeypatch.chdir(root)
    with pytest.warns(UserWarning, match=f"answering as arm T1-M4-pool, not the {CACHE_ARM.id}"):
        lm = VisctxArm(pretrained=f"results/arms/{CACHE_ARM.id}/model", T=1, M=4, device="cpu")
    assert lm.arm == Arm(1, 4, "pool")
    video = str(root / "results/data/videos/eval/syn-00000.mp4")
    assert tuple(lm.cache.get([video], lm.arm).shape) == (1, 1, 4, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trained arm, restated: no warning
        VisctxArm(pretrained=f"results/arms/{CACHE_ARM.id}/model", T=2, M=9, token_op="pool", device="cpu")


def test_bad_model_args_name_what_to_give(study, monkeypatch, tmp_path):
    from visctx.lmms import VisctxArm

    root, _ = study
    monkeypatch.chdir(root)
    model = f"results/arms/{CACHE_ARM.id}/model"
    with pytest.raises(ValueError, match="unknown frames for --model visctx"):
        VisctxArm(pretrained=model, frames=3)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        VisctxArm(pretrained=model, dtype="fp8")
    with pytest.raises(ValueError, match="no 'auto'"):
        VisctxArm(pretrained=model, batch_size="auto")
    with pytest.raises(ValueError, match="not a trained model dir"):
        VisctxArm(pretrained=str(tmp_path))
    # a model dir away from the store it was trained on: the tower and frame count must be given
    moved = tmp_path / "moved"
    shutil.copytree(model, moved)
    info = json.loads((moved / "model.json").read_text())
    (moved / "model.json").write_text(json.dumps({**info, "features_dir": "elsewhere/features"}))
    with pytest.raises(ValueError, match=r"model.json.*give vision_tower="):
        VisctxArm(pretrained=str(moved))
    with pytest.raises(ValueError, match=r"give max_frames="):
        VisctxArm(pretrained=str(moved), vision_tower="results/models/pretrained/vision")
    lm = VisctxArm(pretrained=str(moved), vision_tower="results/models/pretrained/vision", max_frames=FRAMES)
    assert (lm.source.size, lm.source.fps) == (SIZE, 1.0)  # the encoder's input size, 1 fps
    # the shared base is a mixture of arms: which one to answer as must be said
    (moved / "model.json").write_text(json.dumps({**info, "arm": "mixture"}))
    with pytest.raises(ValueError, match=r"'arm' is 'mixture'.*give T=, M="):
        VisctxArm(pretrained=str(moved))


def test_the_dag_job_and_its_table(study, monkeypatch, tmp_path, capsys):
    """`visctx lmms-eval-arm` (rule lmms_eval_arm) writes lmms-eval's scores of one task on one arm;
    `visctx lmms-table` (rule lmms_table) puts them beside the project's own score of that benchmark."""
    import pandas as pd

    from visctx.cli import run_command as main  # in this process, not through the preload server

    root, evals = study
    for k, v in {**OFFLINE, "HF_HOME": str(root / "hf")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(root)
    out = tmp_path / f"{CACHE_ARM.id}/lmms/visctx_synthetic.json"
    decoding = ["--fps", "1.0", "--max-frames", str(FRAMES), "--size", str(SIZE),
                "--vision-tower", "results/models/pretrained/vision", "--vision-layer", "-2"]
    assert main(["lmms-eval-arm", "--model-dir", f"results/arms/{CACHE_ARM.id}/model", "--task", "visctx_synthetic",
                 "--include-path", str(TASKS), "--batch-size", str(BATCH), *decoding, "--out-json", str(out)]) == 0
    r = json.loads(out.read_text())
    want = evals[CACHE_ARM.id, "loglik"]
    assert r["arm"] == r["trained_arm"] == CACHE_ARM.id and r["n_samples"] == {"visctx_synthetic": N_EVAL * len(SYNTH_TASKS)}
    assert r["results"]["visctx_synthetic"]["accuracy,none"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert r["decoding"] == {"fps": 1.0, "max_frames": FRAMES, "size": SIZE, "vision": "feature",
                             "vision_tower": "results/models/pretrained/vision"}
    assert r["lmms_eval"] == "0.7.3"

    md, csv = tmp_path / "lmms_eval.md", tmp_path / "lmms_eval.csv"
    own = f"results/arms/{CACHE_ARM.id}/eval/loglik.json"
    assert main(["lmms-table", "--jsons", str(out), "--evals", own, "--out-md", str(md), "--out-csv", str(csv)]) == 0
    rows = pd.read_csv(csv)
    assert set(rows["metric"]) >= {"accuracy", "score"} and set(rows["arm"]) == {CACHE_ARM.id}
    assert rows.set_index("metric").loc["score", "value"] == pytest.approx(want["score"], rel=1e-5)
    table = md.read_text()
    assert "visctx_score" in table and f"{want['score']:.4g}" in table and "loglik" in table

    capsys.readouterr()
    assert main(["lmms-eval-arm", "--model-dir", f"results/arms/{CACHE_ARM.id}/model", "--task", "no_such_task",
                 "--include-path", str(TASKS), *decoding, "--out-json", str(tmp_path / "x.json")]) == 1
    assert "lmms-eval has no task 'no_such_task'" in capsys.readouterr().err
