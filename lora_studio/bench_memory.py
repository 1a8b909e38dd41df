"""``lora-studio bench --memory``: the host RAM a run needs, on real-size SD1.5 and SDXL layouts.

A single-file checkpoint of the real layout is written with random weights (streamed tensor by tensor, so writing it
never needs the whole model in memory), then ``lora-studio train`` runs a few steps on it at a small resolution on
the CPU. The engine reports its memory after each phase (``memory`` events: loading the model, building the network,
caching, the first steps); the benchmark prints them with the process's peak RSS, so the figures can be watched for
regressions.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

LAYOUTS = ("sd15", "sdxl")
_DTYPE_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3"}


def layout_modules(layout: str):
    """The real-size U-Net, VAE and text encoder(s) of a layout, built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .models.sd1 import SD1_TEXT_ENCODER, SD1_UNET
    from .models.sdxl import SDXL_TEXT_ENCODER_1, SDXL_TEXT_ENCODER_2, SDXL_UNET
    from .models.stable_diffusion import SD_VAE

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    with init_empty_weights():
        vae = AutoencoderKL.from_config(dict(SD_VAE))
        if layout == "sd15":
            return UNet2DConditionModel.from_config(dict(SD1_UNET)), vae, CLIPTextModel(CLIPTextConfig(
                **SD1_TEXT_ENCODER))
        unet = UNet2DConditionModel.from_config(dict(SDXL_UNET))
        return unet, vae, [CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_ENCODER_1)),
                           CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2))]


def write_random_checkpoint(path: str | Path, layout: str, dtype: str = "float32", seed: int = 0) -> Path:
    """A single-file checkpoint of ``layout`` with random weights."""
    return write_random_modules(path, *layout_modules(layout), dtype=dtype, seed=seed, note=layout)


def write_random_modules(path: str | Path, unet, vae, te, dtype: str = "float32", seed: int = 0,
                         note: str = "", header_only: bool = False) -> Path:
    """The modules (built on the meta device) as a single-file checkpoint with random weights (normal, std 0.02;
    norm weights 1, biases 0), written tensor by tensor in the safetensors format. ``header_only``: the header
    alone (what the resource estimate reads), no weights."""
    from .models.single_file import single_file_state_dict

    meta = single_file_state_dict(unet, vae, te)  # names and shapes only: every tensor is on the meta device
    return write_random_state(path, {key: (tuple(t.shape), dtype) for key, t in meta.items()}, seed,
                              f"random {note} layout, seed {seed}", header_only)


