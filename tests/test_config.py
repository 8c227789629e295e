"""params.yaml: every shipped config is valid, bad values are named, studies expand to unique arms."""

import difflib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from visctx.config import (Arm, ParamsError, deep_merge, load_params, raw_params, resolve_preset, study_points,
                           unique_arms, validate)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def raw():
    return raw_params(PARAMS)


@pytest.mark.parametrize("preset", ["embedded", "paper"])
def test_every_shipped_preset_is_valid(preset):
    p = load_params(PARAMS, {"preset": preset})
    assert p["preset"] == preset
    points = study_points(p["studies"])
    assert {pt.study for pt in points} == {"tokens", "frames", "joint", "window", "methods"}


def test_the_embedded_default_keeps_the_papers_design():
    p = load_params(PARAMS)
    s = p["studies"]
    assert len(s["tokens"]["tokens"]) == 9 and len(s["frames"]["frames"]) == 8
    assert set(s["tokens"]["methods"]) == {"sample", "pool", "mask"} and set(s["frames"]["methods"]) == {"sample", "pool", "mask"}
    assert len(s["joint"]["tokens"]) * len(s["joint"]["frames"]) >= 8
    assert len(s["window"]["combos"]) == 5


def test_paper_preset_values():
    p = load_params(PARAMS, {"preset": "paper"})
    assert p["studies"]["tokens"]["frames"] == 32 and p["studies"]["frames"]["tokens"] == 49
    assert p["studies"]["frames"]["frames"] == [1, 8, 16, 32, 48, 64, 96, 128]
    assert p["model"]["llm"] == "Qwen/Qwen2-7B"
    assert all(T * M <= 6000 for T, M in p["studies"]["window"]["combos"])


@pytest.mark.parametrize("preset, groups", [("embedded", 0), ("paper", 50)])
def test_the_train_rules_options_reach_the_commands(preset, groups):
    """workflow/rules/train.smk passes train.base (less ``arms``) to `visctx train` and train.arm (as
    one arm's options: visctx.budget) to `visctx train-arms` as options (common.smk's cli_options):
    each must be an option of its command."""
    from visctx.budget import arm_options
    from visctx.cli import build_parser
    from visctx.train import train, train_arms

    p = load_params(PARAMS, {"preset": preset})
    common = ["--train-json", "t", "--features-dir", "f", "--init", "i", "--arms", "T1-M1-pool", "--seed", "0",
              "--threads", "1"]
    base = {k: v for k, v in p["train"]["base"].items() if k != "arms"}
    for name, func, fixed, options in [("train", train, ["--out-dir", "o", "--log-dir", "l"], base),
                                       ("train-arms", train_arms, ["--arms-dir", "a"], arm_options("T1-M1-pool", p["train"]["arm"]))]:
        flags = [x for k, v in options.items() for x in (  # as common.smk's cli_options writes them
            [f"--{'' if v else 'no-'}{k.replace('_', '-')}"] if isinstance(v, bool) else [f"--{k.replace('_', '-')}", str(v)])]
        args = vars(build_parser(name, func).parse_args(common + fixed + flags))
        assert args["length_groups"] == options["length_groups"] == groups, name
        assert all(args[k] == v for k, v in options.items()), name


def test_the_base_mixture_is_every_study_arm_or_a_pinned_list():
    from visctx.config import base_arms

    params = load_params(PARAMS)
    assert base_arms(params) == unique_arms(study_points(params["studies"]))
    params["train"]["base"]["arms"] = ["T2-M4-pool", "T1-M9-sample"]
    assert [a.id for a in base_arms(params)] == ["T2-M4-pool", "T1-M9-sample"]


