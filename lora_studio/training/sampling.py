"""Sample images during training from an sd-scripts prompt file (``--n --w --h --d --s --l --ss``)."""

from __future__ import annotations

import importlib.util

import torch

from ..errors import UserError
from ..models.family import Components
from .prompts import SamplePrompt, parse_prompt_line, read_prompt_file  # noqa: F401  (re-exported)

SAMPLERS = {
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
    if key not in SAMPLERS:
        raise UserError(f"sample_sampler: unknown sampler '{name}'; use one of {', '.join(SAMPLERS)}")
    class_name, extra = SAMPLERS[key]
    if key == "lms" and importlib.util.find_spec("scipy") is None:
        raise UserError("sample_sampler lms needs scipy (pip install scipy); or choose euler, ddim or dpmsolver++")
    return getattr(diffusers, class_name).from_config({**scheduler_config, **extra})


@torch.no_grad()
def generate(components: Components, prompt: SamplePrompt, sampler: str, options: dict, device, dtype,
             generator_seed: int, output_type: str = "pil"):
    """One PIL image for ``prompt`` with the network as currently attached, made the family's way (``options``: its
    ``prompt_options``; ``output_type="np"``: a float array [H, W, 3] in 0..1 instead)."""
    seed = prompt.seed if prompt.seed is not None else generator_seed
    return components.family.render(components, prompt, sampler, options, device, dtype, seed, output_type)
