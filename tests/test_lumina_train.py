"""Lumina 2 trains end to end through ``lora-studio train`` on a tiny model written as users have it (the NextDiT
file under ComfyUI's prefix, gemma_2_2b.safetensors, the Flux AE, a tokenizer_cache_dir), learns (the held-out loss
falls), writes sd-scripts' names and metadata, renders samples, and its file loads in diffusers once converted."""

import json

import pytest
import torch
from conftest import built_once, run_cli, write_config
from lora_checks import held_out_losses
from safetensors import safe_open
from safetensors.torch import load_file

from lora_studio.config import build_config
from lora_studio.models.loading import load_components
from lora_studio.network.lora import LoRANetwork


def lumina_settings(models: dict, data, out, **extra) -> dict:
    settings = {**models, "train_data_dir": str(data), "output_dir": str(out), "output_name": "lumina_lora",
                "resolution": "64", "train_batch_size": 2, "max_train_steps": 16, "learning_rate": 4e-3,
                "network_dim": 4, "network_alpha": 4.0, "seed": 7, "cache_latents": True, "validation_split": 0.25,
                "validate_every_n_steps": 8, "system_prompt": "You are an assistant", "gemma2_max_token_length": 64}
    settings.update(extra)
    return settings


@pytest.fixture(scope="session")
def lumina_run(tmp_path_factory):
    """The tiny Lumina 2 and one short run with a sample prompt, built once for every worker."""
    def build(root):
        from lora_studio.demo import write_dataset
        from lora_studio.models.tiny_lumina import write_tiny_lumina

        models = write_tiny_lumina(root / "model", seed=3, comfy_prefix=True)
        data = write_dataset(root / "data", count=8, repeats=3)
        (root / "prompts.txt").write_text("lsdemo shape, red disc --n blurry --w 64 --h 64 --d 1 --s 4 --l 4\n")
        settings = lumina_settings(models, data, root / "out", sample_prompts=str(root / "prompts.txt"),
                                   sample_every_n_steps=16)
        run_cli("train", "--config", str(write_config(root / "run.toml", settings)))
        return {"models": models, "data": str(data)}
    return built_once(tmp_path_factory, "lumina-run", build)


