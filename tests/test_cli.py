"""The CLI is generated from typed signatures, each option helped by its docstring; the collect
step builds the tidy table."""

import ast
import collections.abc
import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Literal, Optional, Sequence

import pandas as pd
import pytest

from visctx import cli
from visctx.cli import COMMANDS, build_parser, main, parse_docstring
from visctx.collect import collect
from visctx.config import Arm

SRC = Path(__file__).parents[1] / "src" / "visctx"


def conforms(value, tp) -> bool:
    """Whether ``value`` is of annotation ``tp`` (unions, literals, typed collections)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if tp is None or tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is Literal:
        return value in args and type(value) in {type(a) for a in args}
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin is not None:
        if not isinstance(value, origin):
            return False
        if issubclass(origin, collections.abc.Mapping):
            return not args or all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
        return not args or all(conforms(v, args[0]) for v in value)
    if tp is float:
        return type(value) is float
    if tp is int:
        return type(value) is int
    return isinstance(value, tp)


def parse(name: str, argv: list[str]) -> dict:
    module, func, _ = COMMANDS[name]
    return vars(build_parser(name, getattr(importlib.import_module(module), func)).parse_args(argv))


A, B = Arm(4, 9, "pool"), Arm(8, 4, "pool", 16)
PF = {"user_prefix": "<|im_start|>user\n", "frame_label": "frame {i}:"}
# A realistic call of every command (as the rules make it) and what it must parse to.
CALLS: dict[str, tuple[list[str], dict]] = {
    "check": (["--params", "params.yaml"], {"params": "params.yaml"}),
    "synth": (["--out-dir", "d/corpus", "--n-train", "600", "--n-eval", "200", "--seconds", "32", "--fps", "2",
               "--size", "108", "--max-side", "6", "--seed", "0", "--tasks", "needle", "count"],
              {"out_dir": "d/corpus", "n_train": 600, "n_eval": 200, "seconds": 32, "fps": 2, "size": 108, "max_side": 6,
               "seed": 0, "tasks": ["needle", "count"]}),
    "render": (["--videos-json", "v.json", "--video-root", "d/videos", "--split", "train", "--shard", "3",
                "--n-shards", "8", "--manifest-out", "m.json", "--crf", "18"],
               {"videos_json": "v.json", "video_root": "d/videos", "split": "train", "shard": 3, "n_shards": 8,
                "manifest_out": "m.json", "crf": 18}),
    "extract": (["--corpus-json", "c.json", "--video-root", "d/videos", "--shard", "0", "--n-shards", "4", "--fps",
                 "1.0", "--max-frames", "32", "--size", "54", "--out-npy", "f.npy", "--out-json", "f.json"],
                {"corpus_json": "c.json", "video_root": "d/videos", "shard": 0, "n_shards": 4, "fps": 1.0,
                 "max_frames": 32, "size": 54, "out_npy": "f.npy", "out_json": "f.json"}),
    "quarantine-split": (["--frames-jsons", "a.json", "b.json", "--split", "eval", "--max-quarantined", "0.05",
                          "--out-json", "q.json"],
                         {"frames_jsons": ["a.json", "b.json"], "split": "eval", "max_quarantined": 0.05,
                          "out_json": "q.json"}),
    "quarantine-report": (["--split-jsons", "t.json", "e.json", "--out-json", "r.json", "--out-tsv", "r.tsv"],
                          {"split_jsons": ["t.json", "e.json"], "out_json": "r.json", "out_tsv": "r.tsv"}),
    "init-vision": (["--out-dir", "vision", "--image-size", "54", "--patch-size", "2", "--hidden-size", "16",
                     "--num-layers", "1", "--num-heads", "1", "--intermediate-size", "32", "--seed", "0"],
                    {"out_dir": "vision", "image_size": 54, "patch_size": 2, "hidden_size": 16, "num_layers": 1,
                     "num_heads": 1, "intermediate_size": 32, "seed": 0}),
    "init-llm": (["--out-dir", "llm", "--corpus-jsons", "train.json", "eval.json", "--max-frames", "32",
                  "--hidden-size", "64", "--num-kv-heads", "2", "--initializer-range", "0.1", "--seed", "0"],
                 {"out_dir": "llm", "corpus_jsons": ["train.json", "eval.json"], "max_frames": 32, "hidden_size": 64,
                  "num_kv_heads": 2, "initializer_range": 0.1, "seed": 0}),
    "benchmark-items": (["--benchmark", "mlvu", "--annotations", "MLVU dev.json", "--video-root", "data/mlvu",
                         "--out-json", "items.json"],
                        {"benchmark": "mlvu", "annotations": "MLVU dev.json", "video_root": "data/mlvu",
                         "out_json": "items.json"}),
    "encode": (["--frames-npy", "f.npy", "--frames-json", "f.json", "--vision-tower", "vision", "--layer", "-2",
                "--batch-size", "64", "--threads", "2", "--out-npy", "e.npy", "--out-json", "e.json"],
               {"frames_npy": "f.npy", "frames_json": "f.json", "vision_tower": "vision", "layer": -2,
                "batch_size": 64, "threads": 2, "out_npy": "e.npy", "out_json": "e.json"}),
    "train": (["--out-dir", "base", "--train-json", "t.json", "--features-dir", "feat", "--init", "llm", "--arms",
               "T4-M9-pool", "T8-M4-pool-from16", "--steps", "600", "--batch-size", "16", "--lr", "1e-3",
               "--warmup-steps", "30", "--weight-decay", "0.01", "--length-groups", "50", "--strategy", "deepspeed",
               "--zero-stage", "3", "--offload-params", "--no-gradient-checkpointing", "--seed", "0", "--threads",
               "2", "--prompt-format", json.dumps(PF), "--log-dir", "logs", "--no-progress-bar"],
              {"out_dir": "base", "train_json": "t.json", "features_dir": "feat", "init": "llm", "arms": [A, B],
               "steps": 600, "batch_size": 16, "lr": 1e-3, "warmup_steps": 30, "weight_decay": 0.01,
               "length_groups": 50, "strategy": "deepspeed", "zero_stage": 3, "offload_params": True,
               "gradient_checkpointing": False, "seed": 0, "threads": 2, "prompt_format": PF, "log_dir": "logs",
               "progress_bar": False}),
    "train-arms": (["--arms", "T8-M4-pool-from16", "--arms-dir", "arms", "--train-json", "t.json", "--features-dir",
                    "frames", "--init", "base", "--vision-tower", "vision", "--vision-layer", "-1",
                    "--vision-trainable", "--steps", "40", "--batch-size", "8", "--lr", "5e-4", "--warmup-steps", "0",
                    "--seed", "1", "--threads", "1", "--prompt-format", "{}", "--no-progress-bar"],
                   {"arms": [B], "arms_dir": "arms", "train_json": "t.json", "features_dir": "frames", "init": "base",
                    "vision_tower": "vision", "vision_layer": -1, "vision_trainable": True, "steps": 40,
                    "batch_size": 8, "lr": 5e-4, "warmup_steps": 0, "seed": 1, "threads": 1, "prompt_format": {},
                    "progress_bar": False}),
    "collate": (["--ckpt-dir", "logs/last.ckpt", "--out-dir", "model", "--init", "Qwen/Qwen2-7B", "--prompt-format",
                 json.dumps(PF), "--tag", "global_step600"],
                {"ckpt_dir": "logs/last.ckpt", "out_dir": "model", "init": "Qwen/Qwen2-7B", "prompt_format": PF,
                 "tag": "global_step600"}),
    "evaluate": (["--model-dir", "m", "--eval-json", "e.json", "--features-dir", "feat", "--arm", "T4-M9-pool",
                  "--out-json", "o.json", "--answer-mode", "generate", "--max-new-tokens", "4"],
                 {"model_dir": "m", "eval_json": "e.json", "features_dir": "feat", "arm": A, "out_json": "o.json",
                  "answer_mode": "generate", "max_new_tokens": 4}),
    "evaluate-arms": (["--arms", "T4-M9-pool", "--arms-dir", "arms", "--eval-json", "e.json", "--features-dir",
                       "feat", "--benchmark", "videomme", "--batch-size", "32", "--threads", "2"],
                      {"arms": [A], "arms_dir": "arms", "eval_json": "e.json", "features_dir": "feat",
                       "benchmark": "videomme", "batch_size": 32, "threads": 2}),
    "niah": (["--arms", "T4-M9-pool", "T8-M4-pool-from16", "--arms-dir", "arms", "--eval-json", "e.json",
              "--videos-json", "v.json", "--features-dir", "feat", "--extract-fps", "1.0", "--depths", "0", "50",
              "100", "--batch-size", "32", "--threads", "2", "--out-csv", "n.csv", "--out-png", "n.png"],
             {"arms": [A, B], "arms_dir": "arms", "eval_json": "e.json", "videos_json": "v.json",
              "features_dir": "feat", "extract_fps": 1.0, "depths": [0, 50, 100], "batch_size": 32, "threads": 2,
              "out_csv": "n.csv", "out_png": "n.png"}),
    "score-results": (["--benchmark", "vnbench", "--path", "results.jsonl", "--rule", "eval.py"],
                      {"benchmark": "vnbench", "path": "results.jsonl", "rule": "eval.py"}),
    "niah-summary": (["--csvs", "s0.csv", "s1.csv", "--out-csv", "n.csv", "--out-png", "n.png"],
                     {"csvs": ["s0.csv", "s1.csv"], "out_csv": "n.csv", "out_png": "n.png"}),
    "ceiling": (["--videos-json", "v.json", "--eval-json", "e.json", "--studies", '{"tokens": {"frames": 2}}',
                 "--extract-fps", "1.0", "--max-frames", "32", "--threshold", "0.3", "--out-csv", "c.csv"],
                {"videos_json": "v.json", "eval_json": "e.json", "studies": {"tokens": {"frames": 2}},
                 "extract_fps": 1.0, "max_frames": 32, "threshold": 0.3, "out_csv": "c.csv"}),
    "ceiling-check": (["--arms-csv", "arms.csv", "--ceiling-csv", "c.csv", "--out-dir", "t"],
                      {"arms_csv": "arms.csv", "ceiling_csv": "c.csv", "out_dir": "t"}),
    "collect": (["--evals", "a.json", "b.json", "--studies", '{"tokens": {"frames": 2}}', "--out-arms", "arms.csv",
                 "--out-design", "design.csv", "--out-videos", "videos.csv"],
                {"evals": ["a.json", "b.json"], "studies": {"tokens": {"frames": 2}}, "out_arms": "arms.csv",
                 "out_design": "design.csv", "out_videos": "videos.csv"}),
    "fits": (["--arms-csv", "arms.csv", "--design-csv", "design.csv", "--budget", "6000", "--n-boot", "200",
              "--seed", "0", "--t-max", "32", "--workers", "2", "--out-json", "fits.json", "--strict",
              "--videos-csv", "videos.csv"],
             {"arms_csv": "arms.csv", "design_csv": "design.csv", "budget": 6000, "n_boot": 200, "seed": 0,
              "t_max": 32, "workers": 2, "out_json": "fits.json", "strict": True, "videos_csv": "videos.csv"}),
    "optimum": (["--fits", "fits.json", "--budget", "6000", "--method", "sample", "--as-json", "--form",
                 "joint_nooffset"],
                {"fits": "fits.json", "budget": 6000, "method": "sample", "as_json": True, "form": "joint_nooffset"}),
    "throughput": (["--llm", "Qwen/Qwen2-7B", "--T", "32", "--M", "49", "--batch-size", "2", "--device", "cuda",
                    "--dtype", "bf16", "--gradient-checkpointing", "--peak-tflops", "989.5", "--out-json", "t.json"],
                   {"llm": "Qwen/Qwen2-7B", "T": 32, "M": 49, "batch_size": 2, "device": "cuda", "dtype": "bf16",
                    "gradient_checkpointing": True, "peak_tflops": 989.5, "out_json": "t.json"}),
    "method-costs": (["--llm", "llm", "--T", "8", "--M", "49", "--ratio", "4", "--window", "392", "--methods", "mask",
                      "summary", "--no-isolate", "--threads", "2", "--out-json", "m.json"],
                     {"llm": "llm", "T": 8, "M": 49, "ratio": 4, "window": 392, "methods": ["mask", "summary"],
                      "isolate": False, "threads": 2, "out_json": "m.json"}),
    "study-method-costs": (["--params", "p.yaml", "--llm", "llm", "--steps", "3", "--out-json", "m.json"],
                           {"params": "p.yaml", "llm": "llm", "steps": 3, "out_json": "m.json"}),
    "padding": (["--train-json", "t.json", "--llm", "llm", "--arms", "T4-M9-pool", "--length-groups", "0", "50",
                 "--prompt-format", json.dumps(PF)],
                {"train_json": "t.json", "llm": "llm", "arms": [A], "length_groups": [0, 50], "prompt_format": PF}),
    "tables": (["--arms-csv", "a.csv", "--design-csv", "d.csv", "--fits-json", "f.json", "--out-dir", "tables"],
               {"arms_csv": "a.csv", "design_csv": "d.csv", "fits_json": "f.json", "out_dir": "tables"}),
    "figures": (["--arms-csv", "a.csv", "--design-csv", "d.csv", "--fits-json", "f.json", "--out-dir", "figures"],
                {"arms_csv": "a.csv", "design_csv": "d.csv", "fits_json": "f.json", "out_dir": "figures"}),
    "metrics": (["--arms-csv", "a.csv", "--design-csv", "d.csv", "--fits-json", "f.json", "--out-json", "m.json",
                 "--full-json", "f.json"],
                {"arms_csv": "a.csv", "design_csv": "d.csv", "fits_json": "f.json", "out_json": "m.json",
                 "full_json": "f.json"}),
    "benchmark-scores": (["--evals", "a.json", "b.json", "--items-jsons", "eval.json", "mlvu.json", "--out-csv", "s.csv",
                          "--n-boot", "500", "--seed", "1"],
                         {"evals": ["a.json", "b.json"], "items_jsons": ["eval.json", "mlvu.json"], "out_csv": "s.csv",
                          "n_boot": 500, "seed": 1}),
    "lmms-eval-arm": (["--model-dir", "m", "--task", "videomme", "--include-path", "workflow/lmms_tasks", "--fps", "1.0",
                       "--max-frames", "32", "--limit", "8", "--out-json", "o.json"],
                      {"model_dir": "m", "task": "videomme", "include_path": "workflow/lmms_tasks", "fps": 1.0,
                       "max_frames": 32, "limit": 8, "out_json": "o.json"}),
    "lmms-table": (["--jsons", "a.json", "--evals", "e.json", "--out-md", "t.md", "--out-csv", "t.csv"],
                   {"jsons": ["a.json"], "evals": ["e.json"], "out_md": "t.md", "out_csv": "t.csv"}),
    "compare-runs": (["--old", "old.csv", "--new", "arms.csv", "--benchmark", "mlvu"],
                     {"old": "old.csv", "new": "arms.csv", "benchmark": "mlvu"}),
    "curves": (["--models", "a/model", "b/model", "--out-csv", "c.csv"], {"models": ["a/model", "b/model"], "out_csv": "c.csv"}),
    "params": (["--params", "p.yaml", "--out-dir", "results/params"], {"params": "p.yaml", "out_dir": "results/params"}),
    "readme": (["--readme", "README.md", "--root", ".", "--check"], {"readme": "README.md", "root": ".", "check": True}),
    "fresh-clone-check": (["--out-dir", "results/perf", "--repo", ".", "--commands", "bash scripts/run.sh"],
                          {"out_dir": "results/perf", "repo": ".", "commands": ["bash scripts/run.sh"]}),
    "temp-experiment": (["--out-dir", "results/perf", "--repo", "."], {"out_dir": "results/perf", "repo": "."}),
    "study-cost": (["--repo", "clone", "--no-write"], {"repo": "clone", "out_dir": "results/perf", "write": False}),
    "finetune-budget": (["--arms", "T4-M4-pool", "--steps", "10", "30", "--lr", "0.003", "--seeds", "0", "1", "--jobs", "1"],
                        {"arms": ["T4-M4-pool"], "steps": [10, 30], "lr": 0.003, "seeds": [0, 1], "jobs": 1}),
    "noise-split": (["--bases", "0", "2", "--finetune-seeds", "101", "--jobs", "1"],
                    {"bases": [0, 2], "finetune_seeds": [101], "jobs": 1}),
    "search-attention": (["--probes", "T32-M4-pool:needle", "--seeds", "0", "1", "--repo", "clone"],
                         {"probes": ["T32-M4-pool:needle"], "seeds": [0, 1], "repo": "clone"}),
    "perf": (["--out-dir", "results/perf", "--repo", ".", "--no-fresh", "--keep"],
             {"out_dir": "results/perf", "repo": ".", "fresh": False, "keep": True}),
}


def test_the_registry_is_what_its_annotation_says():
    hint = eval(cli.__annotations__["COMMANDS"], vars(cli))  # noqa: S307 - our own annotation
    assert conforms(COMMANDS, hint) and set(CALLS) == set(COMMANDS)  # a new command needs a call here


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_parses_a_real_call(name):
    """Each given option arrives as its value, of its annotation's type; the others are the defaults.
    An options object (``train``'s TrainOptions) arrives built, each field an option of its own."""
    argv, want = CALLS[name]
    module, func, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module), func)
    hints, params = typing.get_type_hints(func), inspect.signature(func).parameters
    got = cli.parse_command(name, func, argv)
    assert set(got) == {k for k, p in params.items() if p.kind is not p.VAR_KEYWORD}
    defaults = {k: p.default for k, p in params.items()}
    for pname, cls in cli._options_params(func).items():
        assert isinstance(got[pname], cls), (pname, got[pname])
        hints |= typing.get_type_hints(cls)
        defaults |= {f.name: f.default for f in dataclasses.fields(cls)}
        got |= dataclasses.asdict(got.pop(pname))
    for key, value in got.items():
        if key in want:
            assert value == want[key] and conforms(value, hints[key]), (key, value, hints[key])
        else:
            assert value == defaults[key], key


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_of_every_command_shows_the_help_of_its_options(name, capsys):
    module, func, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module), func)
    _, helps = parse_docstring(inspect.getdoc(func))
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    shown = "".join(capsys.readouterr().out.split())  # argparse rewraps the text
    options = cli._options_params(func)
    names = [p for p, v in inspect.signature(func).parameters.items() if p not in options and v.kind is not v.VAR_KEYWORD]
    for cls in options.values():  # an options object's fields are helped by its own Args
        names += [f.name for f in dataclasses.fields(cls)]
        helps |= parse_docstring(inspect.getdoc(cls))[1]
    for pname in names:
        assert helps.get(pname), f"{name}: --{pname.replace('_', '-')} has no entry in {func.__name__}'s Args"
        assert f"--{pname.replace('_', '-')}" in shown
        assert "".join(helps[pname].split()) in shown, pname


