"""`lora-studio bench --model flux-dev --tiny`: the engine's Flux training step and a diffusers FluxTransformer2DModel
+ peft reference loop, timed on the CPU; Chroma without a reference."""

from __future__ import annotations

import argparse
import json

from conftest import run_cli

from lora_studio import bench
from lora_studio.cli import add_bench_options


def _check_result(result: dict) -> None:
    assert result["step_ms"] > 0 and result["samples_per_s"] > 0 and result["peak_memory_mb"] > 0
    assert result["tflop_per_sample"] > 0  # counted with torch.utils.flop_counter
    assert result["mfu"] is None  # no known peak on a CPU


def test_tiny_flux_bench_times_our_step_and_the_diffusers_reference(tmp_path):
    """``lora-studio bench --model flux-dev --tiny``."""
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--model", "flux-dev", "--tiny", "--precision", "no", "--rank", "4", "--batch", "2",
                   "--steps", "3", "--warmup", "1", "--json", str(out))
    assert "tiny-flux-dev 64px batch 2 rank 4" in proc.stdout and "ours vs reference" in proc.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["model"] == "tiny-flux-dev" and report["resolution"] == 64 and report["batch"] == 2
    assert report["steps"] == 3 and report["precision"] == "no" and report["speedup_vs_reference"] > 0
    ours, reference = report["results"]
    assert ours["loop"] == "lora-studio" and reference["loop"] == "reference (diffusers+peft)"
    for result in (ours, reference):
        _check_result(result)
    # the same transformer's work: fused (ours) or split (diffusers) q / k / v differ only in the LoRA's share
    assert abs(ours["tflop_per_sample"] - reference["tflop_per_sample"]) / reference["tflop_per_sample"] < 0.05
    assert ours["aten_ops_per_step"] <= reference["aten_ops_per_step"], report  # no more launches than it


def test_chroma_has_no_reference_and_says_so(capsys):
    parser = argparse.ArgumentParser()
    add_bench_options(parser)
    args = parser.parse_args(["--model", "chroma", "--tiny", "--precision", "no", "--rank", "4", "--batch", "1",
                              "--steps", "2", "--warmup", "1", "--gradient-checkpointing"])
    assert bench.main(args) == 0
    printed = capsys.readouterr().out
    assert "tiny-chroma 64px batch 1" in printed and "no diffusers+peft reference for Chroma here" in printed
    report = bench.run(args)
    (ours,) = report["results"]
    _check_result(ours)
    assert report["gradient_checkpointing"] and report["reference"].startswith("no diffusers+peft reference")


def test_flux_batches_have_the_shapes_flux_trains_on():
    import torch

    from lora_studio.models.flux_net import FLUX_DEV

    batch = bench.make_flux_batch(FLUX_DEV, 512, 2, 1024, torch.device("cpu"))
    assert batch["latents"].shape == (2, 16, 128, 128) and batch["pooled"].shape == (2, 768)
    assert batch["t5"].shape == (2, 512, 4096) and batch["t5_mask"].shape == (2, 512)
    assert bench.bench_family("flux-schnell").default_t5_length == 256


def test_the_other_transformers_bench_their_own_step_and_say_there_is_no_reference(capsys):
    """``lora-studio bench --model sd3.5-medium / anima / lumina2 --tiny``: the family's denoiser (built through the
    family), a random condition of its text encoders' shapes, the engine's step timed with its FLOPs counted."""
    import torch

    parser = argparse.ArgumentParser()
    add_bench_options(parser)
    for model, title in (("sd3.5-medium", "SD3.5 medium"), ("anima", "Anima"), ("lumina2", "Lumina 2")):
        args = parser.parse_args(["--model", model, "--tiny", "--precision", "no", "--rank", "4", "--batch", "1",
                                  "--steps", "1", "--warmup", "1"])
        assert bench.main(args) == 0
        printed = capsys.readouterr().out
        assert f"tiny-{model} 64px batch 1 rank 4" in printed and f"no diffusers+peft reference for {title}" in printed
    # the real sizes the bench builds are the families' real models (meta device: nothing allocated)
    with torch.device("meta"):
        sizes = {model: sum(p.numel() for p in bench.bench_family(model).build_denoiser(
            bench.bench_models()[model][1]).parameters()) / 1e9 for model in ("sd3.5-large", "anima", "lumina2")}
    assert 8.0 < sizes["sd3.5-large"] < 8.2 and 1.9 < sizes["anima"] < 2.2 and 2.5 < sizes["lumina2"] < 2.7, sizes