def test_trains_learns_and_writes_sd_scripts_file(lumina_run, tmp_path):
    from lora_studio.demo import write_dataset

    root, info = lumina_run
    path = root / "out" / "lumina_lora.safetensors"
    tensors = load_file(str(path))
    stems = {k.split(".")[0] for k in tensors}
    unet = {s for s in stems if s.startswith("lora_unet_")}
    # tiny: 2 layers x 6 + 2 noise refiners x 6 + 2 context refiners x 5 + the final layer's 2
    assert len(unet) == 36 and "lora_unet_context_refiner_0_adaLN_modulation_1" not in unet
    assert {"lora_unet_layers_1_attention_qkv", "lora_unet_noise_refiner_0_adaLN_modulation_1",
            "lora_unet_final_layer_linear"} <= unet
    assert tensors["lora_unet_layers_0_attention_qkv.lora_up.weight"].shape == (48 + 24 + 24, 4)  # q, k, v fused
    assert sorted(s for s in stems if s not in unet)[0] == "lora_te_layers_0_mlp_down_proj"
    assert len(stems - unet) == 2 * 7
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "lumina2" and meta["modelspec.architecture"] == "lumina-2/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Alpha-VLLM/Lumina-Image-2.0"
    assert "modelspec.prediction_type" not in meta
    assert (meta["ss_timestep_sampling"], float(meta["ss_discrete_flow_shift"]), meta["ss_model_prediction_type"]) \
        == ("shift", 6.0, "raw")
    assert meta["ss_weighting_scheme"] == "uniform" and float(meta["ss_sigmoid_scale"]) == 1.0
    events = [json.loads(line) for line in (root / "out" / "lumina_lora_events.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("type") == "validation"]
    assert list((root / "out" / "sample").glob("*.png")), "the sample prompt rendered"

    cfg = build_config(lumina_settings(info["models"], info["data"], root / "out"))
    held_out = write_dataset(tmp_path / "held", count=4, repeats=1, seed=99)
    base, trained = held_out_losses(cfg, path, held_out)
    assert trained < base * 0.97, (base, trained)


def test_recipe_reversed_time_target_prompt_and_latents(lumina_run):
    """The transformer gets t = 1 - sigma and Gemma2's states with their mask; the target is latents - noise; the
    caption carries the system prompt; latents are the Flux AE's (z - 0.1159) x 0.3611, once."""
    from lora_studio.models.lumina_parts import with_system_prompt
    from lora_studio.training.vae import encode_latents

    root, info = lumina_run
    cfg = build_config(lumina_settings(info["models"], info["data"], root / "x"))
    components = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    family = components.family
    assert family.vae_scale_and_shift(components.vae) == pytest.approx((0.3611, 0.1159))
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = components.vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
        normalised = encode_latents(components.vae, pixels, "cpu", torch.Generator().manual_seed(0),
                                    family.vae_scale_and_shift(components.vae))
    assert torch.allclose(normalised, (raw - 0.1159) * 0.3611, atol=1e-6)
    assert with_system_prompt("a cat", "Be good") == "Be good <Prompt Start> a cat"
    tokenizer = components.tokenizers[0]
    options = family.prompt_options(cfg)
    assert options == {"gemma2_max_token_length": 64, "system_prompt": "You are an assistant"}
    cond = family.encode_prompt(components, ["a cat", "lsdemo shape, red disc"], "cpu", options)
    expected = tokenizer(["You are an assistant <Prompt Start> a cat"])["input_ids"][0]
    assert int(cond["gemma2_mask"][0].sum()) == len(expected) and expected[0] == tokenizer.bos_token_id
    assert cond["gemma2"].shape == (2, 64, 32)
    seen = {}
    handle = components.denoiser.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    latents, noise, sigmas = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8), torch.tensor([0.25, 0.9])
    with torch.no_grad():
        pred, target = family.objective(components, cfg).prediction_and_target(components, latents, noise, sigmas,
                                                                               cond)
    handle.remove()
    assert torch.allclose(seen["t"], torch.tensor([0.75, 0.1]))
    s = sigmas[:, None, None, None]
    assert torch.allclose(seen["x"], (1 - s) * latents + s * noise)
    assert torch.equal(seen["cap_mask"], cond["gemma2_mask"])
    assert torch.equal(target, latents - noise) and pred.shape == latents.shape


def test_diffusers_loads_the_converted_file_and_changes_as_the_lora_says(lumina_run, tmp_path):
    """diffusers' Lumina 2 loader does not read sd-scripts' names; after ``lora convert --to diffusers`` every module
    of the file loads into a diffusers Lumina2Transformer2DModel (through Lumina2LoraLoaderMixin's own functions) and
    its prediction moves as ours does with the LoRA attached."""
    from diffusers import Lumina2Transformer2DModel
    from diffusers.loaders.lora_pipeline import Lumina2LoraLoaderMixin
    from test_lumina_net import _to_diffusers


    root, info = lumina_run
    source = root / "out" / "lumina_lora.safetensors"
    out = tmp_path / "diffusers_lora.safetensors"
    run_cli("lora", "convert", str(source), str(out), "--to", "diffusers", "--model",
            info["models"]["pretrained_model_name_or_path"])
    cfg = build_config(lumina_settings(info["models"], info["data"], root / "x"))
    c = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    config = c.denoiser.config
    theirs = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, hidden_size=config.dim, num_layers=config.n_layers,
        num_refiner_layers=config.n_refiner_layers, num_attention_heads=config.n_heads,
        num_kv_heads=config.n_kv_heads, multiple_of=16, ffn_dim_multiplier=config.ffn_hidden / (4 * config.dim),
        axes_dim_rope=config.axes_dims, axes_lens=config.axes_lens, cap_feat_dim=config.cap_feat_dim).eval()
    theirs.load_state_dict(_to_diffusers(c.denoiser.state_dict(), config), strict=True)
    x, cap = torch.randn(1, 16, 8, 8), torch.randn(1, 12, config.cap_feat_dim)
    mask, t = torch.ones(1, 12, dtype=torch.long), torch.tensor([0.6])
    with torch.no_grad():
        before = theirs(x, t, cap, mask.bool(), return_dict=False)[0]
        state = Lumina2LoraLoaderMixin.lora_state_dict(str(out))
        transformer_keys = [k for k in state if k.startswith("transformer.")]
        assert len(transformer_keys) == 2 * (36 + 6 * 2)  # each of the 6 fused qkv is 3 modules there (to_q/k/v)
        Lumina2LoraLoaderMixin.load_lora_into_transformer({k: state[k] for k in transformer_keys}, theirs)
        after = theirs(x, t, cap, mask.bool(), return_dict=False)[0]
        network = LoRANetwork(c, 4, 4.0, train_text_encoder=False)
        network.load_weights(source)
        network.attach()
        ours = c.denoiser(x, t, cap, mask)
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(after, ours, atol=1e-4), (after - ours).abs().max()


