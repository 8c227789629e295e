"""The language model and its tokenizer: built tiny from configs, or loaded by name / directory.

The embedded default cannot download anything, so the "pretrained" LLM is a Qwen2 built from a
config and saved with ``save_pretrained``; its tokenizer is word level over the corpus, which keeps
the vocabulary (and so the output layer) tiny. The paper preset hands :func:`load_llm` a name such
as ``Qwen/Qwen2-7B`` instead: the same code path loads either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, EOS)
VIDEO_PLACEHOLDER = "<video>"
# Attention kernel for every LLM we build or load: eager is 3-7x slower on CPU (platform notes).
ATTN_IMPLEMENTATION = "sdpa"


def _corpus_texts(path: str | Path) -> Iterable[str]:
    """Every text of a train (conversations) or eval (question/options) corpus file."""
    path = Path(path)
    try:
        with open(path) as f:
            records = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: corpus file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        for turn in rec.get("conversations", []) or []:
            value = turn.get("value") if isinstance(turn, dict) else None
            if not isinstance(value, str):
                raise ValueError(f"{path}: record {i} (id {rec.get('id')!r}): conversation turn without a string 'value'")
            yield value.replace(VIDEO_PLACEHOLDER, " ")
        if isinstance(rec.get("question"), str):
            yield rec["question"].replace(VIDEO_PLACEHOLDER, " ")
        for opt in rec.get("options", []) or []:
            yield str(opt)


def corpus_words(corpus_jsons: Iterable[str | Path]) -> list[str]:
    """Sorted words of the corpora, split exactly as the tokenizer will split them."""
    from tokenizers import normalizers, pre_tokenizers

    norm, pre = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    words: set[str] = set()
    for path in corpus_jsons:
        for text in _corpus_texts(path):
            words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return sorted(words)


def build_tokenizer(corpus_jsons: list[str] | list[Path], max_frames: int):
    """Word-level tokenizer whose vocabulary is every corpus word plus the frame labels.

    Deterministic: special tokens first (pad, unk, eos), then the sorted words, so the same
    corpus always gives the same ids. ``frame``, ``:`` and ``1..max_frames`` are always present
    because the prompt labels each frame ``frame i:``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    words = set(corpus_words(corpus_jsons))
    words.update(["frame", ":"], (str(i) for i in range(1, max_frames + 1)))
    words.difference_update(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS)


def build_tiny_llm(
    out_dir: str,
    corpus_jsons: list[str],
    max_frames: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Build a randomly initialised Qwen2 over the corpus vocabulary and save it with its tokenizer.

    ``initializer_range`` (std of the weight init) is 0.1 rather than Qwen2's 0.02: at hidden
    size 64 the small init leaves attention near uniform for many hundred steps; measured on the
    synthetic needle task, 0.02 had not left the answer prior after 600 steps where 0.05-0.1
    reached 60-80% accuracy. Returns ``out_dir``, which :func:`load_llm` (and so every later stage) loads like a hub name.

    Args:
        out_dir: where the model and tokenizer are saved (``save_pretrained``).
        corpus_jsons: the corpus files whose words make the vocabulary (train and eval JSON).
        max_frames: the most frames a prompt labels (``frame 1:`` .. ``frame max_frames:``).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: the Qwen2 architecture.
        max_position_embeddings: the longest sequence (prompt plus visual tokens) it takes.
        initializer_range: std of the weight init (see above).
        seed: seed of the random init.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(list(corpus_jsons), max_frames)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        use_cache=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_llm(name_or_path: str | Path, dtype: torch.dtype = torch.float32):
    """``(causal LM, tokenizer)`` from a hub name or a ``save_pretrained`` directory, with sdpa."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    if Path(name).exists() and not (Path(name) / "config.json").is_file():
        raise ValueError(f"{name}: not a saved model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION)
    return model, load_tokenizer(name)


def load_tokenizer(name_or_path: str | Path):
    """The tokenizer saved with a model.

    A generic ``tokenizers`` backend (our word-level one) is loaded as such: ``AutoTokenizer``
    would follow the model type and rebuild it as a Qwen2 BPE tokenizer, silently changing ids.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = str(name_or_path)
    cfg_path = Path(name) / "tokenizer_config.json"
    generic = False
    if cfg_path.is_file():
        with open(cfg_path) as f:
            generic = json.load(f).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast")
    tokenizer = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(name)
    if tokenizer.pad_token_id is None:  # Qwen2's base tokenizer has one; others may not
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
