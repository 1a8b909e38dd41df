"""``lora-studio bench``: time LoRA training steps of our engine against a plain reference loop.

Both loops train the same denoiser on the same random cached latents and text-encoder outputs, in the same process:
the SD1.5 or SDXL UNet (``--model sd15`` / ``sdxl``), or the Flux.1 dev / schnell or Chroma transformer
(``flux-dev`` / ``flux-schnell`` / ``chroma``), at its real size with random weights or a tiny one of the same
topology with ``--tiny``. Ours: the engine's own training step (the family's LoRA targets and loss in the
accelerate-prepared step module, the step guard's optimizer step), frozen weights in the chosen precision, float32
LoRA weights. Reference: what diffusers' LoRA examples do, a peft LoRA on the same modules under autocast with plain
AdamW; for the UNets float32 master weights, for Flux diffusers' FluxTransformer2DModel with its frozen weights in
the training dtype (as its Flux LoRA example places them) and uniformly drawn sigmas. Chroma has no reference here.
The loops are warmed up one after the other, then stepped in turn, so a busy moment of the machine slows both
alike. Reported: median step time, samples/s, peak memory, FLOPs per sample (``torch.utils.flop_counter``) and MFU
where the device peak is known.
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
from torch import nn


@dataclass
class Result:
    loop: str
    step_ms: float
    samples_per_s: float
    peak_memory_mb: float
    tflop_per_sample: float | None
    mfu: float | None
    # CPU proxies of GPU speed: ATen operations one training step dispatches (each is a kernel launch or more on a
    # GPU; torch.profiler), and with --compile the graph breaks while compiling and the recompilations while timed
    aten_ops_per_step: int | None = None
    graph_breaks: int | None = None
    recompiles: int | None = None


def _device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    from .training.estimate import GPU

    return GPU(torch.cuda.get_device_name(device), 0.0).peak_flops


def bench_models() -> dict[str, tuple[str, object, object]]:
    """--model: (model family, its full-size denoiser config, a tiny config of the same topology). UNets: diffusers
    configs; Flux: ``FluxConfig`` (the tiny one with Flux's MLP ratio 4, as diffusers' reference model has it)."""
    import dataclasses

    from .models import tiny
    from .models.flux_net import CHROMA, FLUX_DEV, FLUX_SCHNELL
    from .models.registry import BY_NAME
    from .models.sd1 import SD1_UNET
    from .models.sdxl import SDXL_UNET
    from .models.tiny_flux import tiny_flux_config

    def small(variant):
        return dataclasses.replace(tiny_flux_config(variant), mlp_ratio=4.0)
    models = {"sd15": ("sd1", SD1_UNET, tiny.TINY_UNET), "sdxl": ("sdxl", SDXL_UNET, tiny.TINY_SDXL_UNET),
              "flux-dev": ("flux-dev", FLUX_DEV, small("dev")), "flux-schnell": ("flux-schnell", FLUX_SCHNELL,
                                                                                  small("schnell")),
              "chroma": ("chroma", CHROMA, small("chroma"))}
    for name in DIT_BENCH_MODELS:  # the other transformers: their family knows both sizes (``bench_configs``)
        models[name] = (name, *BY_NAME[name].bench_configs())
    return models


# the transformer families whose denoiser the bench builds through the family (DiTFamily.build_denoiser)
DIT_BENCH_MODELS = ("sd3-medium", "sd3.5-medium", "sd3.5-large", "anima", "lumina2")




def bench_family(model: str):
    from .models.registry import BY_NAME

    return BY_NAME[bench_models()[model][0]]


def is_transformer(model: str) -> bool:
    return model.startswith("flux") or model == "chroma" or model in DIT_BENCH_MODELS


def build_unet(model: str, tiny: bool):
    from diffusers import UNet2DConditionModel

    _, full, small = bench_models()[model]
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(small if tiny else full)


def materialize(model, device, dtype, seed: int = 0):
    """A module built on the meta device, given random weights directly on ``device`` in ``dtype`` (normal, std
    0.02; 1-D weights and scales 1, other 1-D parameters 0): a 12 B transformer never passes through system RAM or
    float32."""
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                value = torch.empty(param.shape, device=device, dtype=dtype)
                if param.ndim >= 2:
                    value.normal_(0.0, 0.02, generator=generator)
                elif name in ("weight", "scale"):
                    value.fill_(1.0)
                else:
                    value.zero_()
                module._parameters[name] = nn.Parameter(value, requires_grad=False)
    return model.to(device)  # buffers


def build_flux(model: str, tiny: bool, device, dtype):
    """Our Flux transformer (BFL layout) of ``model``, random weights on ``device``."""
    from .models.flux_net import FluxTransformer
    from .models.ldm_build import empty

    _, full, small = bench_models()[model]
    return materialize(empty(lambda: FluxTransformer(small if tiny else full)), device, dtype)


def build_flux_reference(config, device, dtype):
    """diffusers' FluxTransformer2DModel of the same sizes (its MLP ratio is always 4), random weights."""
    from diffusers import FluxTransformer2DModel

    from .models.ldm_build import empty

    if config.mlp_ratio != 4.0 or config.chroma:
        raise ValueError("diffusers' FluxTransformer2DModel has Flux.1's MLP ratio 4 and no Chroma layout")
    return materialize(empty(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=config.in_channels, num_layers=config.depth,
        num_single_layers=config.depth_single_blocks, attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads, joint_attention_dim=config.context_in_dim,
        pooled_projection_dim=config.vec_in_dim, guidance_embeds=config.guidance_embed,
        axes_dims_rope=tuple(config.axes_dim))), device, dtype)


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


