"""The resource estimate: sizes read from the model file's header, memory that follows the settings, a warning
with concrete advice when the run will not fit the GPU."""

from __future__ import annotations

import pytest

from lora_studio.config import build_config
from lora_studio.training.estimate import GPU, estimate, model_size

from conftest import base_settings, run_cli, write_config


def test_model_size_from_headers_matches_the_real_models(tiny_models):
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork

    for source in (tiny_models["single"], tiny_models["folder"]):
        size = model_size(source)
        c = load_components(str(source), None, False)
        assert size.family == "sd1"
        assert size.unet == sum(p.numel() for p in c.denoiser.parameters())
        assert size.vae == sum(p.numel() for p in c.vae.parameters())
        network = LoRANetwork(c, 4, 1.0)
        unet_lora = sum(p.numel() for s in network.unet_stems for p in network._modules[s].parameters())
        te_lora = sum(p.numel() for s in network.te_stems[0] for p in network._modules[s].parameters())
        assert 4 * size.lora_linear == unet_lora and 4 * size.lora_te == te_lora


def _size(family="sd1"):
    from lora_studio.training.estimate import ModelSize

    return ModelSize(family, 859_520_964, 123_060_480, 83_653_863, 3_000_000, 400_000)  # SD1.5's counts


def test_memory_follows_the_settings_and_a_small_gpu_gets_advice():
    base = {"train_batch_size": 4, "mixed_precision": "bf16", "network_dim": 32, "resolution": "512"}
    big = estimate(build_config(base), _size(), 40, 10, (512, 512), GPU("NVIDIA H100 80GB HBM3", 80))
    checkpointed = estimate(build_config({**base, "gradient_checkpointing": True}), _size(), 40, 10, (512, 512), None)
    batch1 = estimate(build_config({**base, "train_batch_size": 1}), _size(), 40, 10, (512, 512), None)
    assert checkpointed.vram_gb < big.vram_gb and batch1.vram_gb < big.vram_gb
    assert 4 < batch1.vram_gb < 8  # SD1.5-512 LoRA at batch 1: a 6-8 GB card's territory
    assert big.seconds_per_epoch and big.seconds_per_epoch > 0 and not big.warnings
    small = estimate(build_config(base), _size(), 40, 10, (512, 512), GPU("NVIDIA GeForce RTX 3060", 8))
    assert small.warnings and "turn on gradient_checkpointing" in small.warnings[0]
    assert "lower train_batch_size from 4 to 1" in small.warnings[0] and "RTX 3060 has 8 GB" in small.warnings[0]
    cached = estimate(build_config({**base, "cache_latents_to_disk": True}), _size(), 40, 10, (512, 512), None)
    assert cached.cache_disk_gb == pytest.approx(40 * 4 * 64 * 64 * 4 / 1024**3, rel=1e-3)
    redrawn = estimate(build_config({**base, "cache_latents_to_disk": True, "random_crop": True}), _size(), 40, 10,
                       (512, 512), None)  # random_crop turns the latent cache off: no disk, the VAE in memory
    assert redrawn.cache_disk_gb == 0 and redrawn.vram_gb > cached.vram_gb


def test_the_run_logs_its_estimate(tiny_models, dataset, tmp_path):
    settings = base_settings(tiny_models["single"], dataset, tmp_path / "out", max_train_steps=2)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert "resources: estimated peak GPU memory" in proc.stderr and "cache disk" in proc.stderr
