"""SD3 medium, SD3.5 medium and SD3.5 large: MMDiT rectified-flow transformers in Stability AI's layout, trained as
sd-scripts' sd3_train_network.py trains them.

- Files: one checkpoint (the MMDiT under ``model.diffusion_model.``) that may hold its parts too (CLIP-L, CLIP-G,
  T5-XXL under ``text_encoders.*``, the VAE under ``first_stage_model.``); the parts it lacks come from the settings
  clip_l, clip_g, t5xxl (optional: zeros without it) and vae, and a setting that is given wins over the checkpoint's
  own part. The variants are told apart by their weights: q/k norms (``ln_k``) make SD3.5, an x-block ``attn2``
  SD3.5 medium (sd3_utils.analyze_state_dict_state).
- Latents: the 16-channel VAE's ``(z - 0.0609) * 1.5305``, applied once at encoding; 2 x 2 patches, so image sides
  are multiples of 16.
- Conditioning (``sd3_parts``): CLIP-L and CLIP-G penultimate states, zero-padded to T5's width, then T5's states
  (256 tokens by default) along the sequence; the pooled vector is both CLIPs' projected pooled outputs.
- Objective: u from the weighting scheme's density, shifted by training_shift, whole timesteps t in
  [min_timestep, max_timestep) (0..1000), sigma = t / 1000, x_t = (1 - sigma) x0 + sigma eps; the model gets t, its
  output is preconditioned to an x0 estimate x_t - sigma * out and compared with x0 (the latents), weighted by the
  scheme (sigma_sqrt, cosmap).
- LoRA names: ``lora_unet_`` + the MMDiT module path (fused qkv is one module: 237 modules for SD3 medium, 263 for
  SD3.5 medium, 377 for SD3.5 large), ``lora_te1_`` CLIP-L, ``lora_te2_`` CLIP-G, ``lora_te3_`` T5 (train_t5xxl),
  as networks.lora_sd3 names them and ComfyUI reads them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .dit import DIT_IGNORED, DiTFamily, decode_image
from .family import AdapterTarget, EstimateConstants, Objective, PartFile

log = logging.getLogger("lora_studio")

SD3_PREFIX = "model.diffusion_model."
PART_SETTINGS = ("clip_l", "clip_g", "t5xxl", "vae")
NOT_SD3 = "not read by sd-scripts' SD3 recipe (it is a Flux / Anima / Lumina setting)"
# sd-scripts' networks.lora_sd3 per-type dims: (setting, the words its LoRA name must hold), first match wins
TYPE_DIMS = (("context_attn_dim", ("context_block", "attn")), ("context_mlp_dim", ("context_block", "mlp")),
             ("context_mod_dim", ("context_block", "adaLN_modulation")), ("x_attn_dim", ("x_block", "attn")),
             ("x_mlp_dim", ("x_block", "mlp")), ("x_mod_dim", ("x_block", "adaLN_modulation")))
# emb_dims = [context_embedder, t_embedder, x_embedder, y_embedder, final_mod, final_linear]: the modules of each
EMB_LAYERS = (("context_embedder",), ("t_embedder.mlp.0", "t_embedder.mlp.2"), ("x_embedder.proj",),
              ("y_embedder.mlp.0", "y_embedder.mlp.2"), ("final_layer.adaLN_modulation.1",), ("final_layer.linear",))
CLIP_TARGETS = r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"
T5_TARGETS = r"encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qkvo]|DenseReluDense\.(wi_0|wi_1|wi|wo))$"
NUM_TRAIN_TIMESTEPS = 1000
SAMPLE_SHIFT = 3.0  # sd-scripts' SD3 samples (ModelSamplingDiscreteFlow(shift=3.0)) and ComfyUI's SD3 model


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


class SD3Family(DiTFamily):
    """SD3 medium; ``SD35Medium`` and ``SD35Large`` change what differs (the weights they are told by, the ids)."""

    name = "sd3-medium"
    title = "SD3 medium"
    model_type = "medium"  # sd-scripts' analyze_state_dict_state: ss_base_model_version, modelspec's architecture
    base_model_version = "medium"
    modelspec_implementation = "diffusers"  # what sd-scripts stamps on an SD3 LoRA (sai_model_spec: LoRA, not SDXL)
    lora_module = "networks.lora_sd3"
    checkpoint_prefixes = (SD3_PREFIX,)
    separate_files = {"clip_l": "CLIP-L text encoder (clip_l.safetensors)",
                      "clip_g": "CLIP-G text encoder (clip_g.safetensors)",
                      "t5xxl": "T5-XXL text encoder (t5xxl_fp16.safetensors)",
                      "vae": "SD3 VAE (16 latent channels)"}
    part_files = {"clip_l": PartFile(("text_encoders", "clip"), ("clip_l.safetensors",), ("clip_l", "clip-l")),
                  "clip_g": PartFile(("text_encoders", "clip"), ("clip_g.safetensors",), ("clip_g", "clip-g")),
                  "t5xxl": PartFile(("text_encoders", "clip"), ("t5xxl_fp16.safetensors",
                                                                "t5xxl_fp8_e4m3fn.safetensors"), ("t5",)),
                  "vae": PartFile(("vae",), ("sd3_vae.safetensors", "sd3.5_vae.safetensors"), ("sd3",))}
    part_checks = {"clip_l": ("sd3_parts.is_clip", "a CLIP text encoder (clip_l.safetensors)"),
                   "clip_g": ("sd3_parts.is_clip", "a CLIP text encoder (clip_g.safetensors)"),
                   "t5xxl": ("flux_parts.is_t5", "a T5-XXL encoder (t5xxl_fp16.safetensors)"),
                   "vae": ("sd3_parts.is_sd3_vae", "SD3's 16-channel VAE (no quant_conv)")}
    optional_files = ("t5xxl",)  # without T5 its states are zeros (sd-scripts' concat_encodings)
    ignored_settings = {**DIT_IGNORED, **{name: NOT_SD3 for name in (
        "timestep_sampling", "discrete_flow_shift", "sigmoid_scale", "model_prediction_type", "guidance_scale", "ae",
        "ip_noise_gamma", "ip_noise_gamma_random_strength")}}
    text_encoder_lora_prefixes = {"clip_l": "lora_te1_", "clip_g": "lora_te2_", "t5xxl": "lora_te3_"}
    te_target_patterns = {"clip_l": CLIP_TARGETS, "clip_g": CLIP_TARGETS, "t5xxl": T5_TARGETS}
    lora_path_prefixes = ("diffusion_model.", "joint_blocks.", "x_embedder.", "t_embedder.", "y_embedder.",
                          "context_embedder.", "final_layer.")
    block_pattern = r"(joint_blocks)\.(\d+)\."
    main_blocks = "joint_blocks"
    sample_steps = 30  # sd-scripts' SD3 samples: 30 steps, scale 7.5 unless the prompt says (--s, --l)
    sample_cfg = 7.5
    # SD3 medium at 1024 px: 4096 image + 333 text tokens through 24 joint blocks of width 1536. A joint block is two
    # streams with one joint attention and 4x MLPs, as a Flux double block, so its activations are taken as Flux's
    # ~49.5 bytes a token per unit of width (bf16, SDPA, LoRA on every block Linear; flux.py): 24 x 49.5 x 1536 =
    # 1.82 MB a token = 0.46 MB a latent pixel (a token is 2 x 2). FLOPs: FlopCounterMode over the real-size MMDiT on
    # the meta device at 1024 px with 333 text tokens (forward 8.9 TFLOP), LoRA step = 2.2 x forward (the
    # backward 1.2 x: activation gradients only, flux.py's rule). TE cache entry: the (77 + 256) x 4096 context and the
    # 2048 pooled vector, float32.
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.46e6, step_flops=1.96e13,
                                 native_pixels=1024 * 1024, te_cache_bytes_per_caption=(333 * 4096 + 2048) * 4)

    # ---- recognising and loading
    def matches_checkpoint(self, keys):
        keys = {self.strip_prefix(k) for k in keys}
        if "joint_blocks.0.x_block.attn.qkv.weight" not in keys:
            return False
        return self._variant_of(keys) == self.model_type

    @staticmethod
    def _variant_of(keys) -> str:
        """sd-scripts' model_type from (prefix-free) names: q/k norm -> SD3.5, x-block attn2 -> its medium."""
        if "joint_blocks.0.context_block.attn.ln_k.weight" not in keys:
            return "medium"
        return "5-medium" if any(re.match(r"joint_blocks\.\d+\.x_block\.attn2\.", k) for k in keys) else "5-large"

    def matches_diffusers(self, model_index, unet_config):
        if model_index.get("_class_name") != "StableDiffusion3Pipeline":
            return False
        if not unet_config.get("qk_norm"):
            variant = "medium"
        else:
            variant = "5-medium" if unet_config.get("dual_attention_layers") else "5-large"
        return variant == self.model_type

    def load_diffusers(self, folder, model_index, options=None):
        from ..errors import UserError

        raise UserError(f"pretrained_model_name_or_path: {folder} is an SD3 diffusers folder; LoRA Studio trains SD3 "
                        "from its single checkpoint file, as sd-scripts does: give the folder's "
                        f"{'sd3_medium' if self.model_type == 'medium' else 'sd3.5_' + self.model_type[2:]}"
                        ".safetensors (the text encoders from text_encoders/ as clip_l, clip_g, t5xxl)")

    def parts_to_find(self, source) -> list[str]:
        """The parts ``source``'s checkpoint does not hold (T5 may then be left out: ``optional_files``); when the
        header cannot be read, none (the model check names the file)."""
        from .sd3_parts import checkpoint_parts

        try:
            from ..io_utils import read_safetensors_header

            held = checkpoint_parts(read_safetensors_header(Path(str(source)).expanduser(), "model").tensors)
        except Exception:
            return []
        return [name for name in PART_SETTINGS if not held[name]]

    def family_checks(self, cfg):
        from ..errors import UserError

        notes = []
        for name in ("clip_l_dropout_rate", "clip_g_dropout_rate", "t5_dropout_rate", "pos_emb_random_crop_rate"):
            value = getattr(cfg, name, None)
            if value is not None and not 0.0 <= float(value) <= 1.0:
                raise UserError(f"{name} must be between 0 and 1, got {value}")
        shift = getattr(cfg, "training_shift", None)
        if shift is not None and float(shift) <= 0:
            raise UserError(f"training_shift must be above 0, got {shift}")
        if self.model_type != "5-medium":
            for name in ("pos_emb_random_crop_rate", "enable_scaled_pos_embed"):
                if getattr(cfg, name, None):
                    notes.append((name, f"made for SD3.5 medium (its 384-patch position table); with {self.title} "
                                        "sd-scripts warns of unexpected results"))
        if getattr(cfg, "cache_text_encoder_outputs", False) and any(
                getattr(cfg, n, None) for n in ("clip_l_dropout_rate", "clip_g_dropout_rate", "t5_dropout_rate")):
            notes.append(("cache_text_encoder_outputs", "the per-encoder dropout zeroes the cached outputs at each "
                                                        "step, as sd-scripts does"))
        return notes

    def load_single_file(self, sd, source, options=None):
        """The MMDiT from the checkpoint (sizes from its shapes), and the parts: a setting's file, else the
        checkpoint's own part; SD3.5 medium's position options (pos_emb_random_crop_rate, enable_scaled_pos_embed)
        set from ``options``."""
        from . import ldm_build
        from .sd3_net import MMDiT, config_from_state_dict

        if isinstance(getattr(sd, "path", None), Path):  # a SafetensorsView: the shapes from its header
            from ..io_utils import read_safetensors_header

            shapes = {k: tuple(v["shape"]) for k, v in read_safetensors_header(sd.path, "model").tensors.items()}
        else:
            shapes = {k: tuple(v.shape) for k, v in sd.items()}
        config = config_from_state_dict(shapes)
        prefixed = any(k.startswith(SD3_PREFIX) for k in shapes)
        denoiser = ldm_build.empty(lambda: MMDiT(config))
        ldm_build._fill(denoiser, lambda name, shape: sd.get(SD3_PREFIX + name if prefixed else name), "UNet", source)
        get = (lambda name: getattr(options, name, None)) if options is not None else (lambda name: None)
        denoiser.set_pos_emb_random_crop_rate(get("pos_emb_random_crop_rate") or 0.0)
        if get("enable_scaled_pos_embed"):
            denoiser.enable_scaled_pos_embed(self.training_latent_sizes(options))
        return self._with_parts(denoiser, source, set(shapes), get)

    @staticmethod
    def training_latent_sizes(cfg) -> list[int]:
        """sd-scripts' latent sizes for the scaled position tables: round(sqrt(width x height)) // 8 of the dataset's
        resolution (each dataset's; here the run's resolution setting)."""
        import math

        text = str(getattr(cfg, "resolution", None) or "1024")
        sides = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
        width, height = (sides[0], sides[-1])
        return [round(math.sqrt(width * height)) // 8]

    def _with_parts(self, denoiser, source: str, keys: set, get):
        import torch

        from .family import Components
        from .flux_parts import load_t5xxl
        from .ldm_build import wanted_dtype
        from .sd3_parts import checkpoint_parts, load_clip, load_tokenizers, load_vae

        held = checkpoint_parts(keys)
        paths = {name: get(name) for name in PART_SETTINGS}
        self._require_files({n: paths[n] for n in PART_SETTINGS if not held[n] and n not in self.optional_files},
                            source)
        te_dtype = wanted_dtype("text encoder") or torch.float32

        where = {name: ((Path(paths[name]).expanduser(), False) if paths[name] else
                        (Path(source), True) if held[name] else None) for name in PART_SETTINGS}
        clip_l = load_clip(where["clip_l"][0], "clip_l", te_dtype, in_checkpoint=where["clip_l"][1])
        clip_g = load_clip(where["clip_g"][0], "clip_g", te_dtype, in_checkpoint=where["clip_g"][1])
        t5 = load_t5xxl(where["t5xxl"][0], te_dtype, bool(get("fp8_base"))) if where["t5xxl"] else None
        vae = load_vae(where["vae"][0], torch.float32, in_checkpoint=where["vae"][1])
        tokenizers = load_tokenizers(get("tokenizer_cache_dir"), need_t5=t5 is not None)
        encoders = [clip_l, clip_g] + ([t5] if t5 is not None else [])
        files = [str(where[n][0]) for n in ("clip_l", "clip_g", "t5xxl") if where[n]]
        info = {"text_encoder_identity": self._files_identity(sorted(set(files))) + ("|no-t5" if t5 is None else "")}
        return Components(self, denoiser, vae, encoders, list(tokenizers[:len(encoders)]), {}, source, info)

    # ---- adapters
    def network_args(self):
        from ..config.network_args import SD3_ARGS

        return SD3_ARGS

    def adapter_targets(self, components, train_unet, train_text_encoder, spec):
        """sd-scripts' networks.lora_sd3: every Linear of the joint blocks' context and x streams (fused qkv is one
        module), at the per-type dims and only in train_block_indices; emb_dims adds the embedders and the final
        layer; CLIP-L (lora_te1_) and CLIP-G (lora_te2_) attention and MLP; T5 (lora_te3_) with train_t5xxl."""
        from torch import nn

        from .clip import adapted_layers
        from .flux import t5_layers

        plan = SD3AdapterPlan.of(dict(spec.family_args), components.denoiser)
        model = components.denoiser
        targets = []
        if train_unet:
            for path, module in model.named_modules():
                if not (isinstance(module, nn.Linear) and path.startswith("joint_blocks.")):
                    continue
                if spec.attention_only and ".attn" not in path:
                    continue
                rank = plan.rank(path)
                if rank == 0:
                    continue
                split = (module.out_features // 3,) * 3 if plan.split_qkv and path.endswith(".qkv") else ()
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), module, None, rank=rank,
                                             split=split))
            for path, rank in plan.embedder_layers():
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), model.get_submodule(path),
                                             None, rank=rank))
            if plan.verbose:
                for target in targets:
                    log.info("lora_sd3: %s rank %s", target.stem, target.rank or "network_dim")
        if train_text_encoder and spec.text_encoder:
            prefixes = ("lora_te1", "lora_te2")
            for index, encoder in enumerate(components.text_encoders):
                if index < 2:
                    targets += [AdapterTarget(stem, module, index)
                                for stem, module in adapted_layers(encoder, prefixes[index], spec.attention_only)]
                elif spec.t5:
                    targets += [AdapterTarget(stem, module, index) for stem, module in t5_layers(encoder)]
        return targets

    def denoiser_target(self, path):
        """The joint blocks' Linears (not their q/k norms)."""
        return re.match(self.block_pattern, path) is not None and not path.endswith((".ln_q", ".ln_k"))

    def lora_weight_keys(self, part, keys, targets_only=False):
        """As DiTFamily's; in a checkpoint ("transformer") the text encoders it holds are named as their own files
        would be (lora_te1_ / lora_te2_ / lora_te3_), its VAE not at all."""
        from .sd3_parts import CHECKPOINT_PARTS

        if part != "transformer":
            return super().lora_weight_keys(part, keys, targets_only)
        keys = list(keys)
        own = [k for k in keys if not k.startswith(("text_encoders.", "first_stage_model."))]
        table = super().lora_weight_keys(part, own, targets_only)
        for te in ("clip_l", "clip_g", "t5xxl"):
            prefix = CHECKPOINT_PARTS[te]
            inner = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
            for stem, key in super().lora_weight_keys(te, list(inner), targets_only).items():
                table.setdefault(stem, inner[key])
        return table

    # ---- prompts
    def joint_text_tokens(self, options):
        """CLIP's 77 and T5's tokens (333 by default) join the image tokens."""
        return 77 + int(options.get("t5xxl_max_token_length", 256))

    def prompt_options(self, settings):
        length = getattr(settings, "t5xxl_max_token_length", None) or 256
        return {"t5xxl_max_token_length": int(length),
                "apply_lg_attn_mask": bool(getattr(settings, "apply_lg_attn_mask", None) or False),
                "apply_t5_attn_mask": bool(getattr(settings, "apply_t5_attn_mask", None) or False)}

    def encode_prompt(self, components, captions, device, options, weighted=False):
        from .sd3_parts import encode_prompts

        encoders = list(components.text_encoders) + [None] * (3 - len(components.text_encoders))
        tokenizers = list(components.tokenizers) + [None] * (3 - len(components.tokenizers))
        return encode_prompts(encoders[0], encoders[1], encoders[2], tokenizers, captions,
                              options["t5xxl_max_token_length"], options["apply_lg_attn_mask"],
                              options["apply_t5_attn_mask"], components.denoiser.config.context_in_dim, device)

    # ---- objective
    def sd3_recipe(self, cfg) -> SD3Recipe:
        """The run's SD3 timestep recipe (the Flux sampler settings are not SD3's: left at neutral values)."""
        flow = self.flow_recipe(cfg, timestep_sampling="uniform", sigmoid_scale=1.0, discrete_flow_shift=1.0,
                                model_prediction_type="raw", ip_noise_gamma=None)
        shift = getattr(cfg, "training_shift", None)
        return SD3Recipe(flow, float(shift) if shift is not None else 1.0)

    def objective(self, components, cfg):
        widths = [getattr(te.config, "hidden_size", 0) for te in components.text_encoders[:2]]
        rates = tuple(float(getattr(cfg, n, None) or 0.0) for n in ("clip_l_dropout_rate", "clip_g_dropout_rate",
                                                                    "t5_dropout_rate"))
        return SD3Objective(self.sd3_recipe(cfg), rates, widths)

    # ---- sample images
    def render(self, components, prompt, sampler, options, device, dtype, seed, output_type="pil"):
        """sd-scripts' SD3 sampling: Euler over the schedule shifted by 3.0 (timesteps from 1000 down to the
        shifted 1/1000, then 0), classifier-free guidance with the negative prompt (``--l``, default 7.5)."""
        import torch

        from . import flow_matching as fm

        cond = self.encode_prompt(components, [prompt.prompt], device, options)
        cfg_scale = prompt.cfg_scale if prompt.cfg_scale is not None else self.sample_cfg
        uncond = self.encode_prompt(components, [prompt.negative], device, options) if cfg_scale != 1.0 else None
        h, w = prompt.height // 8, prompt.width // 8
        channels = components.vae.config.latent_channels
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = torch.randn((1, channels, h, w), generator=generator).to(device, torch.float32)
        objective = SD3Objective(SD3Recipe(fm.FlowRecipe(), 1.0), (0.0, 0.0, 0.0), [])

        def velocity(condition):
            def call(x, sigmas):
                return objective.flow(components, x, sigmas * NUM_TRAIN_TIMESTEPS, condition).float()
            return call
        latents = fm.euler_sample(velocity(cond), latents, sampling_sigmas(prompt.steps), cfg_scale,
                                  velocity(uncond) if uncond is not None else None)
        return decode_image(components.vae, latents, self.vae_scale_and_shift(components.vae), output_type)

    # ---- metadata
    def architecture(self, v_parameterization):
        return f"stable-diffusion-3-{self.model_type}/lora"

    def metadata(self, cfg):
        """sd-scripts' Sd3NetworkTrainer.update_metadata keys with the values this run used, and the shift and T5
        length it trained with."""
        recipe = self.sd3_recipe(cfg)
        options = self.prompt_options(cfg)
        return {"ss_apply_lg_attn_mask": options["apply_lg_attn_mask"],
                "ss_apply_t5_attn_mask": options["apply_t5_attn_mask"],
                "ss_weighting_scheme": recipe.flow.weighting_scheme, "ss_logit_mean": recipe.flow.logit_mean,
                "ss_logit_std": recipe.flow.logit_std, "ss_mode_scale": recipe.flow.mode_scale,
                "ss_training_shift": recipe.shift, "ss_t5xxl_max_token_length": options["t5xxl_max_token_length"]}

    # ---- estimate
    def width_of(self, shapes):
        shape = next((s for k, s in shapes.items() if self.strip_prefix(k) == "x_embedder.proj.weight"), None)
        return int(shape[0]) if shape else 0

    def latent_channels_of(self, shapes):
        shape = next((s for k, s in shapes.items() if self.strip_prefix(k) == "x_embedder.proj.weight"), None)
        return int(shape[1]) if shape else 16

    # ---- tools
    def lora_file_fits(self, stems):
        """A file of joint-block names whose attn2 modules (SD3.5 medium only) and q/k-norm-free layout fit this
        variant: attn2 names only for SD3.5 medium, no block index past this variant's last (SD3.5 large has 38,
        the mediums 24)."""
        names = [self.kohya_stem(s) for s in stems]
        blocks = [int(m[1]) for n in names if (m := re.match(r"lora_unet_joint_blocks_(\d+)_", n))]
        if not blocks:
            return False
        has_attn2 = any("_x_block_attn2_" in n for n in names)
        depth = 38 if self.model_type == "5-large" else 24
        return max(blocks) < depth and (has_attn2 == (self.model_type == "5-medium") or not has_attn2)

    def lora_apps(self, stems, plain: bool) -> dict[str, str]:
        """ComfyUI and Forge read sd-scripts' SD3 names (ComfyUI maps ``lora_unet_`` + its native MMDiT path, and
        lora_te1/2/3); AUTOMATIC1111 has no SD3; diffusers' SD3 loader reads PEFT / diffusers names only, not
        sd-scripts' (sd-scripts #2103)."""
        return {"ComfyUI": "yes", "Forge": "yes", "AUTOMATIC1111": f"no: it has no {self.title}",
                "diffusers": "no: its SD3 loader does not read sd-scripts' names (lora_unet_joint_blocks_...)"}

    # ---- lora-studio bench --model sd3-medium / sd3.5-medium / sd3.5-large
    def bench_configs(self):
        from .sd3_net import CONFIGS, TINY_CONFIGS

        return CONFIGS[self.model_type], TINY_CONFIGS[self.model_type]

    def build_denoiser(self, config):
        from .sd3_net import MMDiT

        return MMDiT(config)

    def bench_condition(self, denoiser, batch_size, device, dtype):
        return bench_condition(denoiser, batch_size, device, dtype)