def make_flux_batch(config, text_tokens: int, batch: int, resolution: int, device) -> dict:
    """Random cached latents (16 channels at 1/8 of the image's sides) and text-encoder outputs of the shapes Flux
    trains on: CLIP-L's pooled vector (B, vec_in_dim), T5's states (B, text_tokens, context_in_dim), T5's mask."""
    g = torch.Generator().manual_seed(1)
    side = resolution // 8
    batch_data = {"latents": torch.randn(batch, config.in_channels // 4, side, side, generator=g),
                  "pooled": torch.randn(batch, config.vec_in_dim, generator=g),
                  "t5": torch.randn(batch, text_tokens, config.context_in_dim, generator=g),
                  "t5_mask": torch.ones(batch, text_tokens, dtype=torch.int64)}
    return {k: v.to(device) for k, v in batch_data.items()}


def _cond(batch: dict, dtype) -> tuple[torch.Tensor, dict]:
    extra = {k: batch[k].to(dtype) for k in ("text_embeds", "time_ids") if k in batch}
    return batch["encoder_hidden_states"].to(dtype), extra


# what a bench batch holds besides a text-encoder cache entry (the family's condition: SD's states and SDXL's pooled
# embeds, Flux's pooled, T5 and mask ...)
NOT_CONDITIONING = ("latents", "time_ids", "engine")


class OurLoop:
    """The engine's training step itself: the family's LoRA targets and loss in the accelerate-prepared
    ``TrainingStep``, cached latents and text-encoder outputs, and the step guard's optimizer step."""

    def __init__(self, unet, family, rank: int, precision: str, device, channels_last: bool,
                 checkpointing: bool, compile_settings: dict | None = None):
        from accelerate import Accelerator

        from .config import build_config
        from .models.family import Components
        from .models.stable_diffusion import SD_SCHEDULER
        from .network.lora import LoRANetwork
        from .training.build import build_optimization
        from .training.compile import compile_denoiser
        from .training.guard import StepGuard
        from .training.precision import Precision
        from .training.step import BatchLoss, TrainingStep

        cfg = build_config({"learning_rate": 1e-4, "network_dim": rank, "network_alpha": rank,
                            "mixed_precision": precision, "channels_last": channels_last,
                            "network_train_unet_only": True, "max_grad_norm": 0, **(compile_settings or {})})
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
        self.unet = unet.to(device, dtype).requires_grad_(False)
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.unet.train()
        scheduler = {} if family.denoiser_title == "transformer" else dict(SD_SCHEDULER)
        components = Components(family, self.unet, None, [], [], scheduler, "bench")
        self.network = LoRANetwork(components, rank, rank, train_unet=True, train_text_encoder=False)
        self.network.attach().to(device, torch.float32)
        self.network.set_compute_dtype(Precision(precision, dtype).compute_dtype)
        if cfg.torch_compile:  # as the engine compiles it (training/build.py)
            compile_denoiser(self.unet, cfg)
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
            self.te_cache[caption] = {k: v[i] for k, v in batch.items() if k not in NOT_CONDITIONING}
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
    """diffusers' LoRA example: peft LoRA on the same modules, float32 weights, autocast, plain AdamW (and gradient
    checkpointing when ours has it)."""

    def __init__(self, unet, rank: int, precision: str, device, targets: list[str], checkpointing: bool = False,
                 compile_options: dict | None = None):
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        from .models.stable_diffusion import SD_SCHEDULER

        self.unet = unet.to(device, torch.float32).requires_grad_(False)
        if checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.unet.train()
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=targets))
        if compile_options:  # as diffusers' examples: torch.compile of the model with its adapters
            self.unet.compile(**compile_options)
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


