"""Prompt layout, masking, right padding, projector, option scoring and the model dir round trip."""

import json

import pytest
import torch

from visctx.model import IGNORE, Projector, PromptEncoder, PromptFormat, VideoModel
from visctx.pretrained import load_llm
from visctx.train import lr_lambda
from tiny_llm import tiny_llm

D = 8  # vision feature width in these tests
WORDS = "what colour is the ball ? how many times did bar flash red green blue yellow dark light 1 2 3 4"


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return tiny_llm(tmp_path_factory.mktemp("llm"), WORDS, max_frames=8)


@pytest.fixture
def model(llm_dir):
    torch.manual_seed(0)
    llm, tok = load_llm(llm_dir)
    return VideoModel(llm, tok, vision_dim=D).eval()


def ids(model, text):
    return list(model.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_layout_labels_each_frame_then_its_tokens(model):
    enc = model.encoder
    p = enc.train_prompt([("<video>\nwhat colour is the ball ?", "red")])
    T, M = 3, 4
    b = enc.train_batch([p], T, M)
    seq, labels, vis = b["input_ids"][0], b["labels"][0], b["vis_index"][0]
    assert vis.numel() == T * M
    label_len = len(ids(model, "frame 1:"))
    for i in range(T):
        frame_slots = vis[i * M:(i + 1) * M]
        assert torch.equal(frame_slots, torch.arange(frame_slots[0], frame_slots[0] + M))  # contiguous
        start = int(frame_slots[0])
        assert seq[start - label_len:start].tolist() == ids(model, f"frame {i + 1}:")
    question = ids(model, "what colour is the ball ?")
    after = int(vis[-1]) + 1
    assert seq[after:after + len(question)].tolist() == question
    answer_pos = (labels != IGNORE).nonzero().flatten().tolist()
    assert answer_pos == [after + len(question)]  # loss only on the answer token
    assert labels[answer_pos[0]] == ids(model, "red")[0] == seq[answer_pos[0]]
    assert (labels[vis] == IGNORE).all()


def test_multi_turn_every_answer_has_loss_and_nothing_else(model):
    p = model.encoder.train_prompt([("<video>\nwhat colour is the ball ?", "dark red"),
                                    ("how many times did the bar flash ?", "3")])
    b = model.encoder.train_batch([p], 2, 1)
    labels, seq = b["labels"][0], b["input_ids"][0]
    kept = labels[labels != IGNORE].tolist()
    assert kept == ids(model, "dark red") + ids(model, "3")
    assert torch.equal(seq[labels != IGNORE], labels[labels != IGNORE])
    with pytest.raises(ValueError, match="exactly one"):
        model.encoder.train_prompt([("what colour ?", "red")], where="rec 7")


def test_prompt_format_wraps_turns():
    class Tok:  # whitespace tokenizer: one id per word, so the pieces can be read back
        pad_token_id, eos_token_id = 0, 0
        vocab: dict = {}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.vocab.setdefault(w, len(self.vocab) + 1) for w in text.split()]}

    tok = Tok()
    enc = PromptEncoder(tok, PromptFormat(user_prefix="USER", assistant_prefix="ASSISTANT", answer_suffix="END"))
    p = enc.train_prompt([("<video>\nq1", "a1")])
    inv = {v: k for k, v in tok.vocab.items()}
    assert [inv[i] for i in p.pre] == ["USER"]
    assert [inv[i] for i in p.post] == ["q1", "ASSISTANT", "a1", "END"]
    assert [inv.get(i) for i in p.post_labels] == [None, None, "a1", "END"]


def test_projector_shapes_and_fixed_standardisation():
    proj = Projector(D, 32)
    assert proj(torch.randn(2, 3, 5, D)).shape == (2, 3, 5, 32)
    assert isinstance(proj.act, torch.nn.SiLU)
    mean, std = torch.arange(D, dtype=torch.float32), torch.full((D,), 2.0)
    std_proj = Projector(D, 32, mean, std)
    std_proj.load_state_dict({**proj.state_dict(), "in_mean": mean, "in_std": std})
    x = torch.randn(4, D)
    torch.testing.assert_close(std_proj(x * 2 + mean), proj(x))
    assert not any(n.startswith("in_") for n, _ in std_proj.named_parameters())  # buffers, never trained
    with pytest.raises(ValueError, match="std > 0"):
        Projector(D, 32, mean, torch.zeros(D))