class SD35Medium(SD3Family):
    """SD3.5 medium (MMDiT-X): q/k norms and an image-only attn2 in the first 13 x blocks, a 384-patch position table
    (the position options are its own)."""

    name = "sd3.5-medium"
    title = "SD3.5 medium"
    model_type = base_model_version = "5-medium"
    # as SD3 medium (24 blocks of 1536), plus attn2 in 13 x streams (~0.3 of a joint block's activations each):
    # (24 + 13 x 0.3) x 49.5 x 1536 / 4; FLOPs measured as SD3 medium's (forward 11.2 TFLOP: the 13 image-only
    # attentions over 4096 tokens)
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.53e6, step_flops=2.47e13,
                                 native_pixels=1024 * 1024, te_cache_bytes_per_caption=(333 * 4096 + 2048) * 4)


class SD35Large(SD3Family):
    """SD3.5 large: 38 joint blocks of 2432 (8.1 B), q/k norms."""

    name = "sd3.5-large"
    title = "SD3.5 large"
    model_type = base_model_version = "5-large"
    # 38 x 49.5 x 2432 / 4 bytes a latent pixel; FLOPs measured as SD3 medium's (forward 31.1 TFLOP at 1024 px)
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=1.14e6, step_flops=6.85e13,
                                 native_pixels=1024 * 1024, te_cache_bytes_per_caption=(333 * 4096 + 2048) * 4)