def test_a_list_option_runs_end_to_end(tmp_path):
    """`visctx synth --tasks needle count` (a Sequence[str]) asks only those tasks."""
    assert main(["synth", "--out-dir", str(tmp_path), "--n-train", "1", "--n-eval", "1", "--seconds", "16",
                 "--seed", "0", "--tasks", "needle", "count"]) == 0
    records = json.loads((tmp_path / "train.json").read_text())
    assert sorted(r["task_type"] for r in records) == ["count", "needle"]


def example(out_dir: str | os.PathLike, arms: list[Arm], names: Sequence[str], sizes: tuple[int, ...],
            pair: tuple[int, str], ids: set[int], steps: int = 3, lr: float = 1e-3, flag: bool = True,
            maybe: Optional[bool] = None, note: str | None = None, limit: Optional[int] = None,
            mode: Literal["fast", "exact"] = "fast", level: Literal[1, 2] = 1, cfg: dict | None = None,
            arm: Arm | None = None, where: Path = Path("."), depths: list[int] | None = None, bare: tuple = (),
            tags: list = ()) -> dict:
    """Example entry point.

    Args:
        out_dir: where it goes.
        arms, names: several of them.
        sizes: any number of ints; the help goes on
            over two lines.
        pair (tuple[int, str]): a typed pair.
    Returns:
        nothing of note.
    """
    return {}


