"""The frozen vision tower (tiny SigLIP from a config) and the feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visctx.features import (FeatureStore, build_tiny_vision_tower, encode_frames, encode_shard,
                             load_vision_tower, preprocess)


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    return build_tiny_vision_tower(tmp_path_factory.mktemp("tower"), hidden_size=16, intermediate_size=32)


def _frames(n, size=54, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_build_load_encode_shape(tower):
    model, processor = load_vision_tower(tower)
    assert not model.training and model.config._attn_implementation == "sdpa"
    feats = encode_frames(model, processor, _frames(5), layer=-2, batch_size=2)
    assert feats.shape == (5, 27, 27, 16) and feats.dtype == torch.float32


def test_build_is_seeded(tmp_path, tower):
    other = build_tiny_vision_tower(tmp_path / "again", hidden_size=16, intermediate_size=32)
    a, _ = load_vision_tower(tower)
    b, _ = load_vision_tower(other)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_layers_match_the_untruncated_forward(tower):
    """encode_frames skips the layers after ``layer``; the features are those of the full model."""
    model, processor = load_vision_tower(tower)
    x = _frames(3)
    got = {layer: encode_frames(model, processor, x, layer=layer) for layer in (-2, -1, 0, 2, 1)}
    with torch.inference_mode():
        ref = model(pixel_values=preprocess(x, processor), output_hidden_states=True).hidden_states
    assert len(ref) == 3
    for layer, feats in got.items():
        torch.testing.assert_close(feats.reshape(3, 729, -1), ref[layer])
    with pytest.raises(ValueError, match="layer=5"):
        encode_frames(model, processor, x, layer=5)


def test_preprocess_matches_the_processor_and_resizes(tower):
    from PIL import Image

    _, processor = load_vision_tower(tower)
    x = _frames(2)
    ref = processor(images=[Image.fromarray(f) for f in x], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(preprocess(x, processor), ref)
    assert preprocess(_frames(2, size=27), processor).shape == (2, 3, 54, 54)


def test_loads_the_vision_part_of_a_full_siglip_checkpoint(tmp_path, tower):
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    vision = json.loads((tower / "config.json").read_text())
    cfg = SiglipConfig(text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                    "intermediate_size": 32, "vocab_size": 64},
                       vision_config={k: vision[k] for k in ("image_size", "patch_size", "hidden_size",
                                                             "num_hidden_layers", "num_attention_heads",
                                                             "intermediate_size")})
    full = SiglipModel(cfg)
    full.save_pretrained(tmp_path)
    SiglipImageProcessorPil(size={"height": 54, "width": 54}).save_pretrained(tmp_path)
    model, processor = load_vision_tower(tmp_path)
    torch.testing.assert_close(model.embeddings.patch_embedding.weight,
                               full.vision_model.embeddings.patch_embedding.weight)
    assert encode_frames(model, processor, _frames(1)).shape == (1, 27, 27, 16)


def test_missing_tower_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot load a SigLIP vision tower"):
        load_vision_tower(tmp_path / "nope")


def _write_frame_shard(d, i, keys, F=3, seed=0):
    np.save(d / f"frames-{i}.npy", np.stack([_frames(F, seed=seed + j) for j in range(len(keys))]))
    (d / f"frames-{i}.json").write_text(json.dumps({"videos": keys, "frames": F, "size": 54, "fps": 1.0}))


def test_encode_shard_and_feature_store_round_trip(tmp_path, tower):
    feats = tmp_path / "features"
    feats.mkdir()
    shards = [["train/a.mp4", "train/b.mp4"], ["train/c.mp4"]]
    for i, keys in enumerate(shards):
        _write_frame_shard(tmp_path, i, keys, seed=10 * i)
        meta = encode_shard(tmp_path / f"frames-{i}.npy", tmp_path / f"frames-{i}.json", tower,
                            feats / f"shard-{i:03d}.npy", feats / f"shard-{i:03d}.json", batch_size=4)
        assert meta["videos"] == keys and (meta["frames"], meta["grid"], meta["dim"]) == (3, 27, 16)
        assert meta["layer"] == -2 and meta["vision_tower"] == str(tower)
    store = FeatureStore(feats)
    assert store.keys() == ["train/a.mp4", "train/b.mp4", "train/c.mp4"] and len(store) == 3
    assert (store.frames, store.grid, store.dim) == (3, 27, 16)
    assert "train/c.mp4" in store and "train/x.mp4" not in store
    one = store.get("train/b.mp4")
    assert one.shape == (3, 27, 27, 16) and one.dtype == np.float16
    model, processor = load_vision_tower(tower)
    direct = encode_frames(model, processor, np.load(tmp_path / "frames-0.npy")[1])
    np.testing.assert_allclose(one.astype(np.float32), direct.numpy(), rtol=1e-2, atol=1e-2)
    many = store.get_many(["train/c.mp4", "train/a.mp4"])
    assert many.shape == (2, 3, 27, 27, 16)
    np.testing.assert_array_equal(many[1], store.get("train/a.mp4"))
    with pytest.raises(KeyError, match=r"train/x.mp4.*features"):
        store.get("train/x.mp4")
    assert not list(feats.glob("*.tmp"))


def test_feature_store_without_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature shards"):
        FeatureStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="no feature shards"):
        FeatureStore(tmp_path / "missing")
