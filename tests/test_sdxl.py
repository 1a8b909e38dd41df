"""SDXL: two text encoders, pooled and size/crop conditioning, SGM-named UNet stems, per-encoder learning rates,
cached text-encoder outputs, single-file checkpoints offline; the file loads in diffusers' SDXL pipeline."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_checks import assert_adapters_equal_file

PROMPT_OPTIONS = {"clip_skip": 1, "max_token_length": 75}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from lora_studio.demo import write_dataset
    from lora_studio.models.tiny import build_tiny_sdxl, save_sdxl_diffusers_folder, save_single_file

    root = tmp_path_factory.mktemp("sdxl")
    unet, vae, tes, toks = build_tiny_sdxl(seed=0)
    single = save_single_file(root / "tiny-sdxl.safetensors", unet, vae, tes)
    folder = save_sdxl_diffusers_folder(root / "tiny-sdxl", unet, vae, tes, toks)
    data = write_dataset(root / "data", count=4, repeats=2)
    prompts = root / "prompts.txt"
    prompts.write_text("lsdemo shape --w 64 --h 64 --s 3 --d 1\n", encoding="utf-8")
    # a v-prediction SDXL run (NoobAI-XL v-pred style: v_parameterization with zero terminal SNR, no v2)
    settings = base_settings(single, data, root / "out", output_name="xl", max_train_steps=24, seed=7,
                             learning_rate=3e-2, train_batch_size=4, text_encoder_lr=[1e-3, 5e-4], sample_prompts=str(prompts),
                             sample_every_n_steps=24, mixed_precision="bf16", v_parameterization=True,
                             zero_terminal_snr=True)
    proc = run_cli("train", "--config", str(write_config(root / "run.toml", settings)))
    path = root / "out" / "xl.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    return {"root": root, "single": single, "folder": folder, "data": data, "path": path, "sd": load_file(str(path)),
            "meta": meta, "proc": proc}


def _stems(sd):
    return sorted({k.split(".", 1)[0] for k in sd})


def test_sdxl_run_writes_sgm_unet_names_two_text_encoders_and_metadata(sdxl):
    sd, meta = sdxl["sd"], sdxl["meta"]
    stems = _stems(sd)
    unet = [s for s in stems if s.startswith("lora_unet_")]
    assert unet and all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_\d", s) for s in unet)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn2_to_k" in unet  # the 2-layer level
    assert {s.split("_text_model")[0] for s in stems if "text_model" in s} == {"lora_te1", "lora_te2"}
    assert len([s for s in stems if s.startswith("lora_te2_")]) == 18  # 3 layers x q/k/v/out/fc1/fc2
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_v_parameterization"] == "True"
    assert meta["ss_zero_terminal_snr"] == "True"
    assert meta["ss_text_encoder_lr"] == "[0.001, 0.0005]"
    assert len(list((sdxl["root"] / "out" / "sample").glob("xl_*.png"))) == 1


def test_sdxl_file_loads_in_diffusers_with_every_key_matched(sdxl):
    from diffusers import StableDiffusionXLPipeline

    from lora_studio.models.ldm_keys import unet_key

    path, sd = sdxl["path"], sdxl["sd"]
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl["folder"], local_files_only=True)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x", use_safetensors=True)
    cfg = pipe.unet.config
    up_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    loaded = {}
    for name, module in pipe.unet.named_modules():
        if hasattr(module, "lora_A") and "x" in module.lora_A:
            sgm = unet_key(name + ".weight", cfg.layers_per_block, up_attn).removesuffix(".weight")
            loaded["lora_unet_" + sgm.replace(".", "_")] = module
    for prefix, te in (("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)):
        for name, module in te.named_modules():
            if hasattr(module, "lora_A") and "x" in module.lora_A:
                tail = re.search(r"layers\.(\d+)\.(.+)$", name)
                loaded[f"{prefix}_text_model_encoder_layers_{tail[1]}_{tail[2].replace('.', '_')}"] = module
    assert sorted(loaded) == _stems(sd)  # no key unmatched, none extra
    assert_adapters_equal_file(loaded, sd, "x")

    def image(weight):
        pipe.set_adapters(["x"], [weight])
        g = torch.Generator().manual_seed(0)
        return pipe("lsdemo shape", num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images
    assert abs(image(1.0) - image(0.0)).mean() > 1e-4


def test_a_v_prediction_sdxl_run_learns_v(sdxl):
    """The v-prediction run's LoRA lowers the v-prediction loss (fixed noise and timesteps) on its images; the
    training target is v = sqrt(a) noise - sqrt(1 - a) x0, diffusers' get_velocity."""
    from lora_studio.models.ddpm import DDPMObjective
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork
    from lora_studio.training.loss import denoising_loss

    c = load_components(str(sdxl["single"]), None, False)
    objective = DDPMObjective.for_model(c, v_parameterization=True, zero_terminal_snr=True)
    schedule = objective.schedule
    assert schedule.config.prediction_type == "v_prediction" and float(schedule.alphas_cumprod[-1]) < 1e-6
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    a = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        cond = {**c.family.encode_prompt(c, ["x", "y"], "cpu", PROMPT_OPTIONS),
                "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
        _, target = objective.prediction_and_target(c, latents, noise, t, cond)
    assert torch.allclose(target, a.sqrt() * noise - (1 - a).sqrt() * latents, atol=1e-5)

    from lora_studio.config import build_config
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config

    cfg = build_config({"train_data_dir": str(sdxl["data"]), "resolution": "64", "output_dir": "x",
                        "pretrained_model_name_or_path": "x"})
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    images = data.items
    pixels = torch.stack([torch.from_numpy(data.pixels(i, False)) for i in range(len(images))])
    with torch.no_grad():
        latents = c.vae.encode(pixels).latent_dist.mean * c.vae.config.scaling_factor
    time_ids = torch.tensor([data.size_conditioning(i) for i in range(len(images))], dtype=torch.float32)

    def held_out() -> float:  # the prompts are encoded each time: the text encoders' adapters count too
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            cond = {**c.family.encode_prompt(c, [it.caption for it in images], "cpu", PROMPT_OPTIONS),
                    "time_ids": time_ids}
            return sum(float(denoising_loss(c, objective, latents, cond, torch.ones(len(images)),
                                            torch.randn(latents.shape, generator=g),
                                            torch.randint(0, 1000, (len(images),), generator=g)))
                       for _ in range(6)) / 6
    untrained = held_out()
    network = LoRANetwork(c, 4, 2.0)
    network.load_weights(sdxl["path"])
    network.attach()
    trained = held_out()
    assert trained < 0.9 * untrained, (untrained, trained)


def test_sdxl_stems_follow_a1111_and_comfyui_rules(sdxl):
    from lora_studio.models.loading import load_components
    from lora_studio.models.tiny import ldm_state_dict

    c = load_components(str(sdxl["single"]), None, False)
    modules = {k.rsplit(".", 1)[0].replace(".", "_") for k in ldm_state_dict(c.denoiser, c.vae, c.text_encoders)}
    te2_parts = {"self_attn_q_proj": "attn", "self_attn_k_proj": "attn", "self_attn_v_proj": "attn",
                 "self_attn_out_proj": "attn_out_proj", "mlp_fc1": "mlp_c_fc", "mlp_fc2": "mlp_c_proj"}
    comfy_te = re.compile(r"lora_te[12]_text_model_encoder_layers_\d+_(mlp_fc1|mlp_fc2|self_attn_(q|k|v|out)_proj)$")
    for stem in _stems(sdxl["sd"]):
        if stem.startswith("lora_unet_"):
            # A1111 and ComfyUI both map lora_unet_<SGM module path> onto the checkpoint's own module names
            assert "model_diffusion_model_" + stem.removeprefix("lora_unet_") in modules, stem
        elif stem.startswith("lora_te1_"):  # A1111: the CLIP-L transformer of conditioner.embedders.0
            assert "conditioner_embedders_0_transformer_" + stem.removeprefix("lora_te1_") in modules, stem
        else:  # A1111: OpenCLIP resblocks of conditioner.embedders.1 (q/k/v share the fused in_proj)
            m = re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)$", stem)
            assert f"conditioner_embedders_1_model_transformer_resblocks_{m[1]}_{te2_parts[m[2]]}" in modules, stem
        assert stem.startswith("lora_unet_") or comfy_te.match(stem), stem