def test_every_kind_of_annotation_parses():
    ns = vars(build_parser("x", example).parse_args(
        ["--out-dir", "o", "--arms", "T4-M9-pool", "T8-M4-pool-from16", "--names", "a", "b", "--sizes", "1", "2", "3",
         "--pair", "7", "x", "--ids", "2", "1", "2", "--steps", "5", "--no-flag", "--maybe", "--limit", "4",
         "--mode", "exact", "--level", "2", "--cfg", '{"a": 1}', "--arm", "T4-M9-pool", "--where", "w",
         "--depths", "0", "100", "--bare", "p", "q", "--tags", "t"]))
    assert ns == {"out_dir": "o", "arms": [A, B], "names": ["a", "b"], "sizes": (1, 2, 3), "pair": (7, "x"),
                  "ids": {1, 2}, "steps": 5, "lr": 1e-3, "flag": False, "maybe": True, "note": None, "limit": 4,
                  "mode": "exact", "level": 2, "cfg": {"a": 1}, "arm": A, "where": Path("w"), "depths": [0, 100],
                  "bare": ("p", "q"), "tags": ["t"]}
    hints = typing.get_type_hints(example)
    assert all(conforms(v, hints[k]) for k, v in ns.items() if v is not None), ns
    defaults = vars(build_parser("x", example).parse_args(
        ["--out-dir", "o", "--arms", "T4-M9-pool", "--names", "a", "--sizes", "1", "--pair", "1", "y", "--ids", "1"]))
    assert defaults["flag"] is True and defaults["maybe"] is None and defaults["mode"] == "fast"