def test_shared_arms_are_trained_once():
    p = load_params(PARAMS)
    points = study_points(p["studies"])
    arms = unique_arms(points)
    assert len(points) == 27 + 24 + 8 + 5 + 14
    assert len(arms) == len({a.id for a in arms}) < len(points)
    # the frame study's masking shares T1-M4-mask with the token study, T32-M4-mask with the methods study
    assert {pt.study for pt in points if pt.arm.id == "T32-M4-mask"} == {"frames", "methods"}
    assert {pt.study for pt in points if pt.arm.id == "T1-M4-mask"} == {"tokens", "frames"}
    # T1-M4-pool is both a token-study arm and a frame-study arm; T32-M4-pool a frame, a window and a methods arm
    assert {pt.study for pt in points if pt.arm.id == "T1-M4-pool"} == {"tokens", "frames"}
    assert {pt.study for pt in points if pt.arm.id == "T32-M4-pool"} == {"frames", "window", "methods"}
    # summary tokens keep T*M of a raw stream r times longer: the window they spend is the others'
    (vst,) = [pt.arm for pt in points if pt.study == "methods" and pt.method == "summary" and pt.T == 32]
    assert vst.id == "T32-M16-pool-vst4w16" and vst.kept_tokens == 32 * 4 and vst.tokens == 32 * 16
    (vst3,) = [pt.arm for pt in points if pt.study == "methods" and pt.method == "summary" and pt.T == 3]
    assert vst3.id == "T3-M196-pool-vst4w196" and vst3.kept_tokens == 3 * 49


@pytest.mark.parametrize(
    "override, needles",
    [
        ({"studies": {"tokens": {"tokens": [1, 50]}}}, ["studies.tokens.tokens[1]", "50", "196"]),
        ({"studies": {"tokens": {"methods": ["sample"], "tokens": [1, 8]}}}, ["tokens[1]", "=8", "square"]),
        ({"evaluate": {"benchmarks": ["synthetic", "mlvu"]}}, ["benchmarks.mlvu.annotations=null", "mlvu"]),
        ({"evaluate": {"benchmarks": ["imagenet"]}}, ["evaluate.benchmarks[0]", "imagenet"]),
        ({"evaluate": {"scoring": "exact"}}, ["evaluate.scoring", "'exact'"]),
        ({"evaluate": {"scoring": {"mlvu": "loose"}}}, ["evaluate.scoring", "'loose'"]),
        ({"window": 100}, ["studies.window.combos[0]", "T*M=147", "window=100", "<= 100"]),
        ({"studies": {"tokens": {"methods": ["avg"]}}}, ["studies.tokens.methods[0]", "'avg'", "sample", "pool"]),
        ({"studies": {"frames": {"tokens": 0}}}, ["studies.frames.tokens", "0", "minimum of 1"]),
        ({"studies": {"frames": {"frames": [1, 64]}}}, ["studies.frames.frames[1]=64", "max_frames=32"]),
        ({"train": {"arm": {"lr": -1}}}, ["train.arm.lr", "-1"]),
        ({"data": {"source": "youtube"}}, ["data.source", "'youtube'"]),
        ({"window": 0}, ["window", "minimum of 1"]),
        ({"studies": {"window": {"budget": 160}}}, ["studies.window", "budget"]),  # the old key: one name now
        ({"preset": "huge"}, ["preset", "'huge'", "paper"]),
        ({"train": {"base": {"arms": ["T1-M4-pool", "T64-M4-pool"]}}}, ["train.base.arms[1] T=64", "max_frames=32"]),
        ({"train": {"base": {"arms": ["frames-4"]}}}, ["train.base.arms[0]", "'frames-4'"]),
        ({"train": {"arm": {"arms": "studies"}}}, ["train.arm.arms"]),
        ({"train": {"arm": {"length_groups": -1}}}, ["train.arm.length_groups", "-1"]),
        ({"studies": {"tokenz": {}}}, ["tokenz"]),
        ({"studies": {"methods": {"combos": [[8, 25]]}}}, ["studies.methods.combos[0]=[8, 25] (method summary)",
                                                           "4*M=100"]),
        ({"studies": {"methods": {"methods": ["drop"]}}}, ["studies.methods.methods[0]", "'drop'", "summary"]),
        ({"studies": {"methods": {"combos": [[32, 9]]}}}, ["studies.methods.combos[0]=[32, 9]", "T*M=288", "<= 160"]),
    ],
)
def test_bad_values_are_named(override, needles):
    with pytest.raises(ParamsError) as e:
        load_params(PARAMS, override)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_scoring_is_one_mode_or_one_per_benchmark():
    """evaluate.scoring reaches `visctx evaluate-arms --scoring` resolved per benchmark
    (workflow/rules/evaluate.smk, benchmarks.scoring_mode)."""
    from visctx.benchmarks import scoring_mode
    from visctx.cli import build_parser
    from visctx.evaluate import evaluate_arms

    assert load_params(PARAMS)["evaluate"]["scoring"] == "official"
    p = load_params(PARAMS, {"evaluate": {"scoring": {"videomme": "lmms_eval", "mlvu": "strict"}}})
    assert p["evaluate"]["scoring"] == {"videomme": "lmms_eval", "mlvu": "strict"}
    assert [scoring_mode(p["evaluate"]["scoring"], b) for b in ("videomme", "mlvu", "vnbench")] == \
        ["lmms_eval", "strict", "official"]
    rule = (PARAMS.parent / "workflow/rules/evaluate.smk").read_text()
    assert "--scoring {params.scoring}" in rule and "scoring_mode(CFG[\"evaluate\"].get(\"scoring\")" in rule
    args = build_parser("evaluate-arms", evaluate_arms).parse_args(
        ["--arms", "T1-M1-pool", "--arms-dir", "a", "--eval-json", "e", "--features-dir", "f", "--scoring", "strict"])
    assert args.scoring == "strict"


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_preset_overrides_only_what_it_names():
    p = raw()
    merged = resolve_preset(deep_merge(p, {"preset": "paper"}))
    assert merged["analysis"]["n_boot"] == p["analysis"]["n_boot"]
    assert merged["window"] == 6000
    assert validate(merged) is merged


