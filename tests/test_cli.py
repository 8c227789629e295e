"""The CLI is generated from typed signatures; the collect step builds the tidy table."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from visctx.cli import COMMANDS, build_parser, main
from visctx.collect import collect
from visctx.config import Arm


def example(out_dir: str, arms: list[Arm], steps: int = 3, lr: float = 1e-3, flag: bool = True,
            note: str | None = None, cfg: dict | None = None) -> dict:
    """Example entry point."""
    return {}


def test_parser_follows_the_signature():
    ns = build_parser("x", example).parse_args(
        ["--out-dir", "o", "--arms", "T4-M9-pool", "T8-M4-pool-tpool2", "--steps", "5", "--no-flag",
         "--cfg", '{"a": 1}'])
    assert ns.out_dir == "o" and ns.steps == 5 and ns.lr == 1e-3 and ns.flag is False and ns.note is None
    assert ns.arms == [Arm(4, 9, "pool"), Arm(8, 4, "pool", 2)] and ns.cfg == {"a": 1}
    with pytest.raises(SystemExit):
        build_parser("x", example).parse_args(["--steps", "5"])  # --out-dir and --arms are required


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_resolves_to_a_typed_function(name):
    import importlib

    module, func, _ = COMMANDS[name]
    build_parser(name, getattr(importlib.import_module(module), func))


def test_errors_are_one_line_and_exit_nonzero(capsys):
    assert main(["check", "--params", "does-not-exist.yaml"]) == 1
    assert "does-not-exist.yaml" in capsys.readouterr().err
    assert main(["no-such-command"]) == 2


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "visctx", "check"], cwd=Path(__file__).parents[1],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["n_arms"] > 40


def _eval(path: Path, arm: str, loss: float) -> str:
    path.write_text(json.dumps({"arm": arm, "benchmark": "synthetic", "n": 10, "loss": loss, "accuracy": 0.5,
                                "per_task": {"needle": {"n": 5, "loss": loss, "accuracy": 0.4}}}))
    return str(path)


def test_collect_builds_the_tidy_table(tmp_path):
    studies = {"tokens": {"frames": 2, "tokens": [1, 9], "methods": ["pool"]},
               "frames": {"tokens": 9, "token_method": "pool", "frames": [2, 4], "methods": ["sample"], "pool_source": 4}}
    evals = [_eval(tmp_path / f"{a}.json", a, 1.0 + i) for i, a in enumerate(["T2-M1-pool", "T2-M9-pool", "T4-M9-pool"])]
    summary = collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))
    assert summary == {"arms": 3, "rows": 3, "design_points": 4}
    arms = pd.read_csv(tmp_path / "arms.csv")
    assert list(arms.columns[:7]) == ["arm", "T", "M", "token_op", "frame_op", "time_kernel", "tokens"]
    assert arms.set_index("arm").loc["T4-M9-pool", "tokens"] == 36
    assert "acc_needle" in arms.columns
    design = pd.read_csv(tmp_path / "design.csv")
    assert (design["arm"] == "T2-M9-pool").sum() == 2  # shared by both studies, evaluated once


def test_collect_names_a_missing_arm(tmp_path):
    studies = {"tokens": {"frames": 2, "tokens": [1, 9], "methods": ["pool"]}}
    evals = [_eval(tmp_path / "a.json", "T2-M1-pool", 1.0)]
    with pytest.raises(ValueError, match="T2-M9-pool"):
        collect(evals, studies, str(tmp_path / "arms.csv"), str(tmp_path / "design.csv"))
