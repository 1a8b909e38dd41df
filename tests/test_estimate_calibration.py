"""The GPU estimate against measured peaks (issue 26; docs/benchmarks.md): bf16, rank 32, AdamW, cached latents. On an
NVIDIA H200, ``lora-studio bench`` rows are its training loop (U-Net only, cached text-encoder outputs, no gradient
clipping) and the ``train`` row the engine's peak with its text encoder trained; the peaks are
``torch.cuda.max_memory_allocated`` (without the CUDA context, which the estimate adds for the card). The
checkpointed row is the CPU's count on the real-size SDXL U-Net (one bench step at 1024 px, bf16): its frozen weights
and the LoRA with its AdamW state (as the estimate counts them) plus the step's peak RSS above its start (1.05 GiB,
the LoRA's gradients in it)."""

from __future__ import annotations

import pytest

from lora_studio.bench_memory import layout_modules, write_random_modules
from lora_studio.config import build_config
from lora_studio.training.estimate import CUDA_OVERHEAD_GB, GB, estimate, model_size

MB = 2**20
BENCH = {"network_train_unet_only": True, "cache_text_encoder_outputs": True, "max_grad_norm": 0}
SDXL_WEIGHTS = 2_567_463_684 * 2 / GB  # the U-Net in bf16
SDXL_LORA = 85_114_880 * 4 * (1 + 2) / GB  # rank 32: float32 weights and AdamW's two moments
# (layout, resolution, batch, gradient checkpointing, extra settings) -> measured peak in GiB
MEASURED = {
    ("sd15", 512, 16, False, "bench"): 21.5e3 * MB / GB,
    ("sdxl", 1024, 4, False, "bench"): 39.0e3 * MB / GB,
    ("sdxl", 1024, 1, True, "bench"): SDXL_WEIGHTS + SDXL_LORA + 1.05,
    ("sd15", 512, 4, False, "train"): 7.08,
}


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("headers")
    return {layout: model_size(write_random_modules(folder / f"{layout}.safetensors", *layout_modules(layout),
                                                    header_only=True)) for layout in ("sd15", "sdxl")}


@pytest.mark.parametrize("row", list(MEASURED), ids=lambda r: "{}-{}px-b{}-gc{}-{}".format(*r))
def test_the_training_estimate_is_within_15_percent_of_the_measured_peak(sizes, row):
    layout, resolution, batch, checkpointing, kind = row
    settings = {"mixed_precision": "bf16", "network_dim": 32, "network_alpha": 32, "train_batch_size": batch,
                "resolution": str(resolution), "gradient_checkpointing": checkpointing, "cache_latents": True,
                "optimizer_type": "AdamW", **(BENCH if kind == "bench" else {})}
    found = estimate(build_config(settings), sizes[layout], 16, 4, (resolution, resolution), None)
    training = found.phases["training"] - CUDA_OVERHEAD_GB
    assert training == pytest.approx(MEASURED[row], rel=0.15), (found.phases, MEASURED[row])


def test_sdxl_at_1024_px_batch_1_checkpointed_fits_a_12_gb_card_and_caching_is_not_the_peak(sizes):
    """The VAE encodes a megapixel's worth at a time: SDXL at 1024 px, batch 1 with gradient checkpointing caches in
    less memory than it trains in (issue 26: caching had set the peak, 13.06 GiB with 4 images a call), and trains in
    10 GiB or less with its text encoders cached or trained."""
    settings = {"mixed_precision": "bf16", "network_dim": 32, "resolution": "1024", "gradient_checkpointing": True,
                "cache_latents": True, "cache_text_encoder_outputs": True, "network_train_unet_only": True}
    found = estimate(build_config(settings), sizes["sdxl"], 16, 16, (1024, 1024), None)
    assert found.phases["loading and caching"] < found.phases["training"] - 3
    assert found.vram_gb <= 10
    trained = estimate(build_config({**settings, "cache_text_encoder_outputs": False,
                                     "network_train_unet_only": False}), sizes["sdxl"], 16, 16, (1024, 1024), None)
    assert found.vram_gb < trained.vram_gb <= 10
    four = estimate(build_config({**settings, "vae_batch_size": 4}), sizes["sdxl"], 16, 16, (1024, 1024), None)
    assert four.phases["loading and caching"] - found.phases["loading and caching"] == pytest.approx(
        3 * 1.52 * 1024 * 1024 / 2**20, rel=0.01)  # three more megapixels in the VAE at once