class SD3Recipe:
    """sd-scripts' SD3 timestep recipe: the weighting scheme's density (``flow`` holds the scheme, logit_mean,
    logit_std, mode_scale and the timestep range) and training_shift."""

    def __init__(self, flow, shift: float):
        self.flow, self.shift = flow, float(shift)


def sample_timesteps(recipe: SD3Recipe, batch_size: int, generator=None):
    """Whole-number timesteps as sd3_train_utils.get_noisy_model_input_and_timesteps: u from the weighting scheme's
    density (``flow_matching.density_draws``: logit_normal, mode, else uniform), u <- u s / (1 + (s - 1) u) with
    s = training_shift, t = floor(u (t_max - t_min) + t_min) with min_timestep / max_timestep (0 and 1000 unset).
    float32 (B,) on the CPU."""
    import torch

    from .flow_matching import density_draws, discrete_shift

    u = discrete_shift(density_draws(recipe.flow, batch_size, generator), recipe.shift)
    low, high = recipe.flow.timestep_range()
    return (u * (high - low) + low).long().to(torch.float32)


def validation_timesteps(min_timestep: int | None, max_timestep: int | None, count: int = 4) -> list[float]:
    """sd-scripts' validation timesteps: linspace(min, max, count + 2) as whole numbers, both ends dropped (200,
    400, 600, 800 for the full range); SD3's sampler gives exactly these when min = max = t."""
    low = 0 if min_timestep is None else int(min_timestep)
    high = NUM_TRAIN_TIMESTEPS if max_timestep is None else int(max_timestep)
    return [float(int(low + (high - low) * i / (count + 1))) for i in range(1, count + 1)]


