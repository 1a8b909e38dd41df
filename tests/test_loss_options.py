"""sd-scripts' loss options, each equal to a hand computation: loss_type (l2, l1, huber, smooth_l1) with huber_c,
huber_schedule and huber_scale; scale_v_pred_loss_like_noise_pred and v_pred_like_loss; and LoRA+ (the up weights'
learning rate x the ratio)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open

from conftest import base_settings, run_cli, write_config
from lora_studio.config import build_config
from lora_studio.config.network_args import parse_network_args
from lora_studio.errors import ConfigError
from lora_studio.models.ddpm import DDPMObjective
from lora_studio.models.loading import load_components
from lora_studio.models.stable_diffusion import SD_SCHEDULER
from lora_studio.network.lora import LoRANetwork
from lora_studio.training.loss import LossOptions, denoising_loss, elementwise_loss
from lora_studio.training.optim import build_optimizer


PROMPT_OPTIONS = {"clip_skip": 1, "max_token_length": 75}


@pytest.fixture(scope="module")
def components(tiny_models):
    return load_components(str(tiny_models["single"]), None, False)


def test_each_loss_type_is_sd_scripts_formula():
    pred = torch.tensor([[[[0.0, 1.0], [3.0, -2.0]]], [[[0.5, 0.5], [0.5, 0.5]]]])
    target = torch.zeros_like(pred)
    c = torch.tensor([0.1, 2.0])
    d = pred - target
    assert torch.equal(elementwise_loss(pred, target, "l2"), d ** 2)
    assert torch.equal(elementwise_loss(pred, target, "l1"), d.abs())
    per_image = c.view(-1, 1, 1, 1)
    huber = 2 * per_image * (torch.sqrt(d ** 2 + per_image ** 2) - per_image)
    assert torch.allclose(elementwise_loss(pred, target, "huber", c), huber)
    assert torch.allclose(elementwise_loss(pred, target, "smooth_l1", c), huber / per_image)
    # Huber is quadratic near 0 (about d^2) and linear far out (about 2c|d|)
    one = torch.tensor([1.0], dtype=torch.float64)
    for d, expected in ((1e-3, 1e-6), (100.0, 2 * 100.0)):
        x = torch.full((1, 1, 1, 1), d, dtype=torch.float64)
        assert float(elementwise_loss(x, torch.zeros_like(x), "huber", one)) == pytest.approx(expected, rel=0.01)


def test_huber_thresholds_follow_the_schedule():
    schedule = DDPMScheduler.from_config(SD_SCHEDULER)
    t = torch.tensor([0, 500, 999])
    objective = DDPMObjective(schedule)
    assert torch.allclose(objective.huber_thresholds(t, 0.1, "constant", 2.0), torch.full((3,), 0.2))
    exponential = objective.huber_thresholds(t, 0.1, "exponential", 1.0)
    assert torch.allclose(exponential, torch.exp(math.log(0.1) / 1000 * t.float()))
    assert float(exponential[0]) == 1.0 and float(exponential[2]) == pytest.approx(0.1, rel=0.01)
    a = schedule.alphas_cumprod[t]
    sigma = ((1 - a) / a).sqrt()
    snr = objective.huber_thresholds(t, 0.1, "snr", 5.0)  # huber_scale is not used by "snr", as sd-scripts
    assert torch.allclose(snr, 0.9 / (1 + sigma) ** 2 + 0.1)


@pytest.mark.parametrize("loss_type", ["l1", "huber", "smooth_l1"])
def test_the_batch_loss_uses_the_loss_type(components, loss_type):
    objective = DDPMObjective(DDPMScheduler.from_config(components.scheduler_config))
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([50, 800])
    weights = torch.tensor([1.0, 0.5])
    options = LossOptions(loss_type=loss_type, huber_c=0.2, huber_schedule="constant", huber_scale=1.5)
    with torch.no_grad():
        cond = components.family.encode_prompt(components, ["a", "b"], "cpu", PROMPT_OPTIONS)
        pred, target = objective.prediction_and_target(components, latents, noise, t, cond)
        got = denoising_loss(components, objective, latents, cond, weights, noise, t, options)
    d, c = pred - target, 0.3
    by_hand = {"l1": d.abs(), "huber": 2 * c * (torch.sqrt(d ** 2 + c ** 2) - c),
               "smooth_l1": 2 * (torch.sqrt(d ** 2 + c ** 2) - c)}[loss_type]
    assert float(got) == pytest.approx(float((by_hand.mean(dim=(1, 2, 3)) * weights).mean()), rel=1e-5)


def test_v_prediction_loss_scales(components):
    """scale_v_pred_loss_like_noise_pred: x SNR/(SNR+1); v_pred_like_loss w: + loss / (SNR/(SNR+1)) x w (SNR
    capped at 1000), after Min-SNR, as sd-scripts orders them."""
    objective = DDPMObjective.for_model(components, v_parameterization=True, zero_terminal_snr=False)
    schedule = objective.schedule
    g = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([0, 600])
    a = schedule.alphas_cumprod[t]
    scale = torch.clamp(a / (1 - a), max=1000) / (torch.clamp(a / (1 - a), max=1000) + 1)
    with torch.no_grad():
        cond = components.family.encode_prompt(components, ["a", "b"], "cpu", PROMPT_OPTIONS)
        pred, target = objective.prediction_and_target(components, latents, noise, t, cond)
        per_image = ((pred - target) ** 2).mean(dim=(1, 2, 3))

        def loss(**kw):
            return float(denoising_loss(components, objective, latents, cond, torch.ones(2), noise, t,
                                        LossOptions(**kw)))
        assert loss() == pytest.approx(float(per_image.mean()), rel=1e-5)
        assert loss(scale_v_pred_loss_like_noise_pred=True) == pytest.approx(float((per_image * scale).mean()),
                                                                            rel=1e-5)
        assert loss(v_pred_like_loss=0.3) == pytest.approx(float((per_image + per_image / scale * 0.3).mean()),
                                                           rel=1e-5)
    DDPMObjective.for_model(components, v_parameterization=False, zero_terminal_snr=False)  # as it was


@pytest.mark.parametrize("module, args", [("networks.lora", []), ("lycoris.kohya", ["algo=locon"])])
def test_loraplus_trains_the_up_weights_at_ratio_times_the_learning_rate(components, module, args):
    net = LoRANetwork(components, 4, 2.0, args=parse_network_args(
        args + ["loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4"], module))
    optimizer = build_optimizer(build_config({}), net.param_groups(1e-4, [5e-5]))
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    for stem, adapter in net.named_children():
        text_encoder = stem.startswith("lora_te")
        base, ratio = (5e-5, 4) if text_encoder else (1e-4, 16)
        for name, p in adapter.named_parameters():
            assert rates[id(p)] == pytest.approx(base * ratio if "lora_up" in name else base), (stem, name)
    assert len(optimizer.param_groups) == 4  # U-Net, U-Net up, text encoder, text encoder up
    with pytest.raises(ConfigError, match='write "loraplus_lr_ratio=16" in network_args'):
        build_config({"loraplus_lr_ratio": 16})


def test_loss_type_and_loraplus_reach_the_run_and_its_metadata(tiny_models, dataset, tmp_path):
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=2, loss_type="smooth_l1",
                             huber_schedule="exponential", huber_c=0.05, network_args=["loraplus_lr_ratio=8"],
                             logging_dir=str(tmp_path / "log"))
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    with safe_open(str(out / "test_lora.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_loss_type"] == "smooth_l1" and meta["ss_huber_schedule"] == "exponential"
    assert float(meta["ss_huber_c"]) == 0.05 and meta["ss_v_parameterization"] == "False"
    assert "loraplus_lr_ratio" in meta["ss_network_args"]