@pytest.mark.parametrize("bad", [["--steps", "5"],  # --out-dir, --arms, ... are required
                                 ["--mode", "slow"], ["--level", "3"], ["--arm", "T4-pool"], ["--cfg", "[1]"],
                                 ["--cfg", "{"], ["--pair", "x", "y"], ["--pair", "1"], ["--sizes", "a"]])
def test_a_bad_value_is_a_usage_error(bad, capsys):
    required = ["--out-dir", "o", "--arms", "T4-M9-pool", "--names", "a", "--sizes", "1", "--pair", "1", "y",
                "--ids", "1"]
    with pytest.raises(SystemExit) as e:
        build_parser("x", example).parse_args((required if bad[0] != "--steps" else []) + bad)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_options_get_their_help_from_the_docstring():
    prose, helps = parse_docstring(inspect.getdoc(example))
    assert prose == "Example entry point.\n\nReturns:\n    nothing of note."  # Args is left out, the rest kept
    assert helps == {"out_dir": "where it goes.", "arms": "several of them.", "names": "several of them.",
                     "sizes": "any number of ints; the help goes on over two lines.", "pair": "a typed pair."}
    text = " ".join(build_parser("x", example).format_help().split())
    assert "--sizes SIZES [SIZES ...] any number of ints; the help goes on over two lines. (required)" in text
    assert "--steps STEPS (default: 3)" in text and "--flag, --no-flag (default: True)" in text
    assert "--mode {fast,exact} (default: fast)" in text


