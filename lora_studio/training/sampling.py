"""Sample images during training from an sd-scripts prompt file (``--n --w --h --d --s --l --ss``)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..models.family import Components


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    steps: int = 30
    cfg_scale: float = 7.5
    sampler: str | None = None


_OPTION = re.compile(r"^(n|w|h|d|s|l|ss)\s+(.*)$", re.DOTALL)


def parse_prompt_line(line: str, default_size: int) -> SamplePrompt | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = re.split(r"\s--", " " + line)
    sample = SamplePrompt(prompt=parts[0].strip() if parts[0].strip() else "", width=default_size,
                          height=default_size)
    for part in parts[1:]:
        match = _OPTION.match(part.strip())
        if not match:
            continue  # sd-scripts ignores options it does not know
        key, value = match[1], match[2].strip()
        try:
            if key == "n":
                sample.negative = value
            elif key == "w":
                sample.width = int(value)
            elif key == "h":
                sample.height = int(value)
            elif key == "d":
                sample.seed = int(value)
            elif key == "s":
                sample.steps = max(1, min(1000, int(value)))
            elif key == "l":
                sample.cfg_scale = float(value)
            elif key == "ss":
                sample.sampler = value
        except ValueError:
            raise UserError(f"sample_prompts: option --{key} needs a number, got '{value}' in: {line}") from None
    sample.width -= sample.width % 8
    sample.height -= sample.height % 8
    return sample


def read_prompt_file(path: str | Path, default_size: int) -> list[SamplePrompt]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sample_prompts: file not found: {path}")
    lines = _decode_lines(path.read_bytes())
    prompts = [p for p in (parse_prompt_line(line, default_size) for line in lines) if p is not None]
    if not prompts:
        raise UserError(f"sample_prompts: no prompt in {path} (one prompt a line; # starts a comment)")
    return prompts


def _decode_lines(data: bytes) -> list[str]:
    for encoding in ("utf-8-sig", "cp932", "cp1252"):
        try:
            return data.decode(encoding).splitlines()
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace").splitlines()


_SAMPLERS = {
    "ddim": ("DDIMScheduler", {}), "pndm": ("PNDMScheduler", {}), "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}), "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}), "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver",
                                                 "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}


def make_scheduler(name: str, scheduler_config: dict):
    import diffusers

    key = name.lower().removeprefix("k_")
    if key not in _SAMPLERS:
        raise UserError(f"sample_sampler: unknown sampler '{name}'; use one of {', '.join(_SAMPLERS)}")
    class_name, extra = _SAMPLERS[key]
    if key == "lms" and importlib.util.find_spec("scipy") is None:
        raise UserError("sample_sampler lms needs scipy (pip install scipy); or choose euler, ddim or dpmsolver++")
    return getattr(diffusers, class_name).from_config({**scheduler_config, **extra})


@torch.no_grad()
def generate(components: Components, prompt: SamplePrompt, sampler: str, clip_skip: int, max_token_length: int,
             device, dtype, generator_seed: int, output_type: str = "pil"):
    """One PIL image for ``prompt`` with the network as currently attached, through the family's pipeline
    (``output_type="np"``: the pipeline's float array [H, W, 3] in 0..1 instead)."""
    family = components.family
    pipe = family.pipeline(components, make_scheduler(prompt.sampler or sampler, components.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    cond = family.encode_prompt(components, [prompt.prompt], clip_skip, max_token_length, device)
    uncond = family.encode_prompt(components, [prompt.negative], clip_skip, max_token_length, device)
    seed = prompt.seed if prompt.seed is not None else generator_seed
    generator = torch.Generator(device="cpu").manual_seed(seed)
    scale = pipe.vae_scale_factor
    latents = torch.randn((1, components.unet.config.in_channels, prompt.height // scale, prompt.width // scale),
                          generator=generator).to(device, dtype)
    return pipe(**family.pipeline_prompt_kwargs(cond, uncond, dtype), latents=latents,
                num_inference_steps=prompt.steps, guidance_scale=prompt.cfg_scale, height=prompt.height,
                width=prompt.width, output_type=output_type).images[0]