def _batch(model, prompts, T, M, seed=0):
    b = model.encoder.train_batch(prompts, T, M)
    b["visual"] = torch.randn(len(prompts), T, M, D, generator=torch.Generator().manual_seed(seed))
    return b


def test_right_padding_without_mask_equals_unpadded(model):
    enc = model.encoder
    prompts = [enc.train_prompt([("<video>\nwhat colour is the ball ?", "dark red")]),
               enc.train_prompt([("<video>\nhow many times did the bar flash ? what colour is the ball ?", "3")]),
               enc.train_prompt([("<video>\nbar ?", "light blue green")])]
    T, M = 2, 3
    batch = _batch(model, prompts, T, M)
    assert batch["input_ids"].shape[1] > min(batch["lengths"])  # really padded
    with torch.no_grad():
        sums, counts = model.per_row_nll(batch)
        for r, p in enumerate(prompts):
            single = enc.train_batch([p], T, M)
            single["visual"] = batch["visual"][r:r + 1]
            s1, c1 = model.per_row_nll(single)
            assert int(c1) == int(counts[r]) == sum(t != IGNORE for t in p.post_labels)
            torch.testing.assert_close(sums[r], s1[0], rtol=1e-5, atol=1e-5)
        # the visual tokens matter (the comparison above is not vacuous)
        other = dict(batch, visual=batch["visual"] + 1.0)
        assert not torch.allclose(model.per_row_nll(other)[0], sums)


def _full_logprob(model, batch, row, positions):
    """Reference: full logits from the LLM's own head over the whole sequence."""
    emb = model.embed(batch)[row:row + 1]
    logp = model.llm(inputs_embeds=emb).logits[0].log_softmax(-1)
    seq = batch["input_ids"][row]
    return sum(float(logp[p - 1, seq[p]]) for p in positions)


def test_option_scores_match_a_full_forward(model):
    enc = model.encoder
    single = [enc.choice_prompt("what colour is the ball ?", ["red", "green", "blue"], 0),
              enc.choice_prompt("how many times did the bar flash ?", ["1", "2", "3", "4"], 2)]
    multi = [enc.choice_prompt("what colour is the ball ?", ["dark red", "green", "light blue yellow"], 2)]
    T, M = 2, 2
    with torch.no_grad():
        b = enc.choice_batch(single, T, M)
        b["visual"] = torch.randn(2, T, M, D)
        s = model.score_options(b)
        assert bool(b["single_token"]) and s["logprob"].shape == (2, 4)
        assert torch.isinf(s["logprob"][0, 3]) and s["ntokens"][0].tolist() == [1, 1, 1, 0]
        for r, p in enumerate(single):
            emb = model.embed(b)[r:r + 1, :int(b["lengths"][r])]
            logp = model.llm(inputs_embeds=emb).logits[0, -1].log_softmax(-1)
            for k, opt in enumerate(p.options):
                assert abs(float(s["logprob"][r, k]) - float(logp[opt[0]])) < 1e-4

        b = enc.choice_batch(multi, T, M)
        b["visual"] = torch.randn(1, T, M, D)
        s = model.score_options(b)
        assert not bool(b["single_token"]) and s["ntokens"][0].tolist() == [2, 1, 3]
        for k in range(3):
            row = k  # one row per option of the single item
            pos = (b["labels"][row] != IGNORE).nonzero().flatten().tolist()
            assert abs(float(s["logprob"][0, k]) - _full_logprob(model, b, row, pos)) < 1e-4


def test_forced_correct_option_wins(model):
    """Make the head prefer one word: scoring must pick the option that holds it, wherever it is."""
    head = model.llm.get_output_embeddings()
    model.llm.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():  # logits 0 everywhere except the forced word
        model.llm.lm_head.weight.zero_()
        model.llm.lm_head.bias.zero_()
        model.llm.lm_head.bias[ids(model, "blue")[0]] = 20.0
    enc = model.encoder
    prompts = [enc.choice_prompt("what colour is the ball ?", opts, opts.index("blue"))
               for opts in (["blue", "red", "green"], ["red", "green", "blue"], ["green", "blue", "red"])]
    b = enc.choice_batch(prompts, 1, 4)
    b["visual"] = torch.randn(3, 1, 4, D)
    s = model.score_options(b)
    assert s["logprob"].argmax(1).tolist() == [0, 2, 1]
    assert (s["logprob"][torch.arange(3), b["answer"]] > -1e-3).all()


