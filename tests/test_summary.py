"""Video-XL's summary tokens (visctx.summary) pinned on the tiny Qwen2: the layout, what each
position attends to (read from the model's own attention weights), the memory kept per window,
the gradients, the model dir round trip, and that without summary slots nothing changes."""

import copy

import pytest
import torch

from visctx.config import Arm
from visctx.model import IGNORE, VideoModel
from visctx.pretrained import load_llm
from visctx.summary import FLAGS, cache_bytes, prefill
from tiny_llm import tiny_llm

D = 8
WORDS = "what colour is the ball ? how many times did bar flash red green blue yellow dark light 1 2 3 4"
T, M, R, W = 3, 5, 2, 6  # 15 raw tokens in windows of 6, 6, 3: summaries after raw 2, 4, 6 | 8, 10, 12 | 14, 15


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    return tiny_llm(tmp_path_factory.mktemp("llm"), WORDS, max_frames=8)


@pytest.fixture
def model(llm_dir):
    torch.manual_seed(0)
    llm, tok = load_llm(llm_dir)
    m = VideoModel(llm, tok, vision_dim=D, summary_tokens=True).eval()
    with torch.no_grad():  # summary projections unlike the originals, so that using them shows
        for p in m.summary_tokens.proj.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def prompts(model, qa=(("what colour is the ball ?", "red"), ("how many times did the bar flash ?", "3"))):
    return [model.encoder.train_prompt([("<video>\n" + q, a)]) for q, a in qa]


def batch_of(model, ps, keys=None, seed=0, n_visual=None):
    b = model.encoder.train_batch(ps, T, M, keys=keys, summary=(R, W))
    n = n_visual or (len(b["prefix_keys"]) if "prefix_keys" in b else len(ps))
    b["visual"] = torch.randn(n, T, M, D, generator=torch.Generator().manual_seed(seed))
    return b


