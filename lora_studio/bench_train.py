"""``lora-studio bench --train``: the real engine's speed and memory, in one command.

Writes a checkpoint of the model's real layout with random weights (``--tiny``: the tests' tiny model of the same
topology) and synthetic images at the resolution, then trains ``--warmup`` + ``--steps`` steps with the engine
itself (``lora-studio train``'s ``Trainer``, in this process): cached latents, text-encoder outputs cached unless
``--live-text-encoders``, AdamW, the engine's defaults otherwise. Reported: the steady-state step time and samples/s
(from the step events after the warm-up), the GPU peak of each phase (caching, training) or the RAM peak on a CPU,
and the engine's own estimate beside them. Run it beside ``lora-studio bench`` with the same model, resolution,
batch and precision: the two step times should be within 10%.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path

MIB = 2**20


def write_model(folder: Path, model: str, tiny: bool) -> dict:
    """The model's files in ``folder`` (written once, reused while they are there); the settings naming them."""
    from .bench import bench_models

    family = bench_models()[model][0]
    folder.mkdir(parents=True, exist_ok=True)
    if family.startswith("flux") or family == "chroma":
        variant = {"flux-dev": "dev", "flux-schnell": "schnell", "chroma": "chroma"}[family]
        marker = folder / f"{model}{'-tiny' if tiny else ''}.json"
        if marker.is_file():
            return json.loads(marker.read_text(encoding="utf-8"))
        if tiny:
            from .models.tiny_flux import write_tiny_flux

            settings = write_tiny_flux(folder / "tiny", variant)
        else:
            from .bench_memory import write_flux_files

            settings = write_flux_files(folder, variant, header_only=False)
        marker.write_text(json.dumps(settings), encoding="utf-8")
        return settings
    path = folder / f"random-{model}{'-tiny' if tiny else ''}.safetensors"
    if not path.is_file():
        if tiny:
            from .models import tiny as tiny_models

            unet, vae, te, _ = (tiny_models.build_tiny_sd1() if model == "sd15" else tiny_models.build_tiny_sdxl())
            tiny_models.save_single_file(path, unet, vae, te)
        else:
            from .bench_memory import write_random_checkpoint

            print(f"writing a random {model} checkpoint to {path} …", flush=True)
            write_random_checkpoint(path, model, "float16")
    return {"pretrained_model_name_or_path": str(path)}