def test_the_preload_server_does_not_import_the_cli():
    """cli -> preload only: the CLI names the server's entry point, the server imports it by name."""
    tree = ast.parse((SRC / "preload.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
               [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m == "visctx" or m.startswith("visctx.")], imported


def test_errors_are_one_line_and_exit_nonzero(capsys):
    assert main(["check", "--params", "does-not-exist.yaml"]) == 1
    assert "does-not-exist.yaml" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "visctx", "check"], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["n_arms"] > 40


def _eval(path: Path, arm: str, loss: float, seed: int = 0) -> str:
    path.write_text(json.dumps({"arm": arm, "seed": seed, "benchmark": "synthetic", "n": 10, "loss": loss,
                                "accuracy": 0.5, "per_task": {"needle": {"n": 5, "loss": loss, "accuracy": 0.4}},
                                "videos": {"v0": [6, 6 * loss, 6, 3], "v1": [4, 4 * loss, 4, 2]}}))
    return str(path)


def test_collect_builds_the_tidy_table(tmp_path):
    studies = {"tokens": {"frames": 2, "tokens": [1, 9], "methods": ["pool"]},
               "frames": {"tokens": 9, "token_method": "pool", "frames": [2, 4], "methods": ["sample"], "pool_source": 4}}
    evals = [_eval(tmp_path / f"{a}-{s}.json", a, 1.0 + i + s / 10, seed=s)
             for i, a in enumerate(["T2-M1-pool", "T2-M9-pool", "T4-M9-pool"]) for s in (0, 1)]
    summary = collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"),
                      str(tmp_path / "videos.csv"))
    assert summary == {"arms": 3, "seeds": [0, 1], "rows": 6, "design_points": 4}
    arms = pd.read_csv(tmp_path / "arms.csv")
    assert list(arms.columns[:8]) == ["arm", "T", "M", "token_op", "frame_op", "pooled_from", "tokens", "seed"]
    assert arms.set_index(["arm", "seed"]).loc[("T4-M9-pool", 1), "loss"] == pytest.approx(3.1)
    assert "acc_needle" in arms.columns
    assert arms["steps"].isna().all()  # these records name no model dir
    design = pd.read_csv(tmp_path / "design.csv")
    assert (design["arm"] == "T2-M9-pool").sum() == 2  # shared by both studies, evaluated once
    videos = pd.read_csv(tmp_path / "videos.csv")
    assert len(videos) == 3 * 2 * 2 and list(videos.columns) == ["arm", "seed", "benchmark", "video", "n", "nll",
                                                                 "ntok", "correct"]
    # an arm missing one seed is refused (the replicates must be the same for every arm)
    with pytest.raises(ValueError, match="different seeds"):
        collect(evals[:-1], studies, str(tmp_path / "a2.csv"), str(tmp_path / "d2.csv"))