def sampling_sigmas(steps: int, shift: float = SAMPLE_SHIFT) -> list[float]:
    """sd-scripts' SD3 sampling schedule (get_all_sigmas over ModelSamplingDiscreteFlow(shift)): ``steps`` timesteps
    from 1000 down to 1000 x shift(1/1000) in equal steps, each as its shifted sigma, then 0."""
    import torch

    from .flow_matching import discrete_shift

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lowest = float(discrete_shift(torch.tensor(1.0 / NUM_TRAIN_TIMESTEPS), shift)) * NUM_TRAIN_TIMESTEPS
    timesteps = torch.linspace(NUM_TRAIN_TIMESTEPS, lowest, steps)
    return discrete_shift(timesteps / NUM_TRAIN_TIMESTEPS, shift).tolist() + [0.0]


class SD3Objective(Objective):
    """sd-scripts' SD3 objective: noise eps ~ N(0, 1), whole timesteps from ``sample_timesteps``, x_t = (1 - sigma) x0
    + sigma eps with sigma = t / 1000, the MMDiT given t; its output preconditioned to x_t - sigma * out and compared
    with x0; per-image weights of the scheme (sigma_sqrt: sigma^-2, cosmap). Per-encoder dropout (clip_l / clip_g /
    t5 dropout rates) zeroes a caption's CLIP-L, CLIP-G or T5 part of the conditioning (CLIP parts also in the pooled
    vector), as sd-scripts does whether or not the outputs are cached."""

    def __init__(self, recipe: SD3Recipe, dropout_rates: tuple[float, float, float], clip_widths: list[int]):
        self.recipe, self.dropout_rates, self.clip_widths = recipe, dropout_rates, clip_widths
        self.validation_points = validation_timesteps(recipe.flow.min_timestep, recipe.flow.max_timestep)
        self._weighting = None

    def sample_noise(self, latents, generator=None):
        import torch

        return torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)

    def sample_timesteps(self, latents):
        return sample_timesteps(self.recipe, latents.shape[0]).to(latents.device)

    def fixed_timesteps(self, point, batch_size, device):
        import torch

        return torch.full((batch_size,), float(point), dtype=torch.float32, device=device)

    def drop_encoders(self, cond: dict) -> dict:
        """sd-scripts' per-encoder dropout: per caption, CLIP-L's columns [0, L) of the first 77 context rows and of
        the pooled vector, CLIP-G's [L, L + G), T5's rows after the 77 are zeroed with their rates."""
        import torch

        if not any(self.dropout_rates):
            return cond
        context, pooled = cond["context"].clone(), cond["pooled"].clone()
        width_l, width_g = (self.clip_widths + [0, 0])[:2]
        spans = ((0, width_l), (width_l, width_l + width_g))
        for i in range(context.shape[0]):
            for rate, (start, end) in zip(self.dropout_rates[:2], spans):
                if rate and float(torch.rand(1)) < rate:
                    context[i, :77, start:end] = 0
                    pooled[i, start:end] = 0
            if self.dropout_rates[2] and float(torch.rand(1)) < self.dropout_rates[2]:
                context[i, 77:] = 0
        return {**cond, "context": context, "pooled": pooled}

    def flow(self, components, noisy, timesteps, cond):
        """The MMDiT's output for ``noisy`` latents at ``timesteps`` (0..1000), (B, C, H, W)."""
        import torch

        from .fp8 import compute_dtype

        model = components.denoiser
        dtype = compute_dtype(model)
        device = noisy.device
        return model(noisy.to(dtype), timesteps.to(device, torch.float32), y=cond["pooled"].to(device, dtype),
                     context=cond["context"].to(device, dtype))

    def prediction_and_target(self, components, latents, noise, timesteps, cond):
        from .flow_matching import loss_weighting

        sigmas = (timesteps.float() / NUM_TRAIN_TIMESTEPS).to(latents.device)
        s = sigmas.reshape(-1, 1, 1, 1).to(latents.dtype)
        noisy = s * noise + (1.0 - s) * latents
        out = self.flow(components, noisy, timesteps, self.drop_encoders(cond))
        pred = out.to(noisy.dtype) * (-s) + noisy
        scheme = self.recipe.flow.weighting_scheme
        # sigma 0 (t = 0, one draw in a thousand) gives pred = target exactly; its sigma_sqrt weight is kept finite
        self._weighting = loss_weighting(scheme, sigmas.clamp(min=1.0 / NUM_TRAIN_TIMESTEPS)) \
            if scheme in ("sigma_sqrt", "cosmap") else None
        return pred, latents

    def loss_weights(self, timesteps, options):
        """The weighting scheme's per-image weights (sigma_sqrt, cosmap; None for the others, whose weight is 1);
        the SD-era SNR options do not apply (Check settings names them)."""
        return self._weighting

    def huber_thresholds(self, timesteps, c, kind, scale):
        """sd-scripts' constant and exponential schedules (c ^ (t / 1000)); "snr" needs a DDPM schedule."""
        import math

        import torch

        if kind == "constant":
            return torch.full((len(timesteps),), c * scale, device=timesteps.device)
        if kind == "exponential":
            return torch.exp(math.log(c) * timesteps.float() / NUM_TRAIN_TIMESTEPS) * scale
        from ..errors import UserError

        raise UserError("huber_schedule = \"snr\" needs a DDPM noise schedule; with SD3 use constant or exponential")


