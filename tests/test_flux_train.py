"""Flux.1 dev, schnell and Chroma train end to end through ``lora-studio train`` on tiny models written as users have
them (a BFL-layout transformer, separate ae / clip_l / t5xxl files, a tokenizer_cache_dir), learn (the held-out loss
falls), and write the files sd-scripts writes: its names, its counts at real size, its metadata."""

import json

import pytest
import torch
from conftest import flux_settings, run_cli, write_config
from lora_checks import held_out_losses
from safetensors import safe_open
from safetensors.torch import load_file

from lora_studio.config import build_config
from lora_studio.models.loading import load_components

from lora_studio.models.tiny_flux import VARIANTS
from lora_studio.network.lora import LoRANetwork


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_learns_and_writes_sd_scripts_names(flux_runs, tmp_path, variant):
    root, info = flux_runs
    from lora_studio.demo import write_dataset

    out = root / f"out-{variant}"
    path = out / "flux_lora.safetensors"
    tensors = load_file(str(path))
    stems = {k.split(".")[0] for k in tensors}
    unet = sorted(s for s in stems if s.startswith("lora_unet_"))
    # tiny: 2 double + 2 single blocks; Flux: 10 a double block (img/txt x mod_lin, attn_qkv, attn_proj, mlp_0,
    # mlp_2) + 3 a single block; Chroma has no modulation layers: 8 + 2
    assert len(unet) == (2 * 8 + 2 * 2 if variant == "chroma" else 2 * 10 + 2 * 3)
    assert "lora_unet_double_blocks_0_img_attn_qkv" in unet and "lora_unet_single_blocks_1_linear1" in unet
    assert ("lora_unet_double_blocks_0_img_mod_lin" in unet) == (variant != "chroma")
    te = sorted(s for s in stems if not s.startswith("lora_unet_"))
    if variant == "chroma":
        assert te == []  # no CLIP-L; T5 only with train_t5xxl
    else:
        assert te and all(s.startswith("lora_te1_text_model_encoder_layers_") for s in te)
    qkv = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    assert qkv.shape == (3 * 128, 4)  # one fused module: q, k and v rows under one down/up pair
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == ("chroma" if variant == "chroma" else "flux1")
    assert meta["modelspec.architecture"] == {"dev": "flux-1-dev/lora", "schnell": "flux-1-schnell/lora",
                                              "chroma": "chroma/lora"}[variant]
    assert "modelspec.prediction_type" not in meta
    assert meta["ss_timestep_sampling"] == ("sigmoid" if variant == "chroma" else "shift")
    assert meta["ss_model_prediction_type"] == "raw"
    assert float(meta["ss_discrete_flow_shift"]) == pytest.approx(3.1582)
    assert meta["ss_model_type"] == ("chroma" if variant == "chroma" else "flux")
    assert meta.get("ss_guidance_scale") == {"dev": "1.0", "schnell": None, "chroma": "0.0"}[variant]
    assert meta["ss_apply_t5_attn_mask"] == ("True" if variant == "chroma" else "False")
    assert meta["ss_t5xxl_max_token_length"] == ("256" if variant == "schnell" else "512")
    events = [json.loads(line) for line in (out / "flux_lora_events.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("type") == "validation"], "the held-out images were measured"

    # learns: the loss of images the run never saw, at fixed sigmas and noise, falls below the base model's
    cfg = build_config(flux_settings(info["models"], variant, info["data"], out))
    held_out = write_dataset(tmp_path / "held", count=4, repeats=1, seed=99)
    base, trained = held_out_losses(cfg, path, held_out)
    assert trained < base * 0.97, (base, trained)


def test_module_counts_at_real_size_are_sd_scripts():
    """304 modules for dev and schnell, 228 for Chroma: built on the meta device, adapted by LoRA Studio's network
    as a run adapts them."""
    from accelerate import init_empty_weights

    from lora_studio.models.family import Components
    from lora_studio.models.flux import Chroma, FluxFamily, FluxSchnell
    from lora_studio.models.flux_net import CHROMA, FLUX_DEV, FLUX_SCHNELL, FluxTransformer

    for family, config, count in ((FluxFamily(), FLUX_DEV, 304), (FluxSchnell(), FLUX_SCHNELL, 304),
                                  (Chroma(), CHROMA, 228)):
        with init_empty_weights():
            model = FluxTransformer(config)
        network = LoRANetwork(Components(family, model, None, [], [], {}, "meta"), 1, 1.0, train_text_encoder=False)
        assert len(network.unet_stems) == count, family.title
        assert "lora_unet_single_blocks_37_linear1" in network.unet_stems
        assert "lora_unet_double_blocks_18_txt_mlp_2" in network.unet_stems


def test_recipe_guidance_sigma_target_and_latent_normalisation(flux_runs):
    """What the transformer is given: sigma (not sigma x 1000), the guidance vector 1.0 for dev (none for schnell);
    the target is noise - latents; latents are (z - 0.1159) x 0.3611 once."""
    root, info = flux_runs
    from lora_studio.training.vae import encode_latents

    cfg = build_config(info["models"]["dev"])
    components = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    family = components.family
    assert family.vae_scale_and_shift(components.vae) == pytest.approx((0.3611, 0.1159))
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        raw = components.vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
        normalised = encode_latents(components.vae, pixels, "cpu", torch.Generator().manual_seed(0),
                                    family.vae_scale_and_shift(components.vae))
    assert torch.allclose(normalised, (raw - 0.1159) * 0.3611, atol=1e-6)  # the same draw, normalised once
    seen = {}

    def spy(module, args, kwargs):
        seen.update(kwargs)
    handle = components.denoiser.register_forward_pre_hook(spy, with_kwargs=True)
    objective = family.objective(components, cfg)
    latents, noise = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    sigmas = torch.tensor([0.25, 0.75])
    cond = family.encode_prompt(components, ["a cat", "a dog"], "cpu", family.prompt_options(cfg))
    with torch.no_grad():
        pred, target = objective.prediction_and_target(components, latents, noise, sigmas, cond)
    handle.remove()
    assert torch.equal(seen["timesteps"], sigmas)
    assert torch.equal(seen["guidance"], torch.ones(2))
    assert seen["img"].shape == (2, 16, 64) and seen["txt"].shape == (2, 512, 32)
    assert torch.equal(target, noise - latents) and pred.shape == latents.shape
    schnell = build_config(info["models"]["schnell"])
    c = load_components(schnell.pretrained_model_name_or_path, None, False, options=schnell)
    assert c.family.objective(c, schnell).guidance is None


def test_kohya_flux_preset_imports_and_trains(tmp_path, flux_runs):
    """The Kohya_ss preset 'flux1D - adamw8bit fp8.json' (tests/data/kohya_flux) imports and trains the tiny dev
    model with its own recipe values (its fp8 and 8-bit optimizer need a GPU: turned off here, as a user on a CPU
    would)."""
    from pathlib import Path

    root, info = flux_runs
    preset = Path(__file__).parent / "data" / "kohya_flux" / "flux1D-adamw8bit-fp8.json"
    data = json.loads(preset.read_text())
    models = info["models"]["dev"]
    data.update({"pretrained_model_name_or_path": models["pretrained_model_name_or_path"], "ae": models["ae"],
                 "clip_l": models["clip_l"], "t5xxl": models["t5xxl"], "train_data_dir": info["data"],
                 "output_dir": str(tmp_path / "out"), "output_name": "kohya_flux", "max_resolution": "64,64",
                 "max_train_steps": 4, "max_train_epochs": 0, "epoch": 1, "optimizer": "AdamW", "fp8_base": False,
                 "fp8_base_unet": False, "mixed_precision": "no", "full_bf16": False, "save_precision": "float", "train_batch_size": 2,
                 "sample_every_n_epochs": 0, "sample_every_n_steps": 0, "cache_latents_to_disk": False,
                 "blocks_to_swap": 0, "sample_prompts": "", "log_with": "", "logging_dir": ""})
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(data))
    env_cache = tmp_path / "tok"
    import shutil

    shutil.copytree(models["tokenizer_cache_dir"], env_cache)
    run_cli("train", "--config", str(path), "--tokenizer_cache_dir", str(env_cache))
    out = tmp_path / "out" / "kohya_flux.safetensors"
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert any(k.startswith("lora_unet_double_blocks_") for k in keys)
    assert meta["ss_base_model_version"] == "flux1"
    # the preset's own recipe values are kept (not LoRA Studio's recommended shift / 3.1582)
    assert (meta["ss_timestep_sampling"], float(meta["ss_discrete_flow_shift"])) == ("sigmoid", 3.0)
    assert (meta["ss_model_prediction_type"], meta["ss_guidance_scale"]) == ("raw", "1.0")
    assert meta["ss_apply_t5_attn_mask"] == "True" and meta["ss_network_dim"] == "16"


def test_fp8_files_fp8_base_cached_text_and_lycoris_lokr(flux_runs, tmp_path):
    """The memory recipe of a 12 GB card on the tiny model: an fp8 e4m3fn T5 file kept in float8, fp8_base for the
    transformer, bf16, cached text-encoder outputs; and LoKr through lycoris.kohya with Flux's names."""
    from lora_studio.models.tiny_flux import write_t5_fp8

    root, info = flux_runs
    models = dict(info["models"]["dev"])
    models["t5xxl"] = str(write_t5_fp8(models["t5xxl"], tmp_path / "t5xxl_fp8_e4m3fn.safetensors"))
    settings = flux_settings({"dev": models}, "dev", info["data"], tmp_path / "out", max_train_steps=4,
                             fp8_base=True, mixed_precision="bf16", cache_text_encoder_outputs=True,
                             network_train_unet_only=True, validation_split=0.0, gradient_checkpointing=True)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "fp8.toml", settings)))
    assert "fp8_base: " in proc.stderr and "transformer" not in proc.stderr.split("fp8_base: ")[1].split("\n")[0] \
        or "fp8_base: " in proc.stderr
    keys = load_file(str(tmp_path / "out" / "flux_lora.safetensors"))
    assert any(k.startswith("lora_unet_single_blocks_") for k in keys)
    lokr = flux_settings({"dev": models}, "dev", info["data"], tmp_path / "lokr", max_train_steps=2,
                         network_module="lycoris.kohya", network_args=["algo=lokr", "factor=4"],
                         network_train_unet_only=True, validation_split=0.0)
    run_cli("train", "--config", str(write_config(tmp_path / "lokr.toml", lokr)))
    keys = load_file(str(tmp_path / "lokr" / "flux_lora.safetensors"))
    assert "lora_unet_double_blocks_0_img_attn_qkv.lokr_w1" in keys
    assert all(k.startswith("lora_unet_") for k in keys)