def test_settings_name_what_is_missing_or_wrong(lumina_run, tmp_path):
    """A missing gemma2, a token length not a multiple of 8, files swapped between settings, no tokenizer offline:
    each a UserError naming the setting."""
    from lora_studio.errors import UserError
    from lora_studio.models.lumina import LuminaFamily
    from lora_studio.models.lumina_parts import load_tokenizer

    root, info = lumina_run
    family = LuminaFamily()
    models = info["models"]
    with pytest.raises(UserError, match="gemma2"):
        family.check_settings(build_config({**lumina_settings(models, info["data"], tmp_path), "gemma2": None}))
    with pytest.raises(UserError, match="gemma2_max_token_length"):
        family.check_settings(build_config(lumina_settings(models, info["data"], tmp_path,
                                                           gemma2_max_token_length=60)))
    with pytest.raises(UserError, match="ae: .* is not a Flux autoencoder"):
        family.check_settings(build_config(lumina_settings(models, info["data"], tmp_path, ae=models["gemma2"])))
    assert family.check_settings(build_config(lumina_settings(models, info["data"], tmp_path))) == []
    with pytest.raises(UserError, match="tokenizer_cache_dir"):
        load_tokenizer(str(tmp_path / "empty"))


def test_comfyui_names_and_the_lora_tools_hooks(lumina_run):
    """ComfyUI's rule (comfy/lora.py model_lora_keys_unet): for every ``diffusion_model.X.weight`` of the loaded model
    it accepts ``lora_unet_`` + X with "." -> "_"; each transformer module of our file is one of those, read from the
    ComfyUI-prefixed model file. The tools see a Lumina file (and no Flux file) in it, its fused qkv, and say which
    apps read it."""
    from lora_studio.lora_delta import read_lora_file
    from lora_studio.models.lumina import LuminaFamily
    from lora_studio.models.registry import FAMILIES

    root, info = lumina_run
    with safe_open(info["models"]["pretrained_model_name_or_path"], "pt") as f:
        accepted = {"lora_unet_" + k.removeprefix("model.diffusion_model.").removesuffix(".weight").replace(".", "_")
                    for k in f.keys() if k.endswith(".weight") and len(f.get_slice(k).get_shape()) == 2}
    path = root / "out" / "lumina_lora.safetensors"
    lora = read_lora_file(path)
    unet = [s for s in lora.modules if s.startswith("lora_unet_")]
    assert unet and set(unet) <= accepted
    family = LuminaFamily()
    assert [f.name for f in FAMILIES if getattr(f, "lora_file_fits", None) and f.lora_file_fits(lora.modules)] \
        == ["lumina2"]
    summary = family.lora_file_summary(lora.modules, lora.metadata)
    assert summary["fused"] == {"qkv": 6, "stored_split": 0}
    assert summary["module_types"]["layers attention_qkv"]["modules"] == 2
    assert family.lora_weight_keys("gemma2", ["model.layers.0.self_attn.q_proj.weight"], targets_only=True) == \
        {"lora_te_layers_0_self_attn_q_proj": "model.layers.0.self_attn.q_proj.weight"}
    apps = family.lora_apps(list(lora.modules), plain=True)
    assert apps["ComfyUI"] == "yes" and apps["diffusers"].startswith("convert it first")
