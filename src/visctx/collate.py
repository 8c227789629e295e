"""A DeepSpeed checkpoint directory (ZeRO shards, written by :mod:`visctx.strategy`'s DeepSpeed
runs) collated into our model dir, the one file set evaluation reads.

Apart from :mod:`visctx.strategy` so that the training-scale settings (which params validation
checks) import nothing of the model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from visctx.strategy import _deepspeed_available


def collate_checkpoint(ckpt_dir: str, out_dir: str, init: str, prompt_format: dict | None = None,
                       tag: str | None = None, vision_tower: str | None = None, vision_layer: int = -2) -> dict:
    """Collate a DeepSpeed checkpoint directory (Lightning's ``*.ckpt/`` of ZeRO shards) into one
    fp32 model dir in our format (``VideoModel.save``), which evaluation reads.

    ``init``: what the run started from, for the skeleton (LLM config, tokenizer): a pretrained LLM
    (name or dir; ``prompt_format`` as in training) or a trained model dir (its format is kept).
    The LightningModule's ``model.`` prefix is stripped; every weight must match (strict load).
    ``vision_tower``/``vision_layer``: the tower's skeleton for a run that encoded frames in the
    forward and started from a pretrained LLM (``model.vision_features: forward``).

    Args:
        ckpt_dir: the DeepSpeed checkpoint directory (Lightning's ``*.ckpt/``).
        out_dir: the model dir to write.
        init: what the run started from (see above).
        prompt_format: PromptFormat fields (JSON), or {"chat_template": true[, "frame_label"]} when ``init`` is a pretrained LLM.
        tag: the checkpoint tag to collate (default: the one named in ``latest``).
        vision_tower, vision_layer: the tower's skeleton and layer (see above).
    """
    import torch

    from visctx.model import MODEL_FORMAT, Projector, prompt_layout, VideoModel, is_model_dir, replace_dir
    from visctx.pretrained import load_llm

    src = Path(ckpt_dir)
    if not (src / "latest").is_file() and tag is None:
        raise ValueError(f"{src}: not a DeepSpeed checkpoint directory (no 'latest' file; pass --tag)")
    if not _deepspeed_available():
        raise ValueError("collate_checkpoint needs the deepspeed package (the project's 'cluster' extra)")
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        state = convert_zero_checkpoint_to_fp32_state_dict(src, tmp / "fp32.ckpt", tag=tag)
        (tmp / "fp32.ckpt").unlink()  # the model dir below is the one file set evaluation reads
        weights = {k[len("model."):]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
        if "projector.fc1.weight" not in weights:
            raise ValueError(f"{src}: no projector weights (model.projector.*): not a visctx training checkpoint")
        if is_model_dir(init):
            model = VideoModel.load(init)
        else:
            llm, tok = load_llm(init)
            vision_dim = int(weights["projector.fc1.weight"].shape[1])
            hidden = llm.get_input_embeddings().embedding_dim
            vision = None
            if any(k.startswith("vision.") for k in weights):
                if not vision_tower:
                    raise ValueError(f"{src}: the run trained a vision tower in its forward; name its skeleton "
                                     f"(--vision-tower, model.vision_tower)")
                from visctx.features import VisionEncoder

                vision = VisionEncoder.load(vision_tower, vision_layer)
            model = VideoModel(llm, tok, vision_dim, prompt_layout(tok, prompt_format),
                               projector=Projector(vision_dim, hidden), vision=vision)
        missing, unexpected = model.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()},
                                                    strict=False)
        # tied output embeddings are saved once; anything else missing means a different skeleton
        missing = [k for k in missing if not (k == "llm.lm_head.weight" and model.llm.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"{src}: weights do not match the skeleton from {init} "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        steps = int(state.get("global_step", 0))
        before = int(model.meta.get("steps_total", 0)) if is_model_dir(init) else 0
        model.meta = {k: v for k, v in model.meta.items() if k not in ("steps", "steps_total")}
        model.save(tmp, collated_from=str(src), steps=steps, steps_total=before + steps, init=str(init))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out_dir": str(out), "format": MODEL_FORMAT, "steps": steps, "tensors": len(weights)}