def test_save_load_round_trip_gives_identical_scores(model, tmp_path):
    model.projector.in_mean.fill_(0.5)  # the standardisation travels with the projector
    model.projector.in_std.fill_(3.0)
    enc = model.encoder
    prompts = [enc.choice_prompt("what colour is the ball ?", ["dark red", "green"], 0)]
    b = enc.choice_batch(prompts, 2, 3)
    b["visual"] = torch.randn(1, 2, 3, D)
    before = model.score_options(b)["logprob"]
    model.save(tmp_path / "m", arm="mixture", steps=0)
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"llm", "projector.safetensors", "model.json"}
    info = json.loads((tmp_path / "m" / "model.json").read_text())
    assert info["vision_dim"] == D and info["llm_hidden"] == 32 and info["arm"] == "mixture"
    loaded = VideoModel.load(tmp_path / "m").eval()
    b2 = loaded.encoder.choice_batch(prompts, 2, 3)
    b2["visual"] = b["visual"]
    assert torch.equal(loaded.score_options(b2)["logprob"], before)
    assert loaded.prompt_format == model.prompt_format
    assert float(loaded.projector.in_std[0]) == 3.0
    with pytest.raises(ValueError, match="no model.json"):
        VideoModel.load(tmp_path)


def test_lr_schedule_warms_up_then_decays():
    f = lr_lambda(warmup_steps=4, total_steps=12)
    assert [round(f(s), 3) for s in (0, 3, 4, 8, 12)] == [0.25, 1.0, 1.0, 0.5, 0.0]


# -- the shared visual prefix (rows of one video computed once) --------------------------------


def _visual_for(batch, per_video):
    """The batch's visual context: one per prefix (shared layout) or per row (full layout)."""
    keys = batch.get("prefix_keys")
    return torch.stack([per_video[k] for k in keys]) if keys is not None else None


@pytest.fixture
def share_any_prefix(monkeypatch):
    """Share prefixes of any length: these tests' blocks are shorter than SHARED_PREFIX_MIN."""
    monkeypatch.setattr("visctx.model.SHARED_PREFIX_MIN", 0)


def test_short_prefixes_are_not_shared(model):
    p = model.encoder.train_prompt([("<video>\nwhat colour is the ball ?", "red")])
    assert "prefix_ids" not in model.encoder.train_batch([p, p], 2, 2, keys=["a", "a"])  # 2 x (label + 2) tokens
    assert "prefix_ids" in model.encoder.train_batch([p, p], 4, 8, keys=["a", "a"])


def test_shared_prefix_gives_the_full_layouts_loss_and_gradients(model, share_any_prefix):
    enc = model.encoder
    qa = [("what colour is the ball ?", "red"), ("how many times did the bar flash ?", "3"),
          ("what colour is the ball ?", "dark blue")]
    prompts = [enc.train_prompt([("<video>\n" + q, a)]) for q, a in qa] * 2
    videos = ["v0", "v0", "v0", "v1", "v1", "v2"]
    T, M = 4, 9  # a prefix of 48 tokens: long enough to be shared (model.SHARED_PREFIX_MIN)
    per_video = {v: torch.randn(T, M, D) for v in ("v0", "v1", "v2")}
    shared = enc.train_batch(prompts, T, M, keys=videos)
    full = enc.train_batch(prompts, T, M)
    assert shared["prefix_keys"] == ["v0", "v1", "v2"] and shared["row_prefix"].tolist() == [0, 0, 0, 1, 1, 2]
    assert shared["prefix_ids"].shape[0] == 3 and "prefix_ids" not in full
    assert torch.equal(shared["lengths"], full["lengths"])
    assert int(shared["n_slots"]) < int(full["n_slots"])  # the visual block computed 3 times, not 6
    shared["visual"] = _visual_for(shared, per_video)
    full["visual"] = torch.stack([per_video[v] for v in videos])
    model.train()
    losses, grads = [], []
    for b in (shared, full):
        model.zero_grad()
        loss = model(b)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert abs(losses[0] - losses[1]) < 1e-6
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    # where the cache is unavailable (gradient checkpointing in training) the same batch runs unshared
    unshared = model._unshared(shared)
    assert torch.equal(unshared["input_ids"][:, :full["input_ids"].shape[1]], full["input_ids"])
    assert abs(float(model(unshared).detach()) - losses[1]) < 1e-6