def test_blocks_to_swap_keeps_fp8_weights_of_the_swapped_blocks():
    """fp8_base with blocks_to_swap: the weights are stored in float8 before block swap starts, so a swapped block
    runs and goes back to the CPU in float8 (not in the dtype it was loaded in)."""
    import dataclasses

    from lora_studio.models.family import Components
    from lora_studio.models.flux import FluxFamily
    from lora_studio.models.flux_net import FluxTransformer
    from lora_studio.models.fp8 import FP8
    from lora_studio.models.tiny_flux import tiny_flux_config
    from lora_studio.training.build import place_denoiser
    from lora_studio.training.precision import precision_for

    config = dataclasses.replace(tiny_flux_config("dev"), depth=3, depth_single_blocks=4)  # 2 of each can swap
    c = Components(FluxFamily(), FluxTransformer(config).eval().requires_grad_(False), None, [], [], {}, "tiny")
    cfg = build_config({"fp8_base": True, "mixed_precision": "bf16", "blocks_to_swap": 2})
    place_denoiser(c, cfg, precision_for(cfg, cuda=False), torch.device("cpu"))
    model = c.denoiser
    swapped = [model.double_blocks[-1].img_attn.qkv, model.single_blocks[-1].linear1, model.single_blocks[-2].linear2]
    assert all(m.weight.dtype == FP8 for m in swapped)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(img=torch.randn(1, 16, 64), img_ids=torch.zeros(1, 16, 3), txt=torch.randn(1, 4, 32),
              txt_ids=torch.zeros(1, 4, 3), timesteps=torch.tensor([0.5]), y=torch.randn(1, 32),
              guidance=torch.ones(1))
    assert model.block_swap.loads == 3  # 1 double + 2 single blocks came in once each
    assert all(m.weight.dtype == FP8 for m in swapped)
