"""``lora-studio bench``: time LoRA training steps of our engine against a plain reference loop.

Both loops train the same UNet (the real SD1.5 or SDXL config with random weights, or a tiny one with ``--tiny``)
on the same random cached latents and text embeddings, in the same process. Ours: the engine's own training step
(the family's LoRA targets and loss in the accelerate-prepared step module, the step guard's optimizer step),
frozen weights in the chosen precision, float32 LoRA weights. Reference: what diffusers' LoRA example does, a peft
LoRA on the same modules, float32 master weights under autocast. The loops are warmed up one after the other, then
stepped in turn, so a busy moment of the machine slows both alike. Reported: median step time, samples/s, peak
memory, FLOPs per sample (``torch.utils.flop_counter``) and MFU where the device peak is known.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

@dataclass
class Result:
    loop: str
    step_ms: float
    samples_per_s: float
    peak_memory_mb: float
    tflop_per_sample: float | None
    mfu: float | None


def _device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    from .training.estimate import GPU

    return GPU(torch.cuda.get_device_name(device), 0.0).peak_flops


def bench_models() -> dict[str, tuple[str, dict, dict]]:
    """--model: (model family, its full-size UNet config, a tiny UNet config of the same topology)."""
    from .models import tiny
    from .models.sd1 import SD1_UNET
    from .models.sdxl import SDXL_UNET

    return {"sd15": ("sd1", SD1_UNET, tiny.TINY_UNET), "sdxl": ("sdxl", SDXL_UNET, tiny.TINY_SDXL_UNET)}


def bench_family(model: str):
    from .models.registry import BY_NAME

    return BY_NAME[bench_models()[model][0]]


def build_unet(model: str, tiny: bool):
    from diffusers import UNet2DConditionModel

    _, full, small = bench_models()[model]
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(small if tiny else full)


def make_batch(unet, batch: int, resolution: int, device) -> dict:
    g = torch.Generator().manual_seed(1)
    side = resolution // 8
    cfg = unet.config
    batch_data = {"latents": torch.randn(batch, cfg.in_channels, side, side, generator=g),
                  "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        batch_data["text_embeds"] = torch.randn(batch, pooled, generator=g)
        batch_data["time_ids"] = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * batch,
                                              dtype=torch.float32)
    return {k: v.to(device) for k, v in batch_data.items()}


def _cond(batch: dict, dtype) -> tuple[torch.Tensor, dict]:
    extra = {k: batch[k].to(dtype) for k in ("text_embeds", "time_ids") if k in batch}
    return batch["encoder_hidden_states"].to(dtype), extra


class OurLoop:
    """The engine's training step itself: the family's LoRA targets and loss in the accelerate-prepared
    ``TrainingStep``, cached latents and text-encoder outputs, and the step guard's optimizer step."""

    def __init__(self, unet, family, rank: int, precision: str, device, channels_last: bool,
                 checkpointing: bool, compile_backend: str | None = None):
        from accelerate import Accelerator

        from .config import build_config
        from .models.family import Components
        from .models.stable_diffusion import SD_SCHEDULER
        from .network.lora import LoRANetwork
        from .training.build import build_optimization
        from .training.guard import StepGuard
        from .training.precision import Precision
        from .training.step import BatchLoss, TrainingStep

        cfg = build_config({"learning_rate": 1e-4, "network_dim": rank, "network_alpha": rank,
                            "mixed_precision": precision, "channels_last": channels_last,
                            "network_train_unet_only": True, "max_grad_norm": 0})
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
        self.unet = unet.to(device, dtype).requires_grad_(False)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.unet.train()
        components = Components(family, self.unet, None, [], [], dict(SD_SCHEDULER), "bench")
        self.network = LoRANetwork(components, rank, rank, train_unet=True, train_text_encoder=False)
        self.network.attach().to(device, torch.float32)
        if compile_backend:
            self.unet.compile(backend=compile_backend)
        groups, optimizer, scheduler = build_optimization(self.network, cfg, 1_000_000)
        objective = family.objective(components, cfg)
        self.te_cache: dict = {}
        loss = BatchLoss(components, objective, cfg, device, Precision(precision, dtype), False, self.te_cache)
        self.model = self.accelerator.prepare(TrainingStep(self.network, loss))
        self.optimizer = self.accelerator.prepare(optimizer)
        self.guard = StepGuard(self.accelerator, self.optimizer, scheduler, [p for g in groups for p in g["params"]],
                               self.network, cfg)
        self.steps = 0

    def engine_batch(self, batch: dict) -> dict:
        """The bench batch as the engine's data loader gives it: latents, captions of cached text-encoder outputs."""
        captions = [f"caption {i}" for i in range(batch["latents"].shape[0])]
        for i, caption in enumerate(captions):
            self.te_cache[caption] = {k: batch[k][i] for k in ("encoder_hidden_states", "text_embeds") if k in batch}
        engine = {"latents": batch["latents"], "captions": captions,
                  "loss_weights": torch.ones(len(captions), device=batch["latents"].device)}
        if "time_ids" in batch:
            engine["time_ids"] = batch["time_ids"]
        return engine

    def step(self, batch: dict) -> torch.Tensor:
        self.steps += 1
        with self.accelerator.accumulate(self.model):
            loss = self.model(batch["engine"] if "engine" in batch else self.engine_batch(batch))
            self.accelerator.backward(loss)
            self.guard.judge([self.guard.optimizer_step(self.steps, loss, False)])
        return loss