def test_collect_records_each_arms_fine_tune_steps(tmp_path):
    """`steps`: the budget the scored model was trained with (its train_summary.json), per row."""
    studies = {"tokens": {"frames": 2, "tokens": [1, 9], "methods": ["pool"]}}
    evals = []
    for arm, steps in [("T2-M1-pool", 100), ("T2-M9-pool", 250)]:
        model = tmp_path / arm / "model"
        model.mkdir(parents=True)
        (model / "train_summary.json").write_text(json.dumps({"steps": steps, "final_loss": 1.0}))
        rec = json.loads(Path(_eval(tmp_path / f"{arm}.json", arm, 1.0)).read_text()) | {"model_dir": str(model)}
        (tmp_path / f"{arm}.json").write_text(json.dumps(rec))
        evals.append(str(tmp_path / f"{arm}.json"))
    collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))
    arms = pd.read_csv(tmp_path / "arms.csv").set_index("arm")
    assert arms.loc["T2-M1-pool", "steps"] == 100 and arms.loc["T2-M9-pool", "steps"] == 250
    (tmp_path / "T2-M9-pool/model/train_summary.json").write_text("{}")
    with pytest.raises(ValueError, match=r"T2-M9-pool/model/train_summary.json: not a training summary"):
        collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))


def test_collect_names_a_missing_arm(tmp_path):
    studies = {"tokens": {"frames": 2, "tokens": [1, 9], "methods": ["pool"]}}
    evals = [_eval(tmp_path / "a.json", "T2-M1-pool", 1.0)]
    with pytest.raises(ValueError, match="T2-M9-pool"):
        collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))