@pytest.mark.parametrize("arm", [Arm(32, 49, "pool"), Arm(8, 49, "pool", 32), Arm(6, 4, "sample", 32), Arm(1, 196, "sample")])
def test_arm_ids_round_trip(arm):
    assert Arm.from_id(arm.id) == arm


@pytest.mark.parametrize("bad", ["T32-M49", "X32-M49-pool", "T32-M49-avg", "T32-M50-pool", "T0-M1-pool", "T8-M4-pool-from4", "T8-M4-pool-tpool4"])
def test_bad_arm_ids(bad):
    with pytest.raises(ValueError):
        Arm.from_id(bad)


@pytest.mark.parametrize("path, override, changed", [
    ("params.yaml", "window=200", {"-window: 160", "+window: 200"}),
    ("params.yaml", "preset=paper", {"-preset: embedded", "+preset: paper"}),
    ("params.yaml", "seeds=[0,1]", {"-- 2", "-- 3", "-- 4"}),
    ("params.yaml", "+train.arm.steps=50", {"+train:", "+  arm:", "+    steps: 50"}),
    ("config/config.yaml", "train.arm.steps=50", {"-    steps: 100", "+    steps: 50"}),
    ("config/config.yaml", "studies.tokens.tokens=[1,4]", {f"-    - {m}" for m in (9, 16, 25, 36, 49, 81, 196)}),
])
def test_dvc_exp_run_set_param_rewrites_only_the_value_it_sets(tmp_path, path, override, changed):
    """`dvc exp run -S` rewrites a params file through DVC's own YAML round trip, which expands flow
    lists, drops comments that follow a list and prints null as empty; both files are written as
    that round trip writes them, so a rewrite changes the values set and nothing else."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy2(ROOT / path, copy)
    apply_overrides(str(copy), [override])
    before, after = (ROOT / path).read_text().splitlines(), copy.read_text().splitlines()
    diff = {ln.split("#")[0].rstrip() for ln in difflib.unified_diff(before, after, lineterm="", n=0)
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))}
    assert diff == changed


def test_params_yaml_holds_the_knobs_and_overrides_the_documented_config(tmp_path):
    """DVC shows every key of params.yaml as a column of `dvc exp show`: it holds the knobs only;
    config/config.yaml (every setting) is under it, and a key set in params.yaml wins."""
    assert set(yaml.safe_load(PARAMS.read_text())) == {"preset", "results", "window", "seeds"}
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "params.yaml").write_text("preset: embedded\nwindow: 200\nseeds: [0]\ntrain: {arm: {steps: 7}}\n")
    p = load_params(tmp_path / "params.yaml")
    assert p["window"] == 200 and p["seeds"] == [0] and p["train"]["arm"]["steps"] == 7
    assert p["train"]["arm"]["lr"] == raw()["train"]["arm"]["lr"]  # the rest from config/config.yaml
    (tmp_path / "params.yaml").write_text("preset: paper\ntrain: {arm: {steps: 7}}\n")
    assert load_params(tmp_path / "params.yaml")["train"]["arm"]["steps"] == 2000  # the preset is applied last
    (tmp_path / "config/config.yaml").write_text("- a list\n")
    with pytest.raises(ParamsError, match=r"config/config\.yaml: expected a mapping"):
        load_params(tmp_path / "params.yaml")


def test_each_stage_reads_its_resolved_params(tmp_path):
    """results/params/<stage>.json: what DVC's stages depend on instead of keys of params.yaml."""
    from visctx.config import STAGE_PARAMS, write_stage_params

    out = tmp_path / "out"
    written = write_stage_params(str(PARAMS), str(out))
    assert set(written) == set(STAGE_PARAMS) == {"data", "train", "analyze", "niah"}
    analyze = json.loads((out / "analyze.json").read_text())
    assert analyze["window"] == 160 and analyze["data.extract.max_frames"] == 32
    mtime = (out / "train.json").stat().st_mtime_ns
    shutil.copytree(ROOT / "config", tmp_path / "config")
    paper = tmp_path / "params.yaml"
    paper.write_text(PARAMS.read_text().replace("preset: embedded", "preset: paper"))
    with pytest.raises(ParamsError, match=r"preset 'paper' writes under 'results-paper', but .*params\.yaml's results "
                                          r".* is 'results': set both, e\.g\. `dvc exp run -S preset=paper -S "
                                          r"results=results-paper`"):
        write_stage_params(str(paper), str(out))  # DVC's stage paths would be the default's
    paper.write_text(paper.read_text().replace("results: results ", "results: results-paper "))
    write_stage_params(str(paper), str(out))
    assert json.loads((out / "analyze.json").read_text())["window"] == 6000  # the preset resolved
    assert (out / "train.json").stat().st_mtime_ns != mtime
    mtime = (out / "train.json").stat().st_mtime_ns
    write_stage_params(str(paper), str(out))
    assert (out / "train.json").stat().st_mtime_ns == mtime  # unchanged: not rewritten
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGE_PARAMS:  # each DVC stage depends on its file, and declares no params of its own
        assert f"${{results}}/params/{stage}.json" in stages[stage]["deps"] and "params" not in stages[stage]
    assert {"params.yaml", "config/config.yaml"} <= set(stages["params"]["deps"])


