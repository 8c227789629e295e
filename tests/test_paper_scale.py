"""The paper-size model, built on the meta device (no weights, no download): ~8.06B parameters."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel
from transformers.initialization import no_init_weights

from visctx.config import Arm
from visctx.context import visual_context
from visctx.model import Projector

# Qwen/Qwen2-7B and google/siglip-so400m-patch14-384 (their published config.json values)
QWEN2_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072,
                tie_word_embeddings=False)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     image_size=384, patch_size=14)


@pytest.fixture(scope="module")
def paper_model():
    with torch.device("meta"), no_init_weights():  # shapes only: no memory, no init
        llm = Qwen2ForCausalLM(Qwen2Config(**QWEN2_7B))
        tower = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_SO400M))
    projector = Projector(SIGLIP_SO400M["hidden_size"], QWEN2_7B["hidden_size"])  # real: 17M parameters
    return llm, tower, projector


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_is_the_papers(paper_model):
    llm, tower, projector = paper_model
    assert 7.55e9 < count(llm) < 7.65e9  # Qwen2-7B: 7.62B
    assert 0.40e9 < count(tower) < 0.44e9  # SigLIP-so400m vision tower
    total = count(llm) + count(tower) + count(projector)
    assert 8.0e9 < total < 8.1e9, total  # paper-notes §2: ~8.06B


def test_shapes_through_the_projector(paper_model):
    llm, tower, projector = paper_model
    grid = SIGLIP_SO400M["image_size"] // SIGLIP_SO400M["patch_size"]
    assert grid == 27  # 384 / 14: the 27 x 27 patch grid every operator assumes
    feats = torch.randn(1, 32, grid, grid, SIGLIP_SO400M["hidden_size"])
    ctx = visual_context(feats, Arm(T=8, M=49, token_op="pool", pooled_from=32))
    assert tuple(ctx.shape) == (1, 8, 49, 1152)
    with torch.no_grad():
        assert tuple(projector(ctx).shape) == (1, 8, 49, QWEN2_7B["hidden_size"])
    assert llm.get_input_embeddings().weight.shape[1] == QWEN2_7B["hidden_size"]