def test_the_layout_puts_a_summary_after_every_r_raw_tokens_of_each_window(model):
    ids, slots, sums, window = model.encoder.summary_block(T, M, R, W)
    assert len(slots) == T * M and len(sums) == Arm(T, M, "mask", summary=R, summary_window=W).summaries == 8
    raw_before = [int((slots < s).sum()) for s in sums]  # raw tokens before each summary
    assert raw_before == [2, 4, 6, 8, 10, 12, 14, 15]
    assert window[sums].tolist() == [0, 0, 0, 1, 1, 1, 2, 2] and window[slots].tolist() == [g // W for g in range(15)]
    label = model.encoder.ids("frame 2:")
    start = int(slots[M])  # frame 2's first raw token (raw 5, window 0) follows its label
    assert ids[start - len(label):start].tolist() == list(label) and (window[start - len(label):start] == 0).all()
    assert len(ids) == len(slots) + len(sums) + sum(len(model.encoder.ids(f"frame {i}:")) for i in (1, 2, 3))
    assert model.encoder.visual_block(T, M, (R, W))[0].tolist() == ids.tolist()


def attention_weights(model, b):
    """Layer-0 attention probabilities [B, heads, L, L] of the model's own eager forward."""
    model.llm.set_attn_implementation("eager")
    emb = model.embed(b)
    out = model.llm.base_model(inputs_embeds=emb, output_attentions=True, **model._summary_inputs(b, emb.shape[1]))
    return out.attentions[0].amax(1)  # any head


def test_text_after_the_video_attends_only_to_summaries_and_text(model):
    b = batch_of(model, prompts(model))
    with torch.no_grad():
        att = attention_weights(model, b)
    for r in range(2):
        raw, sums = b["vis_index"][r], b["sum_index"][r]
        end, n = int(sums[-1]) + 1, int(b["lengths"][r])
        after = att[r, end:n]  # every position after the video
        assert (after[:, raw] == 0).all()
        assert (after[:, sums] > 0).all()  # every summary of every window
        text = torch.ones(end, dtype=torch.bool)
        text[raw], text[sums] = False, False
        assert (after[:, :end][:, text] > 0).all()  # the prompt and the frame labels


def test_a_summary_attends_to_its_window_and_earlier_summaries_only(model):
    b = batch_of(model, prompts(model)[:1])
    with torch.no_grad():
        att = attention_weights(model, b)[0]
    raw, sums, win = b["vis_index"][0], b["sum_index"][0], b["window_id"][0]
    for j, s in enumerate(sums.tolist()):
        seen = att[s]
        own = raw[(win[raw] == win[s]) & (raw < s)]
        assert len(own) > 0 and (seen[own] > 0).all()  # its window's raw tokens so far
        assert (seen[raw[win[raw] != win[s]]] == 0).all()  # no other window's raw token
        assert (seen[sums[:j]] > 0).all() and (seen[s + 1:] == 0).all()  # earlier summaries; nothing later
    # a raw token of window 1 no longer sees window 0's raw tokens, only its summaries
    first1 = int(raw[W])
    assert (att[first1, raw[:W]] == 0).all() and (att[first1, sums[:3]] > 0).all()


def test_the_cache_keeps_only_the_summaries_and_text_of_each_finished_window(model):
    """The evicting prefill: after each window the cache grows by that window's summaries and
    labels, never by its raw tokens; the text after the video then sees what the mask lets it."""
    enc = model.encoder
    b = batch_of(model, prompts(model)[:1])
    ids, slots, sums, window = enc.summary_block(T, M, R, W)
    labels = [len(enc.ids(f"frame {i}:")) for i in (1, 2, 3)]  # frame 2's label is in window 0, frame 3's in 1
    with torch.no_grad():
        emb = model.embed(b)
        end = int(b["sum_index"][0, -1]) + 1
        cache, _, kept = prefill(model.llm, emb[:, :end], *model._summary_layout(b, 0, end))
    assert kept == [labels[0] + labels[1] + 3, labels[0] + labels[1] + 3 + labels[2] + 3, sum(labels) + 8]
    cfg = model.llm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert cache_bytes(cache) == cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * kept[-1] * 4
    assert kept[-1] == end - T * M  # every raw token's keys and values dropped


def test_the_evicting_cache_equals_the_masked_forward(model, monkeypatch):
    """Shared prefixes run window by window with eviction; full rows in one forward with the 4-D
    mask; full rows again where checkpointing turns the cache off: the same loss and gradients."""
    monkeypatch.setattr("visctx.model.SHARED_PREFIX_MIN", 0)
    ps = prompts(model) * 2
    videos = ["a", "a", "b", "b"]
    shared = batch_of(model, ps, keys=videos)
    full = batch_of(model, ps, n_visual=4)
    assert "row_prefix" in shared and "row_prefix" not in full
    # rows of different videos take the prefix layout too: a prefix each, through the evicting cache
    assert model.encoder.train_batch(ps[:2], T, M, keys=["a", "b"], summary=(R, W))["row_prefix"].tolist() == [0, 1]
    full["visual"] = shared["visual"][shared["row_prefix"]]
    model.train()
    results = []
    for b in (shared, full, model._unshared(shared)):
        model.zero_grad()
        loss = model(b)
        loss.backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        results.append((float(loss.detach()), torch.cat(grads)))
    for loss, grad in results[1:]:
        assert abs(loss - results[0][0]) < 1e-5 and torch.allclose(grad, results[0][1], atol=1e-5)
    model.eval()
    enc = model.encoder
    one = [enc.choice_prompt("what colour is the ball ?", ["red", "green", "blue"], 0),
           enc.choice_prompt("how many times did the bar flash ?", ["1", "2"], 1)]
    multi = [enc.choice_prompt("what colour is the ball ?", ["dark red", "green"], 0), one[1]]
    for items in (one, multi):  # one-token options (the next token read) and multi-token ones (their NLL)
        a = enc.choice_batch(items * 2, T, M, keys=["a", "a", "b", "b"], summary=(R, W))
        f = enc.choice_batch(items * 2, T, M, summary=(R, W))
        a["visual"] = torch.randn(2, T, M, D)
        f["visual"] = a["visual"].repeat_interleave(2, 0)
        assert "row_prefix" in a
        with torch.no_grad():
            torch.testing.assert_close(model.score_options(a)["logprob"], model.score_options(f)["logprob"],
                                       atol=1e-5, rtol=1e-5)


def test_generation_decodes_from_the_summaries(model):
    """Greedy decoding from the evicting cache gives the masked forward's next token."""
    items = [model.encoder.choice_prompt(q, ["red", "green"], 0) for q in ("what colour is the ball ?", "bar ?")]
    b = model.encoder.generation_batch(items, T, M, summary=(R, W))
    b["visual"] = torch.randn(2, T, M, D)
    with torch.no_grad():
        h = model.hidden_states(b)
        nxt = model.llm.get_output_embeddings()(h[torch.arange(2), b["lengths"] - 1]).argmax(-1)
        texts = model.generate(b, max_new_tokens=1)
    want = [model.tokenizer.decode([int(t)], skip_special_tokens=True).strip() for t in nxt]
    assert texts == want and len(model.generate(b, max_new_tokens=3)) == 2


def test_the_summary_embedding_and_every_layers_projections_learn(model):
    model.train()
    b = batch_of(model, prompts(model))
    model(b).backward()
    st = model.summary_tokens
    assert st.embedding.grad is not None and st.embedding.grad.abs().sum() > 0
    n = len(st.proj)
    assert n == model.llm.config.num_hidden_layers
    for i, layer in enumerate(st.proj):
        # a summary's own output in the last layer reaches no loss (only its keys and values are read)
        for name in ("k", "v") + (("q",) if i < n - 1 else ()):
            assert layer[name].weight.grad.abs().sum() > 0, (i, name)


def test_the_summary_projections_start_as_the_layers_own(llm_dir):
    llm, tok = load_llm(llm_dir)
    m = VideoModel(llm, tok, vision_dim=D, summary_tokens=True)
    attn = m.llm.base_model.layers[1].self_attn
    assert torch.equal(m.summary_tokens.proj[1]["v"].weight, attn.v_proj.weight)
    assert m.summary_tokens.proj[1]["v"].weight is not attn.v_proj.weight


def test_without_summary_slots_the_model_is_the_plain_model_exactly(model, llm_dir):
    """r = 1 is no summary tokens: the same batch, and with the hooks installed the same numbers."""
    torch.manual_seed(0)
    llm, tok = load_llm(llm_dir)
    plain = VideoModel(llm, tok, vision_dim=D).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("summary_tokens.")})
    arm = Arm(T, 9, "sample")
    assert arm.summary_layout is None
    ps = prompts(model)
    b = model.encoder.train_batch(ps, arm.T, arm.M, summary=arm.summary_layout)
    assert "sum_index" not in b
    assert torch.equal(b["input_ids"], plain.encoder.train_batch(ps, arm.T, arm.M)["input_ids"])
    b["visual"] = torch.randn(2, arm.T, arm.M, D)
    with torch.no_grad():
        assert torch.equal(model.per_row_nll(b)[0], plain.per_row_nll(b)[0])
        # the flags reach the layers but nothing is flagged: the layers' own projections
        emb = model.embed(b)
        flagged = model.llm.base_model(inputs_embeds=emb, **{FLAGS: torch.zeros(emb.shape[:2], dtype=torch.bool)})
        assert torch.equal(flagged.last_hidden_state, plain.llm.base_model(inputs_embeds=emb).last_hidden_state)