class ReferenceLoop:
    """diffusers' LoRA example: peft LoRA on the same modules, float32 weights, autocast, plain AdamW."""

    def __init__(self, unet, rank: int, precision: str, device, targets: list[str]):
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        from .models.stable_diffusion import SD_SCHEDULER

        self.unet = unet.to(device, torch.float32).requires_grad_(False)
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=targets))
        params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.scheduler = DDPMScheduler.from_config(SD_SCHEDULER)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.device, self.precision = device, precision

    def step(self, batch: dict) -> torch.Tensor:
        import torch.nn.functional as F

        latents = batch["latents"]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (latents.shape[0],), device=self.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        hidden, extra = _cond(batch, torch.float32)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.precision != "no"):
            pred = self.unet(noisy, t, encoder_hidden_states=hidden,
                             **({"added_cond_kwargs": extra} if extra else {})).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows: no getrusage
        return float("nan")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def count_flops(loop, batch: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loop.step(batch)
    return counter.get_total_flops() / batch["latents"].shape[0]


@dataclass
class Timed:
    name: str
    loop: object
    batch: dict
    flops: float
    peak_memory_mb: float
    times: list[float] = field(default_factory=list)


def warm_up(name: str, build, batch_for, warmup: int, device) -> Timed:
    """Build a loop, run its warm-up steps and count its FLOPs. On a GPU its peak memory is what it allocated on top
    of what was there before it was built (the other loop's)."""
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    loop = build()
    batch = batch_for(loop)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        loop.step(batch)
    flops = count_flops(loop, batch)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" \
        else _peak_memory_mb(device)
    return Timed(name, loop, batch, flops, peak)


def time_steps(timed: list[Timed], steps: int, device) -> None:
    """Step the loops in turn, so that a busy moment of the machine slows each of them alike."""
    for _ in range(steps):
        for t in timed:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            loss = t.loop.step(t.batch)
            loss.item()  # the step is done when its result is on the host
            t.times.append(time.perf_counter() - start)


def result(t: Timed, device_peak: float | None) -> Result:
    step = statistics.median(t.times)
    samples = t.batch["latents"].shape[0] / step
    return Result(t.name, round(step * 1000, 3), round(samples, 3), round(t.peak_memory_mb, 1),
                  round(t.flops / 1e12, 6) if t.flops else None,
                  round(samples * t.flops / device_peak, 4) if device_peak and t.flops else None)


def lora_target_names(unet) -> list[str]:
    """Module paths our network adapts, for the reference loop's peft config (same work in both loops)."""
    from .models.stable_diffusion import unet_targets

    return [path for path, _, _ in unet_targets(unet)]


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    family = bench_family(args.model)
    resolution = args.resolution or (64 if args.tiny else round(family.estimate.native_pixels ** 0.5))
    peak = _device_peak(device)
    unet = build_unet(args.model, args.tiny)
    reference_unet = copy.deepcopy(unet) if not args.no_reference else None
    targets = lora_target_names(unet)
    batch = make_batch(unet, args.batch, resolution, device)
    timed = [warm_up("lora-studio", lambda: OurLoop(unet, family, args.rank, args.precision, device,
                                                     args.channels_last, args.gradient_checkpointing, args.compile),
                     lambda loop: {**batch, "engine": loop.engine_batch(batch)}, args.warmup, device)]
    if reference_unet is not None:
        timed.append(warm_up("reference (diffusers+peft)", lambda: ReferenceLoop(reference_unet, args.rank,
                                                                                 args.precision, device, targets),
                             lambda loop: batch, args.warmup, device))
    time_steps(timed, args.steps, device)
    results = [result(t, peak) for t in timed]
    report = {
        "model": ("tiny-" if args.tiny else "") + args.model, "resolution": resolution, "batch": args.batch,
        "rank": args.rank, "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing,
        "channels_last": args.channels_last, "compile": args.compile, "steps": args.steps, "warmup": args.warmup,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "results": [asdict(r) for r in results],
    }
    if len(results) == 2:
        report["speedup_vs_reference"] = round(results[1].step_ms / results[0].step_ms, 3)
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['model']} {report['resolution']}px batch {report['batch']} rank {report['rank']} "
             f"{report['precision']} on {report['device']} (median of {report['steps']} steps after "
             f"{report['warmup']} warm-up)",
             f"{'loop':30} {'step ms':>9} {'samples/s':>10} {'peak MB':>9} {'TFLOP/sample':>13} {'MFU':>7}"]
    for r in report["results"]:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
        flops = f"{r['tflop_per_sample']:.4g}" if r["tflop_per_sample"] else "n/a"
        lines.append(f"{r['loop']:30} {r['step_ms']:9.2f} {r['samples_per_s']:10.2f} {r['peak_memory_mb']:9.1f} "
                     f"{flops:>13} {mfu:>7}")
    if "speedup_vs_reference" in report:
        lines.append(f"ours vs reference: {report['speedup_vs_reference']:.2f}x faster per step")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.memory:
        from .bench_memory import describe, run_memory_bench

        results = run_memory_bench(Path(args.folder), args.layouts, 3 if args.steps == 20 else args.steps,
                                   args.resolution or 64, args.keep)
        print(describe(results))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=2)
        return 0
    report = run(args)
    print(format_report(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0