def test_cached_text_encoder_outputs_give_the_same_loss(sdxl, tmp_path):
    from diffusers import DDPMScheduler

    from lora_studio.models.ddpm import DDPMObjective
    from lora_studio.models.loading import load_components
    from lora_studio.training.loss import denoising_loss
    from lora_studio.training.te_cache import build_te_cache, cached_condition

    c = load_components(str(sdxl["single"]), None, False)
    captions = ["lsdemo shape, red disc", "another caption, longer than the first one"]

    def encode(batch):
        return c.family.encode_prompt(c, batch, "cpu", PROMPT_OPTIONS)
    cache = build_te_cache({cap: tmp_path for cap in captions}, encode, "fp", to_disk=True, show_progress=False)
    assert len(list((tmp_path / ".lora_studio_cache").glob("te_*.safetensors"))) == 2
    reread = build_te_cache({cap: tmp_path for cap in captions}, lambda b: pytest.fail("re-encoded"), "fp", True)
    objective = DDPMObjective(DDPMScheduler.from_config(c.scheduler_config))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([100, 700])
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    with torch.no_grad():
        live = {**encode(captions), "time_ids": time_ids}
        cached = {**cached_condition(reread, captions, "cpu"), "time_ids": time_ids}
        a = denoising_loss(c, objective, latents, live, torch.ones(2), noise, t)
        b = denoising_loss(c, objective, latents, cached, torch.ones(2), noise, t)
    assert float(a) == pytest.approx(float(b), rel=1e-6, abs=1e-7)
    assert set(cache[captions[0]]) == {"encoder_hidden_states", "text_embeds"}