def test_the_model_dir_round_trips_the_summary_tokens(model, tmp_path):
    b = model.encoder.choice_batch([model.encoder.choice_prompt("what colour is the ball ?", ["dark red", "green"], 0)],
                                   T, M, summary=(R, W))
    b["visual"] = torch.randn(1, T, M, D)
    with torch.no_grad():
        model.summary_tokens.embedding.add_(1.0)
        before = model.score_options(b)["logprob"]
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "summary_tokens.safetensors").is_file()
    loaded = VideoModel.load(tmp_path / "m").eval()
    assert torch.equal(loaded.summary_tokens.embedding, model.summary_tokens.embedding)
    assert torch.equal(loaded.score_options(b)["logprob"], before)
    twin = copy.deepcopy(loaded)  # its hooks use its own summary projections
    with torch.no_grad():
        for p in twin.summary_tokens.proj.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin.score_options(b)["logprob"], before)
        assert torch.equal(loaded.score_options(b)["logprob"], before)
    plain = copy.deepcopy(model)
    plain.summary_tokens = None
    plain.save(tmp_path / "p")
    assert not (tmp_path / "p" / "summary_tokens.safetensors").exists()


def test_summary_batches_need_a_model_with_summary_tokens_and_a_mask_taking_attention(model, llm_dir):
    llm, tok = load_llm(llm_dir)
    b = batch_of(model, prompts(model))
    with pytest.raises(ValueError, match="no summary tokens"):
        VideoModel(llm, tok, vision_dim=D)(b)
    model.llm.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa or eager"):
        model(b)
    model.llm.config._attn_implementation = "sdpa"
    assert (b["labels"] != IGNORE).any()