class SD3AdapterPlan:
    """sd-scripts' networks.lora_sd3 arguments read for one model: each module type's rank (context_attn_dim ...
    x_mod_dim; None: network_dim, 0: not trained), the joint blocks that train (train_block_indices), the
    embedders' and final layer's ranks (emb_dims), split_qkv and verbose."""

    def __init__(self, type_dims: dict[str, int], blocks: list[bool] | None, emb_dims: list[int] | None,
                 split_qkv: bool, verbose: bool):
        self.type_dims, self.blocks, self.emb_dims = type_dims, blocks, emb_dims
        self.split_qkv, self.verbose = split_qkv, verbose

    @classmethod
    def of(cls, args: dict, model) -> SD3AdapterPlan:
        from ..errors import UserError
        from .flux import block_selection

        def whole(name):
            try:
                return int(args[name])
            except (TypeError, ValueError):
                raise UserError(f"network_args: {name} must be a whole number, got {args[name]!r}") from None
        type_dims = {name: whole(name) for name, _ in TYPE_DIMS if name in args}
        blocks = block_selection(args.get("train_block_indices"), len(model.joint_blocks), "train_block_indices")
        emb_dims = None
        if args.get("emb_dims") not in (None, ""):
            raw = args["emb_dims"]
            values = raw if isinstance(raw, (list, tuple)) else str(raw).strip().strip("[]").split(",")
            try:
                emb_dims = [int(v) for v in values]
            except ValueError:
                emb_dims = []
            if len(emb_dims) != 6:
                raise UserError("network_args: emb_dims needs 6 ranks [context_embedder, t_embedder, x_embedder, "
                                f"y_embedder, final_mod, final_linear], got {raw!r}")
        return cls(type_dims, blocks, emb_dims, _truthy(args.get("split_qkv", False)),
                   _truthy(args.get("verbose", False)))

    def rank(self, path: str) -> int | None:
        """The rank of the joint-block Linear at ``path`` (None: network_dim), 0 when it does not train."""
        rank = None
        for name, words in TYPE_DIMS:
            if name in self.type_dims and all(word in path for word in words):
                rank = self.type_dims[name]
                break
        if rank != 0 and self.blocks is not None and not self.blocks[int(path.split(".")[1])]:
            return 0
        return rank

    def embedder_layers(self) -> list[tuple[str, int]]:
        """(module path, rank) of the layers emb_dims trains (rank 0: none)."""
        if not self.emb_dims:
            return []
        return [(path, rank) for rank, paths in zip(self.emb_dims, EMB_LAYERS) if rank for path in paths]


def bench_condition(denoiser, batch_size: int, device, dtype, t5_tokens: int = 256) -> dict:
    """A random condition of the shapes ``encode_prompt`` returns for ``denoiser`` (``bench --model sd3.5-large``):
    the context (B, 77 + t5_tokens, context width) and the pooled vector (B, pooled width)."""
    import torch

    config = denoiser.config
    return {"context": torch.randn(batch_size, 77 + t5_tokens, config.context_in_dim, device=device, dtype=dtype),
            "pooled": torch.randn(batch_size, config.adm_in_channels, device=device, dtype=dtype)}


def real_config(model_type: str):
    """The real-size MMDiT config of "medium", "5-medium" or "5-large" (``sd3_net.CONFIGS``)."""
    from .sd3_net import CONFIGS

    return CONFIGS[model_type]
