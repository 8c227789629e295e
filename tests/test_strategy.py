"""train.scale: Trainer settings, DeepSpeed configs checked by DeepSpeed itself, LLM switches, collation.

DeepSpeed cannot fit on CPU, so the CPU tests check what can be checked without CUDA: the configs
through DeepSpeed's parser, a Trainer built with ``DeepSpeedStrategy``, and the collation of a real
ZeRO checkpoint written by plain ``deepspeed.initialize`` on the CPU accelerator (in a subprocess:
it initialises a process group). The ``gpu`` test trains, checkpoints and resumes through Lightning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from visctx.config import Arm, load_params
from visctx.strategy import (build_strategy, check_scale, configure_llm, deepspeed_config,
                             resolve_attn_implementation, validate_strategy)
from tiny_llm import tiny_llm

ROOT = Path(__file__).resolve().parents[1]
D = 8  # vision feature width
WORDS = "what colour is the ball ? red green blue yellow"


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return tiny_llm(tmp_path_factory.mktemp("llm"), WORDS, max_frames=4)


def shipped_scales() -> dict[str, dict]:
    return {p: load_params(ROOT / "params.yaml", {"preset": p})["train"]["scale"] for p in ("embedded", "paper")}


# -- settings and errors (no deepspeed needed) ---------------------------------------------------


def test_embedded_default_is_the_cpu_path():
    scale = shipped_scales()["embedded"]
    kwargs = build_strategy(**scale)
    assert kwargs == {"accelerator": "cpu", "strategy": "auto", "precision": "32-true", "devices": 1, "num_nodes": 1}
    summary = validate_strategy(**scale)  # a real Trainer is built
    assert summary == {"strategy": "SingleDeviceStrategy", "precision": "32-true"}


def test_clipping_on_the_auto_path_is_lightnings():
    assert build_strategy(gradient_clipping=1.0)["gradient_clip_val"] == 1.0


@pytest.mark.parametrize("bad, key", [
    (dict(strategy="fsdp"), "strategy"),
    (dict(strategy="deepspeed", accelerator="cpu"), "strategy"),  # DeepSpeed fits only on CUDA
    (dict(strategy="deepspeed", accelerator="gpu", zero_stage=2, offload_params=True), "offload_params"),
    (dict(strategy="deepspeed", accelerator="gpu", zero_stage=0), "zero_stage"),
    (dict(offload_optimizer=True), "offload_optimizer"),  # strategy auto would silently ignore it
    (dict(devices=2), "devices"),
    (dict(precision="bf16"), "precision"),
    (dict(precision="16-mixed"), "precision"),  # fp16 on CPU
    (dict(attn_implementation="flash"), "attn_implementation"),
    (dict(accelerator="tpu"), "accelerator"),
    (dict(num_nodes=0), "num_nodes"),
    (dict(gradient_clipping=-1.0), "gradient_clipping"),
])
def test_impossible_combinations_name_the_key(bad, key):
    with pytest.raises(ValueError, match=rf"train\.scale\.{key}="):
        check_scale(**bad)


def test_params_check_reports_the_key():
    with pytest.raises(ValueError, match=r"train\.scale\.offload_params"):
        load_params(ROOT / "params.yaml", {"train": {"scale": {"strategy": "deepspeed", "accelerator": "gpu",
                                                                "offload_params": True}}})


def test_flash_attention_falls_back_to_sdpa_with_a_warning():
    with pytest.warns(UserWarning, match=r"train\.scale\.attn_implementation=flash_attention_2.*using sdpa"):
        assert resolve_attn_implementation("flash_attention_2", "cpu") == "sdpa"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_attn_implementation("sdpa", "cpu") == "sdpa"


def test_gradient_checkpointing_is_really_on(llm_dir):
    from visctx.pretrained import load_llm

    llm, _ = load_llm(llm_dir)
    def on():  # transformers >= 5.23 calls it is_activation_checkpointing
        return llm.is_activation_checkpointing if hasattr(llm, "is_activation_checkpointing") else llm.is_gradient_checkpointing

    assert not on()
    with pytest.warns(UserWarning, match="using sdpa"):
        assert configure_llm(llm, gradient_checkpointing=True, attn_implementation="flash_attention_2") == "sdpa"
    assert on() and llm.config._attn_implementation == "sdpa"
    layers = llm.model.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    # backward through the checkpointed layers gives the same gradients as without
    llm.train()
    ids = torch.arange(2, 12).unsqueeze(0)
    llm(input_ids=ids, labels=ids).loss.backward()
    with_ckpt = {n: p.grad.clone() for n, p in llm.named_parameters()}
    llm.zero_grad()
    configure_llm(llm, gradient_checkpointing=False)
    assert not on()
    llm(input_ids=ids, labels=ids).loss.backward()
    for n, p in llm.named_parameters():
        torch.testing.assert_close(p.grad, with_ckpt[n])


def test_cli_maps_the_scale_options():
    from visctx.cli import COMMANDS, build_parser
    from visctx.train import train_arms

    assert COMMANDS["collate"][:2] == ("visctx.collate", "collate_checkpoint")
    args = vars(build_parser("train-arms", train_arms).parse_args([
        "--arms", "T1-M1-pool", "--arms-dir", "a", "--train-json", "t", "--features-dir", "f", "--init", "i",
        "--steps", "1", "--batch-size", "2", "--lr", "0.1", "--warmup-steps", "0", "--seed", "0", "--threads", "1",
        "--strategy", "deepspeed", "--zero-stage", "3", "--offload-params", "--no-gradient-checkpointing",
        "--precision", "bf16-mixed", "--devices", "8", "--gradient-clipping", "1.0"]))
    assert (args["strategy"], args["zero_stage"], args["offload_params"], args["gradient_checkpointing"],
            args["devices"], args["gradient_clipping"]) == ("deepspeed", 3, True, False, 8, 1.0)
    assert args["offload_optimizer"] is False and args["num_nodes"] == 1  # defaults: the CPU path


# -- DeepSpeed configs (deepspeed installed, no GPU) ---------------------------------------------


def _no_auto(obj) -> bool:
    if isinstance(obj, dict):
        return all(_no_auto(v) for v in obj.values())
    return obj != "auto"


@pytest.mark.parametrize("stage, offload_optimizer, offload_params", [
    (1, False, False), (2, False, False), (2, True, False), (3, False, False), (3, True, True),
])
def test_deepspeed_config_is_accepted_by_deepspeed(stage, offload_optimizer, offload_params):
    pytest.importorskip("deepspeed")
    from visctx.strategy import check_deepspeed_config

    cfg = deepspeed_config(stage, offload_optimizer, offload_params, "bf16-mixed", 1.0, micro_batch_size=4)
    assert _no_auto(cfg) and "gradient_accumulation_steps" not in cfg  # Lightning sets it and refuses ours
    parsed = check_deepspeed_config(cfg)
    assert parsed.zero_optimization_stage == stage
    assert parsed.bfloat16_config.enabled and not parsed.float16_config.enabled
    assert parsed.gradient_clipping == 1.0 and parsed.train_micro_batch_size_per_gpu == 4
    zero = parsed.zero_config
    assert zero.contiguous_gradients and zero.overlap_comm and zero.reduce_bucket_size == cfg["zero_optimization"]["reduce_bucket_size"]
    assert (zero.offload_optimizer is not None) == offload_optimizer
    assert (zero.offload_param is not None) == offload_params
    for off in (zero.offload_optimizer, zero.offload_param):
        if off is not None:
            assert off.device == "cpu" and off.pin_memory


def test_deepspeed_rejects_what_it_cannot_run():
    pytest.importorskip("deepspeed")
    from visctx.strategy import check_deepspeed_config

    cfg = deepspeed_config(2, precision="bf16-mixed")
    cfg["fp16"] = {"enabled": True}
    with pytest.raises(ValueError, match=r"train\.scale.*bfloat16 and fp16"):
        check_deepspeed_config(cfg)


def test_cpu_trainer_with_deepspeed_strategy():
    pytest.importorskip("deepspeed")
    import lightning as L
    from lightning.pytorch.strategies import DeepSpeedStrategy

    kwargs = build_strategy(strategy="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True,
                            precision="bf16-mixed", accelerator="cpu", validate_only=True, micro_batch_size=2)
    trainer = L.Trainer(**kwargs, max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy, DeepSpeedStrategy)
    zero = trainer.strategy.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert trainer.strategy.config["bf16"]["enabled"]


@pytest.mark.parametrize("preset", ["embedded", "paper"])
def test_every_shipped_config_yields_a_valid_strategy(preset):
    scale = shipped_scales()[preset]
    if scale["strategy"] == "deepspeed":
        pytest.importorskip("deepspeed")
    summary = validate_strategy(**scale)
    if preset == "paper":  # paper §2: DeepSpeed ZeRO-2, bf16, checkpointing, FlashAttention-2 preferred
        assert summary["strategy"] == "DeepSpeedStrategy" and summary["zero_stage"] == 2
        assert summary["deepspeed_config"]["bf16"]["enabled"] and scale["gradient_checkpointing"]
        assert scale["attn_implementation"] == "flash_attention_2"


# -- collation of a real ZeRO checkpoint (deepspeed.initialize on the CPU accelerator) -----------

DS_CPU_RUN = r'''
import os, sys
os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0",
                  LOCAL_RANK="0", WORLD_SIZE="1")
import torch, deepspeed
import deepspeed.comm.torch as ds_torch_comm
ds_torch_comm.build_shm_op = lambda: None  # one process needs no shared-memory op; its JIT build takes ~100 s
from safetensors.torch import save_file
from visctx.features import VisionEncoder
from visctx.model import VideoModel
from visctx.pretrained import load_llm
from visctx.strategy import deepspeed_config, full_weights
from visctx.train import VideoLM

llm_dir, root, tower = sys.argv[1], sys.argv[2], sys.argv[4]
deepspeed.init_distributed(dist_backend="gloo")
for name, stage in (("zero2", 2), ("zero3", 3), ("zero2-vision", 2)):
    torch.manual_seed(stage)
    llm, tok = load_llm(llm_dir)
    # the last: a trainable tower in the forward (model.vision_features: forward), frames as input
    vision = VisionEncoder.load(tower, trainable=True) if name.endswith("vision") else None
    module = VideoLM(VideoModel(llm, tok, vision_dim=vision.dim if vision else 8, vision=vision), lr=1e-2)
    cfg = dict(deepspeed_config(stage, precision="32-true", gradient_clipping=1.0, micro_batch_size=2),
               gradient_accumulation_steps=1)
    engine, *_ = deepspeed.initialize(model=module, optimizer=module.configure_optimizers()["optimizer"], config=cfg)
    enc = module.model.encoder
    prompt = enc.train_prompt([("<video>\nwhat colour is the ball ?", "red")])
    for _ in range(3):
        batch = enc.train_batch([prompt, prompt], 2, 4)
        if vision:
            batch["frames"], batch["arm"] = torch.randint(0, 255, (2, 2, 54, 54, 3), dtype=torch.uint8), "T2-M4-pool"
        else:
            batch["visual"] = torch.randn(2, 2, 4, 8)
        loss = module.model(batch)
        engine.backward(loss)
        engine.step()
    # Lightning's layout: <name>.ckpt/ with tag "checkpoint" and its own state as client state
    engine.save_checkpoint(f"{root}/{name}.ckpt", tag="checkpoint", client_state={"global_step": 3})
    with full_weights(module.model):
        save_file({k: v.detach().clone().contiguous() for k, v in module.model.state_dict().items()},
                  f"{root}/{name}.safetensors")
print("ok")
'''


@pytest.fixture(scope="module")
def zero_checkpoints(llm_dir, tmp_path_factory):
    pytest.importorskip("deepspeed")
    from visctx.features import build_tiny_vision_tower

    root = tmp_path_factory.mktemp("zero")
    build_tiny_vision_tower(root / "tower", image_size=54, patch_size=2, hidden_size=16, num_layers=2, num_heads=1,
                            intermediate_size=32)
    script = root / "run.py"
    script.write_text(DS_CPU_RUN)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, str(script), str(llm_dir), str(root), str(29500 + os.getpid() % 1000),
                           str(root / "tower")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero2-vision"])
def test_collate_a_zero_checkpoint_into_a_model_dir(zero_checkpoints, llm_dir, tmp_path, name):
    from safetensors.torch import load_file

    from visctx.model import VideoModel
    from visctx.collate import collate_checkpoint

    ckpt = zero_checkpoints / f"{name}.ckpt"
    assert (ckpt / "checkpoint").is_dir()  # shards, not one file
    tower = str(zero_checkpoints / "tower") if name.endswith("vision") else None
    if tower:  # a trained tower needs its skeleton named
        with pytest.raises(ValueError, match="trained a vision tower.*--vision-tower"):
            collate_checkpoint(str(ckpt), str(tmp_path / "model"), init=str(llm_dir))
    out = collate_checkpoint(str(ckpt), str(tmp_path / "model"), init=str(llm_dir), vision_tower=tower)
    assert out["steps"] == 3 and not list(tmp_path.glob(".model.tmp-*"))
    model = VideoModel.load(tmp_path / "model")
    assert model.meta["steps"] == 3 and model.meta["collated_from"] == str(ckpt)
    assert (model.vision is not None) == bool(tower)
    expected = load_file(str(zero_checkpoints / f"{name}.safetensors"))
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():  # the trained weights, exactly
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def test_collate_refuses_what_is_not_a_deepspeed_checkpoint(tmp_path, llm_dir):
    from visctx.collate import collate_checkpoint

    (tmp_path / "x.ckpt").mkdir()
    with pytest.raises(ValueError, match="not a DeepSpeed checkpoint"):
        collate_checkpoint(str(tmp_path / "x.ckpt"), str(tmp_path / "out"), init=str(llm_dir))


# -- on a GPU: train, checkpoint, resume through Lightning + DeepSpeed ---------------------------


@pytest.mark.gpu
def test_deepspeed_trains_checkpoints_and_resumes(llm_dir, tmp_path):
    pytest.importorskip("deepspeed")
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from visctx.model import VideoModel
    from visctx.pretrained import load_llm
    from visctx.collate import collate_checkpoint
    from visctx.train import VideoLM

    def make():
        torch.manual_seed(0)
        llm, tok = load_llm(llm_dir)
        scale = dict(strategy="deepspeed", zero_stage=2, precision="bf16-mixed", gradient_checkpointing=True,
                     attn_implementation="sdpa", accelerator="gpu", devices=1, gradient_clipping=1.0)
        configure_llm(llm, scale["gradient_checkpointing"], scale["attn_implementation"], "gpu")
        return VideoLM(VideoModel(llm, tok, vision_dim=D), lr=1e-2, total_steps=12), build_strategy(**scale, micro_batch_size=4)

    module, _ = make()
    enc = module.model.encoder
    prompt = enc.train_prompt([("<video>\nwhat colour is the ball ?", "red")])
    batches = []
    for i in range(12):
        b = enc.train_batch([prompt] * 4, 2, 4)
        b["visual"] = torch.randn(4, 2, 4, D, generator=torch.Generator().manual_seed(i))
        batches.append(b)
    loader = DataLoader(batches, batch_size=None)

    def fit(module, kwargs, steps, resume=None):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="step-{step}", save_last=True, save_top_k=-1,
                               every_n_train_steps=3)
        trainer = L.Trainer(**kwargs, max_steps=steps, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        t0 = time.perf_counter()
        trainer.fit(module, loader, ckpt_path=resume)
        return trainer, time.perf_counter() - t0

    trainer, seconds = fit(module, make()[1], 6)  # "preempted" after 6 steps
    assert trainer.global_step == 6 and (tmp_path / "ckpt/last.ckpt").is_dir()  # ZeRO shards
    first = list(module.loss_history)
    module2, kwargs2 = make()
    trainer2, _ = fit(module2, kwargs2, 12, resume=str(tmp_path / "ckpt/last.ckpt"))
    assert trainer2.global_step == 12 and len(module2.loss_history) == 6  # continued, not restarted
    print(f"deepspeed zero-2 bf16: {6 * 4 / seconds:.1f} samples/s over the first 6 steps "
          f"(loss {first[0]:.3f} -> {module2.loss_history[-1]:.3f})")
    out = collate_checkpoint(str(tmp_path / "ckpt/last.ckpt"), str(tmp_path / "model"), init=str(llm_dir))
    assert out["steps"] == 12
    assert VideoModel.load(tmp_path / "model").meta["steps"] == 12


def test_the_global_batch_must_split_over_the_ranks(tmp_path):
    from visctx.train import train

    with pytest.raises(ValueError, match=r"batch_size=6 .* 4 ranks \(train.scale.devices"):
        train(str(tmp_path / "o"), "t.json", "f", "i", ["T1-M1-pool"], steps=1, batch_size=6, lr=1e-3, warmup_steps=0,
              seed=0, threads=1, log_dir=str(tmp_path / "l"), devices=4)


def test_a_slurm_job_with_one_task_lets_lightning_launch_a_process_per_gpu():
    from lightning.pytorch.plugins.environments import LightningEnvironment

    from visctx.strategy import cluster_plugins

    assert cluster_plugins(8, 1, {}) == []  # not under SLURM: Lightning decides
    assert cluster_plugins(1, 1, {"SLURM_NTASKS": "1"}) == []  # one GPU: nothing to launch
    assert cluster_plugins(8, 1, {"SLURM_NTASKS": "8"}) == []  # SLURM started a task per GPU
    (env,) = cluster_plugins(8, 1, {"SLURM_NTASKS": "1"})  # srun -n1, as Snakemake's SLURM jobs run
    assert isinstance(env, LightningEnvironment)
    with pytest.raises(ValueError, match="train.scale.num_nodes=2: a multi-node run needs one SLURM task per GPU"):
        cluster_plugins(8, 2, {"SLURM_NTASKS": "1"})
