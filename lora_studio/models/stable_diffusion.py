"""The recipe SD1.x, SD2.x and SDXL share: a UNet2DConditionModel denoiser trained with DDPM noise, epsilon or v
prediction, an AutoencoderKL and CLIP text encoders. Each family module fills in what differs (configs, prompt
encoding, names in LoRA files, metadata ids, estimate constants)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from .family import AdapterTarget, Components, ModelFamily, TargetSpec

SD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}
SD_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}

# sd-scripts' default LoRA adapts the Linear layers and 1x1 convs inside the transformer blocks; with LoCon
# (conv_dim) also every Linear/Conv2d of these blocks, their k x k convs at conv_dim.
UNET_TARGET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")

# Checkpoint name prefixes, single-file and diffusers-folder, for the estimate's parameter counts.
_UNET_KEYS = ("model.diffusion_model.", "unet.")
_VAE_KEYS = ("first_stage_model.", "vae.")
_TE_KEYS = ("cond_stage_model.", "conditioner.", "text_encoder")
_TE_ADAPTED = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "c_fc", "c_proj")


_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
STEM_LAYERS = {"conv_in": ("conv_in",), "conv_out": ("conv_out",),
               "time_embedding": ("time_embedding.linear_1", "time_embedding.linear_2")}


def unet_targets(unet, spec: TargetSpec = TargetSpec()) -> list[tuple[str, object, str]]:
    """(module path, module, kind) of every UNet layer that gets an adapter; kind is "linear" (a Linear or a 1x1
    conv), "conv" (a k x k conv: conv_dim applies) or "norm" (LyCORIS train_norm)."""
    from torch import nn

    blocks = (UNET_TARGET_BLOCKS if spec.transformer else ()) + (UNET_CONV_BLOCKS if spec.conv_blocks else ())
    found = []
    for block_name, block in unet.named_modules():
        kind = type(block).__name__
        if kind not in blocks:
            continue
        for child_name, child in block.named_modules():
            if spec.attention_only and not any(f"{a}." in f"{child_name}." for a in ("attn1", "attn2")):
                continue
            is_1x1 = isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)
            is_conv = isinstance(child, nn.Conv2d) and not is_1x1
            if isinstance(child, nn.Linear) or is_1x1:
                found.append((f"{block_name}.{child_name}", child, "linear"))
            elif is_conv and kind in UNET_CONV_BLOCKS and spec.kxk_convs:
                found.append((f"{block_name}.{child_name}", child, "conv"))
            elif spec.norms and isinstance(child, (nn.GroupNorm, nn.LayerNorm)):
                found.append((f"{block_name}.{child_name}", child, "norm"))
    for name in spec.stem:
        for path in STEM_LAYERS[name]:
            module = unet.get_submodule(path)
            is_conv = isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1)
            if is_conv and not spec.kxk_convs:
                continue
            found.append((path, module, "conv" if is_conv else "linear"))
    return found


class StableDiffusionFamily(ModelFamily):
    te_prefixes: tuple[str, ...] = ("lora_te",)  # LoRA file prefix of each text encoder
    tokenizer_pad = "<|endoftext|>"
    v_prediction_models = True  # v-prediction bases of this family exist (SD2.x 768-v, SDXL v-pred)
    modelspec_architecture = ""
    vae_scale = 0.18215

    # ---- loading
    def check_flags(self, v2: bool, source: str) -> None:
        from ..errors import UserError

        if v2:
            raise UserError(f"{source} is an {self.title} model but the config sets v2 = true; remove v2")

    def load_diffusers(self, folder: Path, model_index: dict, options=None) -> Components:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        opts = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=loading_dtype("UNet"), **opts)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=loading_dtype("VAE"), **opts)
        text_encoders, tokenizers = self._diffusers_text_encoders(folder)
        sched_file = folder / "scheduler" / "scheduler_config.json"
        sched = dict(SD_SCHEDULER)
        if sched_file.is_file():
            import json

            loaded = json.loads(sched_file.read_text())
            sched.update({k: v for k, v in loaded.items() if k in SD_SCHEDULER})
        return Components(self, unet, vae, text_encoders, tokenizers, sched, str(folder))

    def _diffusers_text_encoders(self, folder: Path) -> tuple[list, list]:
        from transformers import CLIPTextModel

        te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True,
                                           dtype=loading_dtype("text encoder"))
        return [te], [self._tokenizer(folder / "tokenizer", self.tokenizer_pad)]

    @staticmethod
    def _tokenizer(folder: Path, pad: str):
        from transformers import CLIPTokenizer

        from .tokenizer import clip_tokenizer

        return CLIPTokenizer.from_pretrained(folder, local_files_only=True) if folder.is_dir() \
            else clip_tokenizer(pad_token=pad)

    def _components(self, unet, vae, text_encoders, tokenizers, source: str) -> Components:
        return Components(self, unet, vae, text_encoders, tokenizers, dict(SD_SCHEDULER), source)

    # ---- adapters
    def denoiser_lora_stem(self, module_path, components):
        return self.unet_lora_stem(module_path, components.denoiser.config)

    def unet_lora_stem(self, module_path: str, unet_config) -> str:
        return "lora_unet_" + module_path.replace(".", "_")

    def adapter_targets(self, components, train_unet, train_text_encoder, spec):
        from .clip import adapted_layers

        targets = []
        if train_unet:
            for path, module, kind in unet_targets(components.denoiser, spec):
                targets.append(AdapterTarget(self.unet_lora_stem(path, components.denoiser.config), module, None,
                                             conv=kind == "conv", norm=kind == "norm"))
        if train_text_encoder and spec.text_encoder:
            for index, te in enumerate(components.text_encoders):
                targets += [AdapterTarget(stem, module, index)
                            for stem, module in adapted_layers(te, self.te_prefixes[index], spec.attention_only)]
        return targets

    def lora_names(self, components):
        """U-Net modules answer to the family's own naming (what LoRA Studio and sd-scripts write), to ``lora_unet_``
        + the diffusers path (SD1/SD2 files, ComfyUI) and to the LDM path (SDXL files, A1111); text-encoder layers to
        sd-scripts' names."""
        from torch import nn

        from .ldm_keys import unet_key

        unet = components.denoiser
        config = unet.config
        up_attn = ["CrossAttn" in t for t in config.up_block_types]
        layers = config.layers_per_block if isinstance(config.layers_per_block, int) else config.layers_per_block[0]
        table = {}
        kinds = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
        for path, module in unet.named_modules():
            if not path or not isinstance(module, kinds):
                continue
            names = ["lora_unet_" + path.replace(".", "_")]
            for make in (lambda: self.unet_lora_stem(path, config),
                         lambda: "lora_unet_" + unet_key(path + ".weight", layers, up_attn).removesuffix(".weight")
                         .replace(".", "_")):
                try:
                    names.append(make())
                except (KeyError, ValueError, IndexError):
                    pass
            for name in names:
                table.setdefault(name, module)
        for target in self.adapter_targets(components, False, True, TargetSpec()):
            table[target.stem] = target.module
        return table

    def lora_blocks(self):
        from ..network.blocks import BlockLayout

        return BlockLayout(per_side=12, middle=1, total=25, ends=False)

    def lora_block_index(self, stem):
        """sd-scripts' numbering of the diffusers-named SD1.x/2.x U-Net: down_blocks_i_(resnets|attentions)_j ->
        1 + 3i + j (downsamplers: 1 + 3i + 2), the middle block 12, up_blocks_i_... -> 13 + 3i + j."""
        match = _UPDOWN.search(stem)
        if match:
            side, i, kind, j = match.groups()
            index = 3 * int(i) + (2 if kind in ("upsamplers", "downsamplers") else int(j))
            return 1 + index if side == "down" else 13 + index
        return 12 if "mid_block_" in stem else -1

    # ---- prompts
    def prompt_options(self, settings):
        return {"clip_skip": int(getattr(settings, "clip_skip", None) or 1),
                "max_token_length": int(getattr(settings, "max_token_length", None) or 75)}

    # ---- the training objective
    def objective(self, components, cfg):
        from ..training.step import noise_recipe
        from .ddpm import DDPMObjective

        return DDPMObjective.for_model(components, bool(cfg.v_parameterization), bool(cfg.zero_terminal_snr),
                                       noise_recipe(cfg))

    # ---- latents
    def vae_scale_and_shift(self, vae):
        return float(vae.config.scaling_factor), float(getattr(vae.config, "shift_factor", None) or 0.0)

    def vae_needs_float32(self, precision, no_half_vae):
        return precision == "no" or no_half_vae or (precision == "fp16" and self.estimate.vae_fp32_under_fp16)

    # ---- sample images
    def samplers(self):
        from ..training.sampling import SAMPLERS

        return tuple(SAMPLERS)

    def render(self, components, prompt, sampler, options, device, dtype, seed, output_type="pil"):
        """Through the family's diffusers pipeline, with the run's prediction type and schedule."""
        import torch

        from ..training.sampling import make_scheduler

        pipe = self.pipeline(components, make_scheduler(prompt.sampler or sampler, components.scheduler_config))
        pipe.set_progress_bar_config(disable=True)
        cond = self.encode_prompt(components, [prompt.prompt], device, options)
        uncond = self.encode_prompt(components, [prompt.negative], device, options)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        scale = pipe.vae_scale_factor
        latents = torch.randn((1, components.denoiser.config.in_channels, prompt.height // scale,
                               prompt.width // scale), generator=generator).to(device, dtype)
        return pipe(**self.pipeline_prompt_kwargs(cond, uncond, dtype), latents=latents,
                    num_inference_steps=prompt.steps, height=prompt.height,
                    guidance_scale=7.5 if prompt.cfg_scale is None else prompt.cfg_scale,
                    width=prompt.width, output_type=output_type).images[0]

    def pipeline(self, components, scheduler):
        """A diffusers pipeline over the loaded components (the network attached), for sample images."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoders[0],
                                       tokenizer=components.tokenizers[0], unet=components.denoiser,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    def pipeline_prompt_kwargs(self, cond, uncond, dtype):
        return {"prompt_embeds": cond["encoder_hidden_states"].to(dtype),
                "negative_prompt_embeds": uncond["encoder_hidden_states"].to(dtype)}

    # ---- metadata
    def architecture(self, v_parameterization):
        return self.modelspec_architecture

    # ---- estimate
    def parameter_counts(self, shapes):
        def count(prefixes) -> int:
            return sum(math.prod(s) for k, s in shapes.items() if k.startswith(prefixes))
        lora_unet = lora_te = 0
        for key, shape in shapes.items():
            if not key.endswith(".weight") or len(shape) not in (2, 4) or (len(shape) == 4 and shape[2:] != [1, 1]):
                continue
            in_unet = key.startswith(_UNET_KEYS)
            if in_unet and ("transformer_blocks" in key or "proj_in" in key or "proj_out" in key):
                lora_unet += shape[0] + shape[1]
            elif not in_unet and "in_proj" in key:  # OpenCLIP's fused q/k/v: three adapters of [h, h]
                lora_te += 2 * shape[0]
            elif not in_unet and any(t in key for t in _TE_ADAPTED):
                lora_te += shape[0] + shape[1]
        return {"unet": count(_UNET_KEYS), "text_encoders": count(_TE_KEYS), "vae": count(_VAE_KEYS),
                "lora_linear": lora_unet, "lora_te": lora_te}


def loading_dtype(what: str):
    """The dtype the run loads this part in (``ldm_build.load_dtypes``); float32 when it does not say."""
    import torch

    from .ldm_build import wanted_dtype

    return wanted_dtype(what) or torch.float32
