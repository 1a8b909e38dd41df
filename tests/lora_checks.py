"""Checks shared by the compatibility tests: AUTOMATIC1111's SD1 naming rule (re-derived from its code, not
imported) and "every loaded adapter equals the file and is scaled alpha/rank"."""

from __future__ import annotations

import re

import pytest
import torch

# A1111's suffix conversion inside ResNet blocks (diffusers name -> LDM name)
_RESNET_SUFFIX = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                  "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _block(kind: str, rest: str) -> tuple[int, str]:
    """(index inside the LDM block, suffix) of an attention or ResNet child."""
    if kind == "attentions":
        return 1, rest
    return 0, _RESNET_SUFFIX.get(rest, rest)


def a1111_compvis_name(stem: str) -> str | None:
    """AUTOMATIC1111's diffusers->compvis conversion of an SD1 LoRA/LoCon module name."""
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", stem):
        part, suffix = _block(m[2], m[4])
        return f"diffusion_model_input_blocks_{1 + int(m[1]) * 3 + int(m[3])}_{part}_{suffix}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", stem):
        _, suffix = _block(m[1], m[3])
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{suffix}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", stem):
        part, suffix = _block(m[2], m[4])
        return f"diffusion_model_output_blocks_{int(m[1]) * 3 + int(m[3])}_{part}_{suffix}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", stem):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", stem):
        return f"diffusion_model_output_blocks_{2 + int(m[1]) * 3}_{2 if int(m[1]) > 0 else 1}_conv"
    if m := re.match(r"lora_unet_conv_(in|out)$", stem):
        return "diffusion_model_input_blocks_0_0" if m[1] == "in" else "diffusion_model_out_2"
    if m := re.match(r"lora_unet_time_embedding_linear_(\d+)$", stem):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", stem):
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    return None


def assert_adapters_equal_file(loaded: dict, sd: dict, adapter: str) -> None:
    """Each peft module diffusers loaded (by our stem) holds the file's down/up weights, scaled alpha/rank."""
    for stem, module in loaded.items():
        down, up = sd[f"{stem}.lora_down.weight"].float(), sd[f"{stem}.lora_up.weight"].float()
        assert torch.equal(module.lora_A[adapter].weight.float().reshape(down.shape), down), stem
        assert torch.equal(module.lora_B[adapter].weight.float().reshape(up.shape), up), stem
        assert module.scaling[adapter] == pytest.approx(float(sd[f"{stem}.alpha"]) / down.shape[0])


def held_out_loss(components, cfg, images) -> float:
    """The loss of the images in ``images`` at the family's validation points with fixed noise, so two measurements
    differ only by the weights (a LoRA attached or not, trained or not)."""
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config
    from lora_studio.training.loss import denoising_loss
    from lora_studio.training.vae import encode_latents

    data = TrainingData(datasets_from_config(cfg.replace(train_data_dir=str(images), validation_split=0.0)), 1.0, 0)
    pixels = torch.stack([torch.from_numpy(data.pixels(i, False)) for i in range(len(data.items))])
    family = components.family
    objective = family.objective(components, cfg)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        latents = encode_latents(components.vae, pixels, "cpu", g, family.vae_scale_and_shift(components.vae))
        cond = family.encode_prompt(components, [it.caption for it in data.items], "cpu", family.prompt_options(cfg))
        for point in objective.validation_points:
            noise = torch.randn(latents.shape, generator=g)
            total += float(denoising_loss(components, objective, latents, cond, torch.ones(len(latents)), noise,
                                          objective.fixed_timesteps(point, len(latents), "cpu")))
    return total / len(objective.validation_points)


def held_out_losses(cfg, lora_file, images) -> tuple[float, float]:
    """(the base model's, the base model with ``lora_file`` attached) ``held_out_loss`` of ``images``."""
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork

    components = load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg)
    base = held_out_loss(components, cfg, images)
    network = LoRANetwork(components, 4, 4.0)
    network.load_weights(lora_file)
    network.attach()
    return base, held_out_loss(components, cfg, images)