def test_the_real_data_is_under_the_folder_the_stages_depend_on(tmp_path, capsys):
    """DVC sees a changed video only under data/ (the one folder the data, train and niah stages
    depend on): the paper preset keeps everything there; a root elsewhere is named by the params
    stage, which still writes the params."""
    from visctx.stages import DATA_DIR, data_paths, outside_data_dir, write_params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert [s for s in stages if DATA_DIR in stages[s]["deps"]] == ["data", "train", "niah"]
    assert (ROOT / DATA_DIR / "README.md").is_file() and (ROOT / DATA_DIR / ".gitignore").is_file()
    paper = load_params(PARAMS, {"preset": "paper"})
    assert len(data_paths(paper)) == 3 + 2 * 5  # the instruction JSON and videos, 5 benchmarks x 2
    assert outside_data_dir(paper, ROOT) == {}
    assert data_paths(load_params(PARAMS)) == {}  # the embedded default reads no real data
    paper["benchmarks"]["mlvu"]["video_root"] = "/scratch/MLVU/video"
    paper["data"]["instruct"]["train_json"] = "data/../elsewhere/train.json"
    assert outside_data_dir(paper, ROOT) == {"benchmarks.mlvu.video_root": "/scratch/MLVU/video",
                                             "data.instruct.train_json": "data/../elsewhere/train.json"}
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    p = tmp_path / "params.yaml"
    p.write_text(p.read_text() + "evaluate:\n  benchmarks: [synthetic, videomme]\nbenchmarks:\n  videomme:\n"
                 "    annotations: data/benchmarks/videomme/test.parquet\n    video_root: /scratch/videomme\n")
    write_params(str(p), str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert "benchmarks.videomme.video_root: /scratch/videomme is outside data/" in err and err.count("outside") == 1
    assert (tmp_path / "out/data.json").is_file()