class FluxReferenceLoop:
    """diffusers' Flux LoRA example: FluxTransformer2DModel with its frozen weights in the training dtype, a peft
    LoRA (float32) on every Linear of its blocks (our targets, with q / k / v and the single blocks' MLP input as
    separate modules), autocast, plain AdamW; x_t = (1 - sigma) x0 + sigma eps with uniform sigmas, target eps - x0,
    guidance 1 for dev; gradient checkpointing when ours has it."""

    def __init__(self, model, rank: int, precision: str, device, checkpointing: bool = False,
                 compile_options: dict | None = None):
        from peft import LoraConfig

        self.model = model.requires_grad_(False)
        if checkpointing:
            self.model.enable_gradient_checkpointing()
            self.model.train()
        targets = [path for path, module in model.named_modules() if isinstance(module, nn.Linear)
                   and path.startswith(("transformer_blocks.", "single_transformer_blocks."))]
        self.model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                          target_modules=targets))
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.data = p.data.float()
        if compile_options:
            self.model.compile(**compile_options)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        self.device, self.precision = device, precision

    def step(self, batch: dict) -> torch.Tensor:
        import torch.nn.functional as F

        from .models import flow_matching as fm

        latents = batch["latents"]
        b, _, h, w = latents.shape
        noise = torch.randn_like(latents)
        sigmas = torch.rand(b, device=self.device)
        noisy = (1 - sigmas[:, None, None, None]) * latents + sigmas[:, None, None, None] * noise
        guidance = torch.ones(b, device=self.device) if self.model.config.guidance_embeds else None
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.precision != "no"):
            pred = self.model(hidden_states=fm.pack_latents(noisy).to(self.dtype),
                              encoder_hidden_states=batch["t5"].to(self.dtype),
                              pooled_projections=batch["pooled"].to(self.dtype), timestep=sigmas,
                              img_ids=fm.image_ids(1, h, w, self.device)[0],
                              txt_ids=fm.text_ids(1, batch["t5"].shape[1], self.device)[0], guidance=guidance,
                              return_dict=False)[0]
        loss = F.mse_loss(pred.float(), fm.pack_latents(noise - latents).float())
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


