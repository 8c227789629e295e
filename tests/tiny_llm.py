"""A microscopic Qwen2 whose vocabulary is a few words: the model the unit tests load through the
real loading code (built from a config, saved with save_pretrained, no download)."""

from __future__ import annotations

import json
from pathlib import Path

SIZES = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def tiny_llm(d: Path, words: str, max_frames: int, **sizes) -> Path:
    """``d/llm``: its tokenizer knows ``words`` (one instruction record's text) and the frame labels."""
    from visctx.pretrained import build_tiny_llm

    corpus = d / "corpus.json"
    corpus.write_text(json.dumps([{"id": "x", "video": "v", "conversations": [
        {"from": "human", "value": "<video>\n" + words}, {"from": "gpt", "value": "red"}]}]))
    return Path(build_tiny_llm(str(d / "llm"), [str(corpus)], max_frames=max_frames, **{**SIZES, **sizes}))
