"""SD2.x: OpenCLIP text encoder from single-file checkpoints, v-prediction, zero terminal SNR, files that load."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config


@pytest.fixture(scope="module")
def sd2_models(tmp_path_factory):
    from lora_studio.models.tiny import build_tiny_sd2, save_diffusers_folder, save_single_file

    root = tmp_path_factory.mktemp("sd2")
    unet, vae, te, tok = build_tiny_sd2(seed=0)
    return {"folder": save_diffusers_folder(root / "tiny-sd2", unet, vae, te, tok),
            "single": save_single_file(root / "tiny-sd2.safetensors", unet, vae, te), "te": te, "unet": unet}


def test_single_file_sd2_loads_as_the_same_model(sd2_models):
    from lora_studio.models.loading import load_components

    c = load_components(str(sd2_models["single"]), None, True)
    assert c.family.name == "sd2" and c.tokenizers[0].pad_token == "!"
    ids = c.tokenizers[0](["a photo"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert int(ids[0, -1]) == 0  # SD2 pads with "!" (id 0), SD1 with the end token
    with torch.no_grad():
        assert torch.allclose(c.text_encoders[0](ids).last_hidden_state, sd2_models["te"](ids).last_hidden_state,
                              atol=1e-6)
        x, h = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 64)
        assert torch.allclose(c.denoiser(x, 10, h).sample, sd2_models["unet"](x, 10, h).sample, atol=1e-5)
    # the file's OpenCLIP encoder holds one layer more: SD2 conditions on the penultimate one
    with safe_open(str(sd2_models["single"]), "pt") as fh:
        assert "cond_stage_model.model.transformer.resblocks.3.attn.in_proj_weight" in fh.keys()


def test_a_model_type_mismatch_is_a_clear_error(sd2_models, tmp_path, dataset):
    settings = base_settings(sd2_models["single"], dataset, tmp_path / "out")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert proc.returncode == 2 and "is an SD2.x model: set v2 = true" in proc.stderr


def test_v_prediction_loss_targets_v(sd2_models):
    from diffusers import DDPMScheduler

    from lora_studio.models.ddpm import DDPMObjective
    from lora_studio.models.family import Components
    from lora_studio.models.sd2 import SD2
    from lora_studio.models.stable_diffusion import SD_SCHEDULER
    from lora_studio.training.loss import LossOptions, denoising_loss

    scheduler = DDPMScheduler.from_config({**SD_SCHEDULER, "prediction_type": "v_prediction",
                                           "rescale_betas_zero_snr": True})
    assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)  # zero terminal SNR
    unet = sd2_models["unet"]
    model = Components(SD2(), unet, None, [], [], dict(SD_SCHEDULER), "test")
    objective = DDPMObjective(scheduler)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 999])
    cond = {"encoder_hidden_states": torch.randn(2, 77, 64)}
    with torch.no_grad():
        loss = denoising_loss(model, objective, latents, cond, torch.ones(2), noise, t)
        a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        v = a * noise - s * latents
        pred = unet(noisy, t, encoder_hidden_states=cond["encoder_hidden_states"]).sample
    assert float(loss) == pytest.approx(float(((pred - v) ** 2).mean()), rel=1e-5)
    with torch.no_grad():
        weighted = denoising_loss(model, objective, latents, cond, torch.ones(2), noise, t,
                                  LossOptions(min_snr_gamma=5.0))
    assert torch.isfinite(weighted)


def test_sd2_v_run_learns_and_its_file_loads_in_diffusers(sd2_models, tmp_path):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from lora_studio.demo import write_dataset
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork
    from test_learning import _eval_loss

    data = write_dataset(tmp_path / "data", count=8, repeats=5)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("lsdemo shape --w 64 --h 64 --s 3 --d 1\n", encoding="utf-8")
    settings = base_settings(sd2_models["single"], data, tmp_path / "out", train_batch_size=4, max_train_steps=40,
                             learning_rate=2e-3, network_alpha=4.0, v2=True, v_parameterization=True,
                             zero_terminal_snr=True, output_name="sd2_lora", sample_prompts=str(prompts),
                             sample_every_n_steps=40, sample_sampler="euler_a")
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert len(list((tmp_path / "out" / "sample").glob("sd2_lora_*.png"))) == 1  # v-prediction sampling works
    path = tmp_path / "out" / "sd2_lora.safetensors"
    sd = load_file(str(path))
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_v2"] == "True" and meta["ss_base_model_version"] == "sd_v2"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v"
    stems = {k.split(".", 1)[0] for k in sd}
    assert {f"lora_te_text_model_encoder_layers_{i}_self_attn_q_proj" for i in range(3)} <= stems
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].ndim == 2  # linear projection

    # learns: the v-prediction loss on the concept falls
    components = load_components(str(sd2_models["single"]), None, True)
    components.scheduler_config.update(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    untrained = _eval_loss(components, data)
    network = LoRANetwork(components, 4, 4.0)
    network.load_weights(path)
    network.attach()
    trained = _eval_loss(components, data)
    assert trained < 0.9 * untrained, (untrained, trained)

    # loads in diffusers with every key matched
    pipe = StableDiffusionPipeline.from_pretrained(sd2_models["folder"], safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = DDPMScheduler.from_config({**pipe.scheduler.config, "prediction_type": "v_prediction"})
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="s", use_safetensors=True)
    loaded = set()
    for prefix, model in (("lora_unet_", pipe.unet), ("te", pipe.text_encoder)):
        for name, module in model.named_modules():
            if hasattr(module, "lora_A") and "s" in module.lora_A:
                loaded.add(prefix + name.replace(".", "_") if prefix == "lora_unet_" else
                           "lora_te_text_model_" + name.replace("text_model.", "").replace(".", "_"))
    assert loaded == stems
