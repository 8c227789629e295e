"""The tiny LLM and its word-level tokenizer: built from the corpus, saved, loaded by one function."""

import json

import pytest
import torch

from visctx.pretrained import build_tiny_llm, build_tokenizer, corpus_words, load_llm, load_tokenizer

TRAIN = [
    {"id": "a", "video": "train/v0.mp4", "task_type": "color",
     "conversations": [{"from": "human", "value": "<video>\nWhat colour is the ball?"},
                       {"from": "gpt", "value": "Red"}]},
    {"id": "b", "video": "train/v1.mp4", "task_type": "count",
     "conversations": [{"from": "human", "value": "<video>\nHow many times did the bar flash?"},
                       {"from": "gpt", "value": "3"}]},
]
EVAL = [{"id": "e", "video": "eval/v0.mp4", "question": "Which corner was the dot in?",
         "options": ["top left", "bottom right", "cyan", "magenta"], "answer": 1, "task_type": "needle"}]


@pytest.fixture
def corpus(tmp_path):
    paths = [tmp_path / "train.json", tmp_path / "eval.json"]
    paths[0].write_text(json.dumps(TRAIN))
    paths[1].write_text(json.dumps(EVAL))
    return paths


def test_tokenizer_covers_corpus_and_frame_labels(corpus):
    tok = build_tokenizer(corpus, max_frames=16)
    texts = ["What colour is the ball?", "How many times did the bar flash? 3", "Which corner was the dot in?",
             "top left bottom right cyan magenta Red", "frame 1: frame 16:"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, text
        assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids  # round trip
    assert tok.decode(tok("Frame 3: RED", add_special_tokens=False)["input_ids"]) == "frame 3 : red"
    assert tok("video <video>", add_special_tokens=False)["input_ids"].count(tok.unk_token_id) >= 1
    assert "video" not in tok.get_vocab()  # the placeholder is not corpus text
    assert {"<pad>", "<unk>", "<eos>"} <= set(tok.get_vocab())
    assert tok.pad_token_id == 0


def test_tokenizer_is_deterministic(corpus):
    a = build_tokenizer(corpus, 8).get_vocab()
    b = build_tokenizer(list(reversed(corpus)), 8).get_vocab()
    assert a == b
    assert corpus_words(corpus) == sorted(corpus_words(corpus))


def test_bad_corpus_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human"}]}]))
    with pytest.raises(ValueError, match="bad.json.*record 0"):
        build_tokenizer([bad], 4)
    with pytest.raises(ValueError, match="missing.json"):
        build_tokenizer([tmp_path / "missing.json"], 4)


def test_save_pretrained_then_load_llm(corpus, tmp_path):
    out = build_tiny_llm(tmp_path / "llm", corpus, max_frames=8, hidden_size=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, intermediate_size=32)
    model, tok = load_llm(out)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config._attn_implementation == "sdpa"
    assert model.config.vocab_size == len(tok) == len(build_tokenizer(corpus, 8))
    assert type(tok).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")  # not re-built as Qwen2 BPE
    ids = tok("frame 2: what colour is the ball?", add_special_tokens=False)["input_ids"]
    assert ids == build_tokenizer(corpus, 8)("frame 2: what colour is the ball?", add_special_tokens=False)["input_ids"]
    again, _ = load_llm(out)
    x = torch.tensor([ids])
    assert torch.equal(model(x).logits, again(x).logits)
    assert load_tokenizer(out).get_vocab() == tok.get_vocab()


def test_load_llm_rejects_a_dir_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_llm(tmp_path)