def test_unet_only_run_with_the_text_encoder_cache_on_disk(sdxl, tmp_path):
    settings = base_settings(sdxl["single"], sdxl["data"], tmp_path / "out", output_name="xl_cached",
                             max_train_steps=4, network_train_unet_only=True,
                             cache_text_encoder_outputs_to_disk=True)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert "caching text-encoder outputs" in proc.stderr
    assert list((sdxl["data"] / "2_lsdemo shape" / ".lora_studio_cache").glob("te_*.safetensors"))
    sd = load_file(str(tmp_path / "out" / "xl_cached.safetensors"))
    assert all(k.startswith("lora_unet_") for k in sd)
    bad = base_settings(sdxl["single"], sdxl["data"], tmp_path / "out2", cache_text_encoder_outputs=True)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "bad.toml", bad)), check=False)
    assert proc.returncode == 2 and "needs frozen text encoders" in proc.stderr


def test_size_and_crop_conditioning_comes_from_the_bucket(tmp_path):
    from PIL import Image

    from lora_studio.config import build_config
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config

    folder = tmp_path / "img" / "1_x"
    folder.mkdir(parents=True)
    Image.new("RGB", (300, 200), "red").save(folder / "wide.png")
    cfg = build_config({"train_data_dir": str(tmp_path / "img"), "resolution": "128", "enable_bucket": True,
                        "min_bucket_reso": 64, "max_bucket_reso": 256, "output_dir": "x",
                        "pretrained_model_name_or_path": "x"})
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    h, w, top, left, th, tw = data.size_conditioning(0)
    assert (h, w) == (200, 300) and (tw, th) == data.items[0].bucket
    assert top == 0 and left >= 0 and (left > 0) == (300 / 200 > tw / th)


def test_an_sdxl_model_with_v2_set_is_a_clear_error(sdxl, tmp_path):
    settings = base_settings(sdxl["single"], sdxl["data"], tmp_path / "out", v2=True)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert proc.returncode == 2 and "is an SDXL model but the config sets v2 = true" in proc.stderr


def test_a_half_precision_vae_that_overflows_is_retried_in_float32():
    from diffusers import AutoencoderKL

    from lora_studio.models.tiny import TINY_VAE
    from lora_studio.training.vae import encode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(TINY_VAE)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    reference = encode_latents(vae, pixels, "cpu", torch.Generator().manual_seed(1))
    loud = pixels * 70_000  # past float16's largest value (65,504): the fp16 VAE gives inf/NaN
    vae.to(torch.float16)
    with torch.no_grad():
        assert not torch.isfinite(vae.encode(loud.half()).latent_dist.mean).all()
    latents = encode_latents(vae, loud, "cpu", torch.Generator().manual_seed(1))
    assert vae.dtype == torch.float32 and torch.isfinite(latents).all()
    vae_fp32 = AutoencoderKL.from_config(TINY_VAE)
    vae_fp32.load_state_dict(vae.state_dict())
    assert torch.allclose(latents, encode_latents(vae_fp32, loud, "cpu", torch.Generator().manual_seed(1)))
    assert torch.isfinite(reference).all()