def test_shared_prefix_gives_the_full_layouts_option_scores(model, share_any_prefix):
    enc = model.encoder
    single = [enc.choice_prompt("what colour is the ball ?", ["red", "green", "blue"], 0),
              enc.choice_prompt("how many times did the bar flash ?", ["1", "2", "3", "4"], 2),
              enc.choice_prompt("what colour is the ball ?", ["red", "blue"], 1)]
    multi = [enc.choice_prompt("what colour is the ball ?", ["dark red", "green", "light blue yellow"], 2),
             enc.choice_prompt("how many times did the bar flash ?", ["1 2", "3"], 1)]
    T, M = 3, 9
    per_video = {v: torch.randn(T, M, D) for v in ("a", "b")}
    with torch.no_grad():
        for prompts, videos in ((single, ["a", "a", "b"]), (multi, ["a", "a"])):
            shared = enc.choice_batch(prompts, T, M, keys=videos)
            full = enc.choice_batch(prompts, T, M)
            assert "row_prefix" in shared and "row_prefix" not in full
            shared["visual"] = _visual_for(shared, per_video)
            full["visual"] = torch.stack([per_video[v] for v in videos])
            a, b = model.score_options(shared), model.score_options(full)
            assert torch.equal(a["ntokens"], b["ntokens"])
            assert torch.allclose(a["logprob"], b["logprob"], atol=1e-5)


def test_rows_that_share_no_video_or_differ_before_it_keep_the_full_layout(model, share_any_prefix):
    enc = model.encoder
    p = enc.train_prompt([("<video>\nwhat colour is the ball ?", "red")])
    q = enc.train_prompt([("what colour <video>\nis the ball ?", "red")])  # text before the video
    assert "prefix_ids" not in enc.train_batch([p, p], 4, 9, keys=["a", "b"])
    assert "prefix_ids" not in enc.train_batch([p, q], 4, 9, keys=["a", "a"])
    assert "prefix_ids" in enc.train_batch([q, q], 4, 9, keys=["a", "a"])


def _byte_tokenizer(d, chat_template: str | None):
    """A byte-level BPE tokenizer without merges plus ChatML's special tokens, saved and loaded
    through the project's loader: one id per byte, so ids are equal exactly where texts are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from visctx.pretrained import load_tokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    t = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    if chat_template:
        tok.chat_template = chat_template
    tok.save_pretrained(d)
    return load_tokenizer(d)


def test_chat_template_layout_gives_the_templates_tokens_for_a_two_turn_record(tmp_path):
    """model.prompt: {chat_template: true} lays a two-turn record out token for token as the
    tokenizer's own template (Qwen2's ChatML) writes it, the visual block where <video> is."""
    from pathlib import Path

    from visctx.model import chat_template_format, prompt_layout

    template = (Path(__file__).parent / "fixtures/qwen2_chat_template.jinja").read_text()
    tok = _byte_tokenizer(tmp_path / "tok", template)
    fmt = prompt_layout(tok, {"chat_template": True, "frame_label": ""})
    assert fmt == chat_template_format(tok, frame_label="")
    assert fmt.system_prefix == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert (fmt.user_prefix, fmt.turn_separator) == ("<|im_start|>user\n", "")
    assert fmt.assistant_prefix == "<|im_end|>\n<|im_start|>assistant\n" and fmt.answer_suffix == "<|im_end|>\n"

    turns = [("<video>\nwhat colour is the ball?", "dark red"), ("how many times did it flash?", "3")]
    text = tok.apply_chat_template([{"role": r, "content": c} for h, g in turns
                                    for r, c in (("user", h.replace("<video>\n", "<video>")), ("assistant", g))],
                                   tokenize=False)
    before, after = text.split("<video>")
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    p = PromptEncoder(tok, fmt).train_prompt(turns)
    assert list(p.pre) == ids(before) and list(p.post) == ids(after)
    assert ids(before + "<video>" + after) == ids(text)  # the pieces are the whole template's tokens
    answers = [i for i, lab in zip(p.post, p.post_labels) if lab != IGNORE]
    assert answers == ids("dark red<|im_end|>\n") + ids("3<|im_end|>\n")  # each answer and its closing tokens

    # the paper preset over the default's empty pieces: the template's layout still
    assert prompt_layout(tok, {"chat_template": True, "user_prefix": "", "frame_label": ""}) == fmt
    with pytest.raises(ValueError, match="only frame_label"):
        prompt_layout(tok, {"chat_template": True, "user_prefix": "x"})
    with pytest.raises(ValueError, match="no chat template"):
        prompt_layout(_byte_tokenizer(tmp_path / "plain", None), {"chat_template": True})
