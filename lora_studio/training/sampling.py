"""Sample images during training from an sd-scripts prompt file (``--n --w --h --d --s --l --ss``)."""

from __future__ import annotations

import importlib.util

import torch

from ..errors import UserError
from ..models.family import Components
from .prompts import SamplePrompt, parse_prompt_line, read_prompt_file  # noqa: F401  (re-exported)

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
