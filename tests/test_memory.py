"""Host memory: a single-file checkpoint loads without a second copy of its weights, in the dtype the run trains in,
and a run reports its memory after each phase and its peak."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import base_settings, run_cli, write_config

MEASURE = """
import sys, torch
from lora_studio.models.ldm_build import load_dtypes
from lora_studio.models.loading import load_components
from lora_studio.training.memory import peak_rss_bytes, rss_bytes
from diffusers import AutoencoderKL, UNet2DConditionModel  # the libraries' own memory is not the model's
from transformers import CLIPTextModel
before = rss_bytes()
dtype = getattr(torch, sys.argv[2])
with load_dtypes(unet=dtype, text_encoder=dtype):
    c = load_components(sys.argv[1], None, False)
total = 0
for m in (c.unet, c.vae, *c.text_encoders):
    for p in m.parameters():
        total += float(p.float().sum())  # every weight read, its pages in memory
print({"increase": peak_rss_bytes() - before, "unet": str(c.unet.dtype), "te": str(c.text_encoders[0].dtype),
       "vae": str(c.vae.dtype), "finite": total == total})
"""


@pytest.fixture(scope="module")
def medium_checkpoint(tmp_path_factory):
    """An SD1-layout checkpoint big enough (about 300 MB) for its copies to show in the process's memory."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_studio.bench_memory import write_random_modules
    from lora_studio.models.tiny import TINY_TEXT_ENCODER, TINY_UNET, TINY_VAE

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config({**TINY_UNET, "block_out_channels": [192, 384, 768, 768],
                                                 "cross_attention_dim": 256, "attention_head_dim": 8})
        vae = AutoencoderKL.from_config(TINY_VAE)
        te = CLIPTextModel(CLIPTextConfig(**{**TINY_TEXT_ENCODER, "hidden_size": 256, "intermediate_size": 1024,
                                             "num_attention_heads": 4, "num_hidden_layers": 4}))
    params = sum(p.numel() for m in (unet, vae, te) for p in m.parameters())
    path = write_random_modules(tmp_path_factory.mktemp("medium") / "medium.safetensors", unet, vae, te)
    return path, params


@pytest.mark.parametrize("dtype, bytes_per_weight", [("float32", 4), ("bfloat16", 2)])
def test_a_single_file_checkpoint_is_in_memory_once_in_the_training_dtype(medium_checkpoint, dtype,
                                                                          bytes_per_weight):
    path, params = medium_checkpoint
    assert params * 4 > 250e6
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), dtype], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = eval(out.stdout.strip().splitlines()[-1])
    assert found["finite"] and found["unet"] == found["te"] == f"torch.{dtype}" and found["vae"] == "torch.float32"
    weights = params * bytes_per_weight
    # held once: the old loader (random init, then the file's copy loaded into it) needed over twice this
    assert found["increase"] < 1.15 * weights + 100e6, (found["increase"] / 1e6, weights / 1e6)


def test_a_run_reports_its_memory_after_each_phase_and_its_peak(tiny_models, dataset, tmp_path):
    settings = base_settings(tiny_models["single"], dataset, tmp_path / "out", max_train_steps=2,
                             cache_text_encoder_outputs=True, network_train_unet_only=True)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    events = [json.loads(line) for line in (tmp_path / "out" / "test_lora_events.jsonl").read_text().splitlines()]
    phases = [e for e in events if e["type"] == "memory"]
    assert [e["phase"] for e in phases] == ["loading the model", "placing the model", "building the network",
                                            "caching latents", "caching text encoder outputs",
                                            "setting up the optimizer", "the first step"]
    peaks = [e["peak"] for e in phases]
    assert peaks == sorted(peaks) and all(e["rss"] <= e["peak"] and e["gpu_peak"] is None for e in phases)
    end = events[-1]
    assert end["type"] == "end" and end["peak_ram"] >= peaks[-1] > 100e6 and end["peak_gpu"] is None
    assert "memory after loading the model: RAM" in proc.stderr and "peak memory: RAM" in proc.stderr
    # every latent and caption output cached, nothing sampled: the VAE and the text encoder are let go
    assert "freed the VAE and the text encoder(s): the cache holds what training needs" in proc.stderr


# Measured as ``lora-studio bench --memory --layouts sd15`` runs it (real-size SD1.5 layout, random weights, fp32,
# 64 px, batch 2, rank 8, AdamW, latents cached, CPU, 100 steps): the engine's peak RSS (docs/benchmarks.md).
MEASURED_SD15_FP32_PEAK_GIB = 4.60


def test_the_ram_estimate_is_within_15_percent_of_the_measured_peak(tmp_path):
    from lora_studio.bench_memory import layout_modules, write_random_modules
    from lora_studio.config import build_config
    from lora_studio.training.estimate import estimate, model_size

    header = write_random_modules(tmp_path / "sd15-header.safetensors", *layout_modules("sd15"), header_only=True)
    assert header.stat().st_size < 1e6  # the shapes alone: what the estimate reads
    cfg = build_config({"pretrained_model_name_or_path": str(header), "network_dim": 8, "network_alpha": 8.0,
                        "train_batch_size": 2, "resolution": "64", "cache_latents": True, "mixed_precision": "no",
                        "optimizer_type": "AdamW"})
    found = estimate(cfg, model_size(str(header)), 4, 2, (64, 64), None)
    assert abs(found.ram_gb - MEASURED_SD15_FP32_PEAK_GIB) <= 0.15 * MEASURED_SD15_FP32_PEAK_GIB, found.ram_gb
    half = estimate(cfg.replace(mixed_precision="bf16"), model_size(str(header)), 4, 2, (64, 64), None)
    assert half.ram_gb < 0.65 * found.ram_gb  # the U-Net and text encoder load in bf16: half their bytes


def test_a_diffusers_folder_loads_in_the_training_dtype_too(tiny_models):
    import torch

    from lora_studio.models.ldm_build import load_dtypes
    from lora_studio.models.loading import load_components

    with load_dtypes(unet=torch.bfloat16, text_encoder=torch.bfloat16):
        c = load_components(str(tiny_models["folder"]), None, False)
    assert c.unet.dtype == c.text_encoders[0].dtype == torch.bfloat16 and c.vae.dtype == torch.float32
    plain = load_components(str(tiny_models["folder"]), None, False)
    assert plain.unet.dtype == torch.float32
    assert torch.equal(c.unet.conv_in.weight, plain.unet.conv_in.weight.to(torch.bfloat16))
