"""Anima's parts from the files users download: Qwen3 as one file or an HF folder, the Qwen-Image VAE in ComfyUI /
Wan names (normalised once, chunked and cache-free giving the same numbers), the tokenizers offline, sd-scripts'
caption dropout on cached outputs."""

import pytest
import torch
from conftest import built_once

from lora_studio.errors import UserError
from lora_studio.models import anima_parts as ap
from lora_studio.models import tiny_anima


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return built_once(tmp_path_factory, "anima-parts", lambda root: {
        v: tiny_anima.write_tiny_anima(root / v, v, seed=3) for v in ("single", "folder", "adapter_apart")})[1]


def test_qwen3_file_and_folder_give_the_same_conditioning(files):
    conds = []
    for variant in ("single", "folder"):
        s = files[variant]
        qwen3 = ap.load_qwen3(s["qwen3"], torch.float32)
        qwen_tok, t5_tok = ap.load_tokenizers(s["tokenizer_cache_dir"], s["qwen3"])
        conds.append(ap.encode_prompts(qwen3, qwen_tok, t5_tok, ["a red cat", ""], 16, 12, "cpu"))
    for name in conds[0]:
        assert torch.equal(conds[0][name], conds[1][name])
    cond = conds[0]
    assert cond["qwen3"].shape == (2, 16, 32) and cond["t5_ids"].shape == (2, 12)
    assert cond["qwen3_mask"][0].sum() == len("a red cat")  # one byte a token in the tiny tokenizer, no special ones
    assert torch.all(cond["qwen3"][0, 9:] == 0)  # padded positions zeroed, as sd-scripts
    assert cond["t5_ids"][1, 0] == 1 and cond["t5_mask"][1].sum() == 1  # "" -> </s>


def test_tokenizers_missing_offline_name_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="tokenizer_cache_dir.*Qwen/Qwen3-0.6B"):
        ap.qwen3_tokenizer(str(tmp_path), tmp_path / "qwen.safetensors")
    with pytest.raises(UserError, match="tokenizer_cache_dir: the T5-XXL tokenizer .* Anima's adapter ids"):
        ap.t5_tokenizer(str(tmp_path))


def test_vae_from_comfy_names_normalises_once_and_chunks_exactly(files):
    s = files["single"]
    vae = ap.load_vae(s["vae"], torch.float32)
    reference = tiny_anima.build_tiny_vae(3 + 2)
    pixels = torch.rand(1, 3, 64, 48) * 2 - 1
    latents = vae.encode(pixels).latent_dist.sample()
    mode = reference.encode(pixels.unsqueeze(2)).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(ap.LATENTS_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(ap.LATENTS_STD).view(1, -1, 1, 1)
    assert latents.shape == (1, 16, 8, 6)
    assert torch.allclose(latents, (mode - mean) / std, atol=1e-6)
    from lora_studio.models.anima import Anima
    from lora_studio.training.vae import encode_latents

    engine = encode_latents(vae, pixels, "cpu", None, Anima().vae_scale_and_shift(vae))  # the engine's path
    assert torch.equal(engine, latents)
    chunked = ap.load_vae(s["vae"], torch.float32, chunk_size=3, disable_cache=True)
    assert chunked.chunk_size == 4  # odd -> the next even size, as sd-scripts
    assert torch.allclose(chunked.encode(pixels).latent_dist.sample(), latents, atol=1e-5)
    decoded = vae.decode(latents).sample
    assert decoded.shape == (1, 3, 64, 48)
    assert torch.allclose(chunked.decode(latents).sample, decoded, atol=1e-5)
    assert ap.is_qwen_image_vae(["encoder.downsamples.0.residual.0.gamma"])
    with pytest.raises(UserError, match="vae: .* is not the Qwen-Image VAE"):
        ap.load_vae(s["qwen3"], torch.float32)


def test_caption_dropout_on_cached_outputs_is_sd_scripts():
    from lora_studio.models.anima import Anima

    cond = {"qwen3": torch.randn(3, 4, 8), "qwen3_mask": torch.ones(3, 4, dtype=torch.long),
            "t5_ids": torch.randint(2, 50, (3, 5)), "t5_mask": torch.ones(3, 5, dtype=torch.long)}
    kept = {k: v.clone() for k, v in cond.items()}
    out = Anima().drop_cached_condition(cond, torch.tensor([False, True, False]))
    assert torch.all(out["qwen3"][1] == 0) and torch.all(out["qwen3_mask"][1] == 0)
    assert out["t5_ids"][1].tolist() == [1, 0, 0, 0, 0] and out["t5_mask"][1].tolist() == [1, 0, 0, 0, 0]
    for name in cond:
        assert torch.equal(out[name][[0, 2]], kept[name][[0, 2]])
        assert torch.equal(cond[name], kept[name])  # the cache is not changed
    assert Anima().drop_cached_condition(cond, torch.zeros(3, dtype=torch.bool)) is cond