def count_aten_ops(loop, batch: dict) -> int:
    """ATen operations one step dispatches (nested ones included), from torch.profiler's CPU events: what each
    loop asks of the device, counted the same way for both, on any machine."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop.step(batch)
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["total"]


@dataclass
class Timed:
    name: str
    loop: object
    batch: dict
    flops: float
    peak_memory_mb: float
    aten_ops: int | None = None
    graph_breaks: int | None = None
    recompiles: int = 0
    times: list[float] = field(default_factory=list)


def warm_up(name: str, build, batch_for, warmup: int, device, compiled: bool = False) -> Timed:
    """Build a loop, run its warm-up steps, then count its FLOPs and ATen operations per step. On a GPU its peak
    memory is what its warm-up steps allocated on top of what was there before it was built (the other loop's).
    ``compiled``: the graph breaks dynamo met while compiling it (its counters, cleared before it is built)."""
    from torch._dynamo.utils import counters

    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if compiled:
        counters.clear()
    loop = build()
    batch = batch_for(loop)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        loop.step(batch)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if device.type == "cuda" \
        else _peak_memory_mb(device)
    breaks = sum(counters["graph_break"].values()) if compiled else None
    flops = count_flops(loop, batch)
    return Timed(name, loop, batch, flops, peak, count_aten_ops(loop, batch), breaks)


def time_steps(timed: list[Timed], steps: int, device) -> None:
    """Step the loops in turn, so that a busy moment of the machine slows each of them alike; a frame dynamo
    compiles during a step is a recompilation of that loop."""
    for _ in range(steps):
        for t in timed:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            frames = _compiled_frames()
            start = time.perf_counter()
            loss = t.loop.step(t.batch)
            loss.item()  # the step is done when its result is on the host
            t.times.append(time.perf_counter() - start)
            t.recompiles += _compiled_frames() - frames


def result(t: Timed, device_peak: float | None) -> Result:
    step = statistics.median(t.times)
    samples = t.batch["latents"].shape[0] / step
    return Result(t.name, round(step * 1000, 3), round(samples, 3), round(t.peak_memory_mb, 1),
                  round(t.flops / 1e12, 6) if t.flops else None,
                  round(samples * t.flops / device_peak, 4) if device_peak and t.flops else None,
                  t.aten_ops, t.graph_breaks, t.recompiles if t.graph_breaks is not None else None)


def lora_target_names(unet) -> list[str]:
    """Module paths our network adapts, for the reference loop's peft config (same work in both loops)."""
    from .models.stable_diffusion import unet_targets

    return [path for path, _, _ in unet_targets(unet)]


def _dtype(precision: str):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def compile_settings(args) -> dict | None:
    """The engine's torch_compile settings from --compile BACKEND and --compile-mode."""
    if not args.compile:
        return None
    return {"torch_compile": True, "dynamo_backend": args.compile, "dynamo_mode": args.compile_mode}


def compile_options(args) -> dict | None:
    """torch.compile's arguments for the reference loop, the same as the engine's."""
    settings = compile_settings(args)
    if settings is None:
        return None
    from .config import build_config
    from .training.compile import compile_options as options_for

    return options_for(build_config(settings))


def _sd_loops(args, family, device, resolution: int):
    """(our denoiser, the batch, (name, the reference loop's builder) or None) for a UNet."""
    unet = build_unet(args.model, args.tiny)
    reference_unet = copy.deepcopy(unet) if not args.no_reference else None
    targets = lora_target_names(unet)
    batch = make_batch(unet, args.batch, resolution, device)
    reference = ("reference (diffusers+peft)", lambda: ReferenceLoop(
        reference_unet, args.rank, args.precision, device, targets, args.gradient_checkpointing,
        compile_options(args) if args.compile_reference else None)) if reference_unet is not None else None
    return unet, batch, reference


def _flux_loops(args, family, device, resolution: int):
    """(our transformer, the batch, (name, the reference loop's builder) or None) for Flux.1 / Chroma."""
    _, full, small = bench_models()[args.model]
    config = small if args.tiny else full
    text_tokens = family.default_t5_length
    model = build_flux(args.model, args.tiny, device, _dtype(args.precision))
    batch = make_flux_batch(config, text_tokens, args.batch, resolution, device)
    reference = None
    if not args.no_reference and not config.chroma:
        reference = ("reference (diffusers+peft)", lambda: FluxReferenceLoop(
            build_flux_reference(config, device, _dtype(args.precision)), args.rank, args.precision, device,
            args.gradient_checkpointing, compile_options(args) if args.compile_reference else None))
    return model, batch, reference


def _dit_loops(args, family, device, resolution: int):
    """(our transformer, the batch, None) for SD3 / SD3.5, Anima and Lumina 2: the family's denoiser with random
    weights, random cached latents and a random condition of the shapes its text encoders give (no diffusers+peft
    reference here)."""
    from .models.ldm_build import empty

    _, full, small = bench_models()[args.model]
    dtype = _dtype(args.precision)
    model = materialize(empty(lambda: family.build_denoiser(small if args.tiny else full)), device, dtype)
    g = torch.Generator().manual_seed(1)
    side = resolution // 8
    latents = torch.randn(args.batch, family.latent_channels_of({}), side, side, generator=g).to(device)
    condition = family.bench_condition(model, args.batch, device, dtype)
    return model, {"latents": latents, **condition}, None


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    family = bench_family(args.model)
    resolution = args.resolution or (64 if args.tiny else round(family.estimate.native_pixels ** 0.5))
    if resolution % family.pixel_multiple:
        raise ValueError(f"--resolution {resolution}: {family.title} needs a multiple of {family.pixel_multiple}")
    peak = _device_peak(device)
    loops = (_dit_loops if args.model in DIT_BENCH_MODELS else _flux_loops if is_transformer(args.model)
             else _sd_loops)
    denoiser, batch, reference = loops(args, family, device, resolution)
    compiled = compile_settings(args)
    timed = [warm_up("lora-studio", lambda: OurLoop(denoiser, family, args.rank, args.precision, device,
                                                     args.channels_last, args.gradient_checkpointing, compiled),
                     lambda loop: {**batch, "engine": loop.engine_batch(batch)}, args.warmup, device,
                     compiled is not None)]
    if reference is not None:
        name, build = reference
        timed.append(warm_up(name, build, lambda loop: batch, args.warmup, device,
                             compiled is not None and args.compile_reference))
    time_steps(timed, args.steps, device)
    results = [result(t, peak) for t in timed]
    report = {
        "model": ("tiny-" if args.tiny else "") + args.model, "resolution": resolution, "batch": args.batch,
        "rank": args.rank, "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing,
        "channels_last": args.channels_last, "compile": args.compile, "compile_mode": args.compile_mode,
        "compile_reference": bool(args.compile and args.compile_reference),
        "steps": args.steps, "warmup": args.warmup,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "results": [asdict(r) for r in results],
    }
    if len(results) == 2:
        report["speedup_vs_reference"] = round(results[1].step_ms / results[0].step_ms, 3)
    elif not args.no_reference:
        report["reference"] = f"no diffusers+peft reference for {family.title} here"
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['model']} {report['resolution']}px batch {report['batch']} rank {report['rank']} "
             f"{report['precision']} on {report['device']} (median of {report['steps']} steps after "
             f"{report['warmup']} warm-up)",
             f"{'loop':30} {'step ms':>9} {'samples/s':>10} {'peak MB':>9} {'TFLOP/sample':>13} {'MFU':>7} "
             f"{'ATen ops':>9}" + (f" {'breaks':>7} {'recompiles':>10}" if report.get("compile") else "")]
    for r in report["results"]:
        mfu = f"{r['mfu'] * 100:.1f}%" if r["mfu"] is not None else "n/a"
        flops = f"{r['tflop_per_sample']:.4g}" if r["tflop_per_sample"] else "n/a"
        line = (f"{r['loop']:30} {r['step_ms']:9.2f} {r['samples_per_s']:10.2f} {r['peak_memory_mb']:9.1f} "
                f"{flops:>13} {mfu:>7} {r['aten_ops_per_step'] or 0:9d}")
        if report.get("compile"):
            line += (f" {r['graph_breaks']:7d} {r['recompiles']:10d}" if r["graph_breaks"] is not None
                     else f" {'eager':>7} {'':>10}")
        lines.append(line)
    if "speedup_vs_reference" in report:
        lines.append(f"ours vs reference: {report['speedup_vs_reference']:.2f}x faster per step")
    if "reference" in report:
        lines.append(report["reference"])
    return "\n".join(lines)


def _print_and_save(text: str, report, json_path: str | None) -> int:
    print(text)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0


def main(args: argparse.Namespace) -> int:
    if args.train:
        from .bench_train import format_train_report, run_train_bench

        args.folder_given = args.folder is not None
        report = run_train_bench(args)
        return _print_and_save(format_train_report(report), report, args.json)
    if args.memory:
        from .bench_memory import describe, run_memory_bench

        results = run_memory_bench(Path(args.folder or "lora-studio-memory-bench"), args.layouts,
                                   3 if args.steps == 20 else args.steps, args.resolution or 64, args.keep)
        return _print_and_save(describe(results), results, args.json)
    report = run(args)
    return _print_and_save(format_report(report), report, args.json)


if __name__ == "__main__":
    from .cli import add_bench_options

    _parser = argparse.ArgumentParser(prog="python -m lora_studio.bench", description=__doc__.splitlines()[0])
    add_bench_options(_parser)
    sys.exit(main(_parser.parse_args()))
