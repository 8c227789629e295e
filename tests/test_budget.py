"""The fine-tune budget per arm (visctx.budget): its rule, the options it hands a training command,
and where the params accept it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from visctx.budget import arm_options, arm_steps
from visctx.cli import build_parser, option_args
from visctx.config import ParamsError, load_params, study_points, unique_arms, validate
from visctx.train import train_arms

ROOT = Path(__file__).resolve().parents[1]
RULE = {"steps": 100, "token_steps": 4, "max_steps": 500, "batch_size": 20, "lr": 1e-3, "warmup_steps": 10}


def test_the_budget_grows_with_the_visual_tokens_between_its_floor_and_its_cap():
    assert arm_steps("T1-M1-pool", RULE) == 100  # 4 tokens' worth is below the floor
    assert arm_steps("T1-M36-pool", RULE) == 144
    assert arm_steps("T1-M81-sample", RULE) == 324
    assert arm_steps("T32-M4-pool", RULE) == 500  # 512, capped
    assert arm_steps("T32-M4-pool", {**RULE, "max_steps": None}) == 512
    assert arm_steps("T1-M49-pool", {**RULE, "token_steps": 2.5}) == 123  # ceil(122.5)


def test_summary_arms_are_budgeted_by_the_tokens_the_text_attends_to():
    # T8-M16 summarised 4:1 keeps 32 of its 128 raw tokens: the window it spends is 32
    assert arm_steps("T8-M16-pool-vst4w16", {**RULE, "max_steps": None}) == 128
    assert arm_steps("T8-M4-pool", {**RULE, "max_steps": None}) == 128


def test_without_token_steps_every_arm_gets_the_same_steps_as_in_the_paper():
    cfg = load_params(ROOT / "params.yaml", overrides={"preset": "paper", "results": "results-paper"})
    arm = cfg["train"]["arm"]
    assert arm["token_steps"] == 0
    arms = unique_arms(study_points(cfg["studies"]))
    assert {arm_steps(a, arm) for a in arms} == {arm["steps"]}


def test_arms_of_one_window_get_one_budget_whatever_their_split():
    cfg = load_params(ROOT / "params.yaml")
    by_tokens: dict[int, set[int]] = {}
    for a in unique_arms(study_points(cfg["studies"])):
        by_tokens.setdefault(a.kept_tokens, set()).add(arm_steps(a, {**RULE, "max_steps": None}))
    assert all(len(s) == 1 for s in by_tokens.values())
    assert len(by_tokens) > 1


def test_an_arms_options_are_what_the_training_command_parses():
    parser = build_parser("train-arms", train_arms)
    required = ["--arms", "T3-M49-pool", "--arms-dir", "a", "--train-json", "t.json", "--features-dir", "f",
                "--init", "i", "--seed", "0", "--threads", "1"]
    options = arm_options("T3-M49-pool", RULE)
    assert options["steps"] == 500 and "token_steps" not in options and "max_steps" not in options
    parsed = parser.parse_args([*required, *option_args(options)])
    assert parsed.steps == 500 and parsed.batch_size == 20
    with pytest.raises(SystemExit):  # train.arm as it stands is not a training command's options
        parser.parse_args([*required, *option_args(RULE)])


def test_the_params_accept_the_rule_on_the_fine_tune_only():
    params = load_params(ROOT / "params.yaml")
    good = copy.deepcopy(params)
    good["train"]["arm"].update(token_steps=4, max_steps=500)
    validate(good)
    bad = copy.deepcopy(params)
    bad["train"]["base"]["token_steps"] = 4
    with pytest.raises(ParamsError, match=r"train\.base: .*.token_steps. was unexpected"):
        validate(bad)
    bad = copy.deepcopy(params)
    bad["train"]["arm"]["max_steps"] = 0
    with pytest.raises(ParamsError, match=r"train\.arm\.max_steps"):
        validate(bad)