def write_random_state(path: str | Path, tensors: dict[str, tuple[tuple[int, ...], str]], seed: int = 0,
                       note: str = "", header_only: bool = False) -> Path:
    """A safetensors file of ``tensors`` (name -> (shape, torch dtype name such as "bfloat16" or
    "float8_e4m3fn")) with random weights (normal, std 0.02; 1-D weights 1, other 1-D tensors 0), written tensor by
    tensor, so no more than one tensor is ever in memory. ``header_only``: the header alone, no weights (what the
    resource estimate reads; a real-size Flux.1 layout in a few hundred kilobytes)."""
    import torch

    header, offset = {}, 0
    for key, (shape, dtype) in tensors.items():
        size = math.prod(shape) * torch.tensor([], dtype=getattr(torch, dtype)).element_size()
        header[key] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt", "lora_studio_bench": note}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    generator = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for key, (shape, dtype) in ([] if header_only else tensors.items()):
            if len(shape) == 1 and key.endswith("weight"):  # only norms have 1-D weights
                value = torch.ones(shape)
            elif len(shape) == 1:
                value = torch.zeros(shape)
            else:
                value = torch.randn(shape, generator=generator) * 0.02
            fh.write(value.to(getattr(torch, dtype)).contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(partial, path)
    return path


def flux_modules(variant: str = "dev", config=None):
    """A Flux.1 dev / schnell or Chroma transformer (``config``: a FluxConfig; the real one by default) with the
    real AE, CLIP-L (None for Chroma) and T5-XXL, built on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .models.flux_net import CHROMA, FLUX_DEV, FLUX_SCHNELL, FluxTransformer
    from .models.flux_parts import CLIP_L, FLUX_AE, T5_XXL

    config = config or {"dev": FLUX_DEV, "schnell": FLUX_SCHNELL, "chroma": CHROMA}[variant]
    with init_empty_weights():
        clip = None if variant == "chroma" else CLIPTextModel(CLIPTextConfig(**CLIP_L))
        return (FluxTransformer(config), AutoencoderKL.from_config(dict(FLUX_AE)), clip,
                T5EncoderModel(T5Config(**T5_XXL)))


def write_flux_files(folder: str | Path, variant: str = "dev", transformer_dtype: str = "bfloat16",
                     t5_dtype: str = "float16", header_only: bool = True, config=None, seed: int = 0) -> dict:
    """Flux.1 / Chroma as users have them (``flux1-<variant>.safetensors`` in BFL names, ``ae.safetensors``,
    ``clip_l.safetensors`` but for Chroma, ``t5xxl.safetensors``), real size unless ``config`` says otherwise,
    with random weights or (``header_only``) the headers alone. A float8 dtype ("float8_e4m3fn", as
    flux1-dev-fp8 and t5xxl_fp8_e4m3fn.safetensors) stores the 2-D weights in it and the rest in bfloat16 / float16.
    Returns the settings naming the files."""
    from .models.tiny_flux import ae_file_state, clip_l_file_state, t5_file_state

    folder = Path(folder)
    transformer, ae, clip, t5 = flux_modules(variant, config)

    def layout(state: dict, dtype: str, rest: str) -> dict:
        fp8 = dtype.startswith("float8")
        return {k: (tuple(t.shape), dtype if not fp8 or (t.ndim == 2 and "relative_attention_bias" not in k
                                                          ) else rest) for k, t in state.items()}
    name = "chroma" if variant == "chroma" else f"flux1-{variant}"
    files = {"pretrained_model_name_or_path": (name, layout(transformer.state_dict(), transformer_dtype, "bfloat16")),
             "ae": ("ae", layout(ae_file_state(ae), "float32", "float32")),
             "t5xxl": ("t5xxl", layout(t5_file_state(t5), t5_dtype, "float16"))}
    if clip is not None:
        files["clip_l"] = ("clip_l", layout(clip_l_file_state(clip), "float16", "float16"))
    return {setting: str(write_random_state(folder / f"{stem}.safetensors", tensors, seed, f"random {stem}",
                                            header_only))
            for setting, (stem, tensors) in files.items()}


def _rss_of_tree(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.Error:
        return 0


def measure_run(checkpoint: Path, folder: Path, steps: int = 3, resolution: int = 64, batch_size: int = 2,
                rank: int = 8, mixed_precision: str = "no", extra: dict | None = None) -> dict:
    """Train ``steps`` steps on ``checkpoint`` in a new process; its peak RSS (sampled every 50 ms, and as the kernel
    counts it) and the memory events it wrote."""
    from .config import build_config, save_config
    from .demo import write_dataset

    folder.mkdir(parents=True, exist_ok=True)
    data = write_dataset(folder / "data", count=4, repeats=1)
    settings = {"pretrained_model_name_or_path": str(checkpoint), "train_data_dir": str(data),
                "output_dir": str(folder / "out"), "output_name": "bench", "resolution": str(resolution),
                "train_batch_size": batch_size, "max_train_steps": steps, "network_dim": rank,
                "network_alpha": float(rank), "learning_rate": 1e-4, "optimizer_type": "AdamW",
                "mixed_precision": mixed_precision, "cache_latents": True, "seed": 1, "save_model_as": "safetensors",
                **(extra or {})}
    config = save_config(build_config(settings).explicit(), folder / "bench.toml")
    exe = Path(sys.executable).with_name("lora-studio")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "lora_studio.cli"]
    started = time.time()
    with open(folder / "train.log", "wb") as log:
        proc = subprocess.Popen([*argv, "train", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _rss_of_tree(proc.pid))
            time.sleep(0.05)
    if proc.returncode != 0:
        tail = (folder / "train.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the benchmark run failed ({proc.returncode}):\n{tail}")
    events_file = folder / "out" / "bench_events.jsonl"
    events = [json.loads(line) for line in events_file.read_text(encoding="utf-8").splitlines()]
    phases = [e for e in events if e["type"] == "memory"]
    end = next(e for e in events if e["type"] == "end")
    return {"seconds": round(time.time() - started, 1), "sampled_peak_rss": peak, "phases": phases,
            "peak_ram": end.get("peak_ram"), "estimate_ram": next(
                ((e.get("estimate") or {}).get("ram") for e in events if e["type"] == "start"), None)}


def run_memory_bench(folder: Path, layouts: list[str], steps: int, resolution: int, keep: bool) -> list[dict]:
    results = []
    for layout in layouts:
        dtype = "float32" if layout == "sd15" else "float16"
        mixed = "no" if layout == "sd15" else "bf16"
        checkpoint = folder / f"random-{layout}-{dtype}.safetensors"
        if not checkpoint.is_file():
            print(f"writing a random {layout} checkpoint ({dtype}) to {checkpoint} …", flush=True)
            write_random_checkpoint(checkpoint, layout, dtype)
        print(f"training {steps} steps on it at {resolution} px (mixed_precision {mixed}) …", flush=True)
        result = measure_run(checkpoint, folder / f"run-{layout}", steps, resolution, mixed_precision=mixed)
        result.update(layout=layout, checkpoint_dtype=dtype, mixed_precision=mixed,
                      checkpoint_bytes=checkpoint.stat().st_size)
        results.append(result)
        if not keep:
            checkpoint.unlink()
    return results


def describe(results: list[dict]) -> str:
    gib = 2**30
    lines = []
    for r in results:
        lines.append(f"{r['layout']}: checkpoint {r['checkpoint_bytes'] / gib:.2f} GiB ({r['checkpoint_dtype']}), "
                     f"mixed_precision {r['mixed_precision']}, {r['seconds']} s")
        for e in r["phases"]:
            lines.append(f"  after {e['phase']:28} RSS {e['rss'] / gib:6.2f} GiB   "
                         f"peak so far {e['peak'] / gib:6.2f} GiB")
        peak = r["peak_ram"] or r["sampled_peak_rss"]
        lines.append(f"  peak RAM {peak / gib:.2f} GiB (sampled {r['sampled_peak_rss'] / gib:.2f} GiB)"
                     + (f"; the estimate said {r['estimate_ram'] / gib:.2f} GiB" if r.get("estimate_ram") else ""))
    return "\n".join(lines)