def run_settings(args, model_files: dict, folder: Path, resolution: int) -> dict:
    from .demo import write_dataset

    images = max(2 * args.batch, 4)
    repeats = -(-(args.warmup + args.steps) * args.batch // images)  # one epoch holds every step
    shutil.rmtree(folder / "images", ignore_errors=True)  # another run's images (another size or count) go
    data = write_dataset(folder / "images", count=images, repeats=repeats, size=resolution)
    settings = {**model_files, "train_data_dir": str(data), "output_dir": str(folder / "run"), "output_name": "bench",
                "resolution": str(resolution), "train_batch_size": args.batch,
                "max_train_steps": args.warmup + args.steps, "network_dim": args.rank,
                "network_alpha": float(args.rank), "learning_rate": 1e-4, "optimizer_type": "AdamW",
                "mixed_precision": args.precision, "cache_latents": True,
                "cache_text_encoder_outputs": not args.live_text_encoders, "network_train_unet_only": True,
                "gradient_checkpointing": args.gradient_checkpointing, "channels_last": args.channels_last,
                "seed": 1, "save_model_as": "safetensors", "max_data_loader_n_workers": 0}
    if args.compile:
        settings.update(torch_compile=True, dynamo_backend=args.compile, dynamo_mode=args.compile_mode)
    return settings


def steady_state(events: list[dict], warmup: int) -> tuple[float, int]:
    """(seconds a step, steps measured) from the step events after the first ``warmup`` steps."""
    steps = sorted((e["step"], e["time"]) for e in events if e["type"] == "step")
    after = [(s, t) for s, t in steps if s >= warmup] if warmup else steps
    if len(after) < 2:
        raise ValueError("too few steps after the warm-up to time: raise --steps")
    (first, start), (last, end) = after[0], after[-1]
    return (end - start) / (last - first), last - first


def run_train_bench(args) -> dict:
    import torch

    from .bench import bench_family
    from .config import build_config
    from .training.trainer import train

    family = bench_family(args.model)
    resolution = args.resolution or (64 if args.tiny else round(family.estimate.native_pixels ** 0.5))
    own_folder = not args.folder_given
    folder = Path(tempfile.mkdtemp(prefix="lora-studio-bench-")) if own_folder else Path(args.folder)
    try:
        files = write_model(folder / "model", args.model, args.tiny)
        run_folder = folder / "run"
        shutil.rmtree(run_folder, ignore_errors=True)
        train(build_config(run_settings(args, files, folder, resolution)))
        events = [json.loads(line) for line in (run_folder / "bench_events.jsonl").read_text(
            encoding="utf-8").splitlines()]
    finally:
        if own_folder and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    step_s, measured = steady_state(events, args.warmup)
    start = next(e for e in events if e["type"] == "start")
    end = next(e for e in events if e["type"] == "end")
    estimate = start.get("estimate") or {}
    cuda = end.get("peak_gpu") is not None
    report = {
        "model": ("tiny-" if args.tiny else "") + args.model, "resolution": resolution, "batch": args.batch,
        "rank": args.rank, "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing,
        "compile": args.compile, "compile_mode": args.compile_mode,
        "text_encoders": "live" if args.live_text_encoders else "cached", "warmup": args.warmup,
        "steps_timed": measured, "step_ms": round(step_s * 1000, 2),
        "samples_per_s": round(args.batch / step_s, 3),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "peak_ram_mb": round(end["peak_ram"] / MIB, 1),
        "estimate_ram_mb": round(estimate["ram"] / MIB, 1) if estimate.get("ram") else None,
        "peak_gpu_mb": round(end["peak_gpu"] / MIB, 1) if cuda else None,
        "peak_gpu_training_mb": round(end["peak_gpu_training"] / MIB, 1) if cuda else None,
        "phase_gpu_peaks_mb": {e["phase"]: round(e["gpu_peak"] / MIB, 1) for e in events
                               if e["type"] == "memory" and e.get("gpu_peak") is not None},
        "estimate_gpu_mb": {phase: round(value / MIB, 1) for phase, value in
                            (estimate.get("vram_phases") or {}).items()},
    }
    return report


def format_train_report(r: dict) -> str:
    lines = [f"bench --train: {r['model']} {r['resolution']}px batch {r['batch']} rank {r['rank']} {r['precision']}"
             f"{', gradient checkpointing' if r['gradient_checkpointing'] else ''}"
             f"{', compiled (' + r['compile'] + ', ' + r['compile_mode'] + ')' if r['compile'] else ''}, text encoders "
             f"{r['text_encoders']}, on {r['device']}",
             f"steady state over {r['steps_timed']} steps after {r['warmup']} warm-up: {r['step_ms']:.2f} ms a step, "
             f"{r['samples_per_s']:.2f} samples/s"]
    if r["peak_gpu_mb"] is not None:
        phases = ", ".join(f"{name} {mb / 1024:.2f}" for name, mb in r["phase_gpu_peaks_mb"].items())
        estimate = ", ".join(f"{name} {mb / 1024:.2f}" for name, mb in r["estimate_gpu_mb"].items())
        lines.append(f"GPU peak {r['peak_gpu_mb'] / 1024:.2f} GiB, training {r['peak_gpu_training_mb'] / 1024:.2f} "
                     f"GiB; by phase (GiB): {phases}")
        lines.append(f"the estimate (GiB, with the CUDA context): {estimate}")
    ram = f"; the estimate said {r['estimate_ram_mb'] / 1024:.2f} GiB" if r["estimate_ram_mb"] else ""
    lines.append(f"RAM peak {r['peak_ram_mb'] / 1024:.2f} GiB{ram}")
    return "\n".join(lines)
