"""Flux.1 (dev, schnell) and Chroma: rectified-flow transformers in Black Forest Labs' layout, trained as sd-scripts'
flux_train_network.py trains them.

- Files: the transformer is one file (BFL layout, optionally with ComfyUI's ``model.diffusion_model.`` prefix) or a
  diffusers folder's ``transformer/``; the autoencoder (``ae``), CLIP-L (``clip_l``, not for Chroma) and T5-XXL
  (``t5xxl``) come from their own files. dev and schnell are told apart by ``guidance_in`` in the weights, Chroma by
  its ``distilled_guidance_layer``.
- Latents: the 16-channel AE's ``(z - 0.1159) * 0.3611``, applied once at encoding; packed 2x2 into 64-channel tokens
  for the transformer, so image sides are multiples of 16.
- Conditioning: CLIP-L's pooled output (768) and T5's last hidden states (512 tokens for dev and Chroma, 256 for
  schnell), with T5's attention mask when ``apply_t5_attn_mask`` (always for Chroma).
- Objective: x_t = (1 - sigma) x0 + sigma eps, the model gets sigma (and the guidance vector for dev), the target is
  eps - x0 (``flow_matching``).
- LoRA names: ``lora_unet_`` + the BFL module path (fused qkv and single-block linear1 are one module each: 304
  modules for dev and schnell, 228 for Chroma), ``lora_te1_`` for CLIP-L, ``lora_te3_`` for T5 (``train_t5xxl``).
"""

from __future__ import annotations

from pathlib import Path

from .dit import DIT_IGNORED, DiTFamily, SigmaObjective, decode_image
from .family import AdapterTarget, Components, EstimateConstants, PartFile

BFL_PREFIX = "model.diffusion_model."
CLIP_REPO, T5_REPO = "openai/clip-vit-large-patch14", "google/t5-v1_1-xxl"
# sd-scripts' Flux LoRA targets every Linear of these blocks (networks/lora_flux.py)
TARGET_BLOCKS = ("double_blocks.", "single_blocks.")
# in_dims of sd-scripts' network_args: [img, time, vector, guidance, txt] -> the layers of each
IN_LAYERS = (("img_in",), ("time_in.in_layer", "time_in.out_layer"), ("vector_in.in_layer", "vector_in.out_layer"),
             ("guidance_in.in_layer", "guidance_in.out_layer"), ("txt_in",))
# sd-scripts' per-type dims (network_args): module name suffix -> the argument
TYPE_DIMS = {"img_attn.qkv": "img_attn_dim", "img_attn.proj": "img_attn_dim", "img_mlp.": "img_mlp_dim",
             "img_mod.": "img_mod_dim", "txt_attn.qkv": "txt_attn_dim", "txt_attn.proj": "txt_attn_dim",
             "txt_mlp.": "txt_mlp_dim", "txt_mod.": "txt_mod_dim", "linear1": "single_dim", "linear2": "single_dim",
             "modulation.": "single_mod_dim"}


def strip_prefix(keys) -> list[str]:
    return [k.removeprefix(BFL_PREFIX) for k in keys]


class FluxFamily(DiTFamily):
    """Flux.1 dev; ``FluxSchnell`` and ``Chroma`` change what differs."""

    name = "flux-dev"
    title = "Flux.1 dev"
    base_model_version = "flux1"
    model_description = "dev"  # modelspec.architecture "flux-1-dev/lora"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    checkpoint_prefixes = (BFL_PREFIX,)
    lora_module = "networks.lora_flux"
    separate_files = {"ae": "autoencoder (ae.safetensors)", "clip_l": "CLIP-L text encoder (clip_l.safetensors)",
                      "t5xxl": "T5-XXL text encoder (t5xxl_fp16.safetensors)"}
    part_files = {"ae": PartFile(("vae",), ("ae.safetensors", "flux_ae.safetensors"), ("ae",)),
                  "clip_l": PartFile(("clip", "text_encoders"), ("clip_l.safetensors",), ("clip_l", "clip-l", "clipl")),
                  "t5xxl": PartFile(("text_encoders", "clip"), ("t5xxl_fp16.safetensors",
                                                                "t5xxl_fp8_e4m3fn.safetensors"), ("t5",))}
    part_checks = {"ae": ("flux_parts.is_flux_ae", "a Flux autoencoder (ae.safetensors)"),
                   "clip_l": ("flux_parts.is_clip_l", "a CLIP-L text encoder (clip_l.safetensors)"),
                   "t5xxl": ("flux_parts.is_t5", "a T5-XXL encoder (t5xxl_fp16.safetensors)")}
    ignored_settings = {**DIT_IGNORED, "vae": "Flux's autoencoder is the ae setting"}
    block_pattern = r"(double_blocks|single_blocks)\.(\d+)\."
    # the separate text-encoder files, the LoRA prefix of their modules (sd-scripts' networks.lora_flux) and the
    # layers LoRA trains in them: CLIP-L's attention and MLP, T5's attention and gated MLP
    text_encoder_lora_prefixes = {"clip_l": "lora_te1_", "t5xxl": "lora_te3_"}
    te_target_patterns = {"clip_l": r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$",
                          "t5xxl": r"encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.[qkvo]|"
                                   r"DenseReluDense\.(wi_0|wi_1|wi|wo))$"}
    diffusers_text_encoders = {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"}  # FluxPipeline
    lora_path_prefixes = ("diffusion_model.", "double_blocks.", "single_blocks.", "img_in.", "txt_in.", "time_in.",
                          "vector_in.", "guidance_in.", "final_layer.", "distilled_guidance_layer.")
    uses_clip = True
    guidance_embed = True
    # Flux.1 at 1024 px: 4096 image + 512 text tokens through 19 double and 38 single blocks of width 3072 (Chroma:
    # the same blocks without their modulation Linears, so the same per-token figures). Activations: autograd keeps
    # ~49.5 bytes a token per unit of width in a double block and ~46.5 in a single one (bf16, SDPA, LoRA on every
    # block Linear; counted with saved_tensors_hooks on full-width blocks), so (19 x 49.5 + 38 x 46.5) x 3072 =
    # 8.3 MB a token = 2.08 MB a latent pixel (a token packs 2 x 2); gradient checkpointing's share follows from the
    # blocks (training/estimate.py). FLOPs (FlopCounterMode, real-size blocks on the meta device): forward 74.8,
    # LoRA step 164.8 TFLOP a sample: the backward is 1.2 x the forward (activation gradients only, attention's
    # twice: perf.md's rule for LoRA), not the 6 x params x tokens of training every weight. TE cache entry: T5's
    # 512 x 4096 states, the 768 pooled vector and the 512 mask, float32.
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=2.08e6, step_flops=1.65e14,
                                 native_pixels=1024 * 1024, te_cache_bytes_per_caption=(512 * 4096 + 768 + 512) * 4)

    # ---- recognising and loading
    def matches_checkpoint(self, keys):
        keys = set(strip_prefix(keys))
        return (any(k.startswith("double_blocks.") for k in keys) and "guidance_in.in_layer.weight" in keys
                and not any(k.startswith("distilled_guidance_layer.") for k in keys))

    def matches_diffusers(self, model_index, unet_config):
        return model_index.get("_class_name") == "FluxPipeline" and bool(unet_config.get("guidance_embeds", True))

    def swap_limit(self, blocks):
        """sd-scripts' split: N // 2 double and 2 x (N - N // 2) single blocks, each kind keeping 2 on the device."""
        doubles, singles = blocks["double"][0], blocks["single"][0]
        if not doubles:
            return None
        fits = [n for n in range(doubles + singles) if n // 2 <= doubles - 2 and (n - n // 2) * 2 <= singles - 2]
        return max(fits, default=0)

    def check_model_type(self, model_type: str | None, source: str) -> None:
        """sd-scripts' model_type (flux / chroma) against what the weights are."""
        from ..errors import UserError

        wanted = "chroma" if isinstance(self, Chroma) else "flux"
        if model_type and model_type != wanted:
            raise UserError(f"model_type = {model_type!r}, but {source} is a {self.title} model; set model_type = "
                            f"{wanted!r} or leave it empty (LoRA Studio tells them apart from the weights)")

    def family_checks(self, cfg) -> list[tuple[str, str]]:
        """model_type against the weights, Chroma's required mask and guidance, and the recommended values it will
        use, as (setting, message) warnings."""
        from ..errors import UserError

        self.check_model_type(cfg.model_type, cfg.pretrained_model_name_or_path)
        notes = []
        if isinstance(self, Chroma):
            if cfg.apply_t5_attn_mask is False:
                raise UserError("apply_t5_attn_mask: Chroma trains with T5's attention mask (sd-scripts requires it); "
                                "set it to true or leave it empty")
            if cfg.guidance_scale not in (None, 0.0):
                notes.append(("guidance_scale", f"{cfg.guidance_scale:g} with Chroma, which is not guidance-"
                                                "distilled: sd-scripts requires 0"))
        elif self.guidance_embed and cfg.guidance_scale is not None and cfg.guidance_scale != 1.0:
            notes.append(("guidance_scale", f"{cfg.guidance_scale:g}: Flux dev is guidance-distilled; sd-scripts' "
                                            "documentation says to train LoRA with 1.0"))
        if cfg.model_prediction_type == "sigma_scaled":
            notes.append(("model_prediction_type", "sigma_scaled turns the output into an x0 estimate but the "
                                                   "target stays the velocity; raw is the consistent choice"))
        return notes

    def load_single_file(self, sd, source, options=None):
        from .flux_net import config_from_state_dict

        shapes = {k.removeprefix(BFL_PREFIX): tuple(sd[k].shape) for k in sd}
        config = config_from_state_dict(shapes)
        prefixed = any(k.startswith(BFL_PREFIX) for k in sd)
        denoiser = self._transformer(config, lambda name: sd.get(BFL_PREFIX + name if prefixed else name), source)
        return self._with_other_parts(denoiser, source, options)

    def load_diffusers(self, folder, model_index, options=None):
        """A diffusers folder: ``transformer/`` (its config.json and shards) converted to BFL names, the parts from
        the settings or the folder's own ``vae/``, ``text_encoder/``, ``text_encoder_2/``."""
        from .flux_net import diffusers_to_bfl
        from .loading import SafetensorsView, ShardedView

        files = sorted((Path(folder) / "transformer").glob("*.safetensors"))
        views = [SafetensorsView(f, "pretrained_model_name_or_path") for f in files]
        state = ShardedView(views)
        config = self.diffusers_config(Path(folder) / "transformer" / "config.json")
        bfl = diffusers_to_bfl(state, config)
        denoiser = self._transformer(config, bfl.get, str(folder))
        return self._with_other_parts(denoiser, str(folder), options, folder)

    def diffusers_config(self, path: Path):
        """The FluxConfig of a diffusers FluxTransformer2DModel / ChromaTransformer2DModel config.json."""
        import json

        from .flux_net import FluxConfig

        c = json.loads(path.read_text(encoding="utf-8"))
        chroma = isinstance(self, Chroma)
        extra = dict(approximator_in_dim=c.get("approximator_num_channels", 64),
                     approximator_hidden_size=c.get("approximator_hidden_dim", 5120),
                     approximator_depth=c.get("approximator_layers", 5)) if chroma else {}
        return FluxConfig(in_channels=c.get("in_channels", 64), vec_in_dim=c.get("pooled_projection_dim", 768),
                          context_in_dim=c.get("joint_attention_dim", 4096),
                          hidden_size=c.get("num_attention_heads", 24) * c.get("attention_head_dim", 128),
                          num_heads=c.get("num_attention_heads", 24), depth=c.get("num_layers", 19),
                          depth_single_blocks=c.get("num_single_layers", 38),
                          axes_dim=tuple(c.get("axes_dims_rope", (16, 56, 56))),
                          guidance_embed=bool(c.get("guidance_embeds", False)) and not chroma, chroma=chroma,
                          **extra)

    def _transformer(self, config, lookup, source: str):
        from . import ldm_build
        from .flux_net import FluxTransformer

        model = ldm_build.empty(lambda: FluxTransformer(config))
        ldm_build._fill(model, lambda name, shape: lookup(name), "UNet", source)
        return model

    def _with_other_parts(self, denoiser, source: str, options, folder=None) -> Components:
        """The AE, the text encoders and the tokenizers from their settings (a diffusers folder's own parts when a
        setting is empty)."""
        import torch

        from .flux_parts import load_ae, load_clip_l, load_t5xxl, load_tokenizers
        from .ldm_build import wanted_dtype

        get = (lambda name: getattr(options, name, None)) if options is not None else (lambda name: None)
        paths = {name: get(name) or (self._folder_part(folder, name) if folder else None)
                 for name in self.separate_files}
        self._require_files(paths, source)
        te_dtype = wanted_dtype("text encoder") or torch.float32
        keep_fp8 = bool(get("fp8_base"))
        t5 = load_t5xxl(Path(paths["t5xxl"]).expanduser(), te_dtype, keep_fp8)
        clip = load_clip_l(Path(paths["clip_l"]).expanduser(), te_dtype) if self.uses_clip else None
        ae = load_ae(Path(paths["ae"]).expanduser(), torch.float32)
        clip_tok, t5_tok = load_tokenizers(get("tokenizer_cache_dir"), need_clip=self.uses_clip)
        encoders = [clip, t5] if self.uses_clip else [t5]
        tokenizers = [clip_tok, t5_tok] if self.uses_clip else [t5_tok]
        info = {"text_encoder_identity": self._files_identity([paths[n] for n in ("clip_l", "t5xxl") if paths.get(n)])}
        return Components(self, denoiser, ae, encoders, tokenizers, {}, source, info)

    @staticmethod
    def _folder_part(folder, name: str):
        part = {"ae": "vae", "clip_l": "text_encoder", "t5xxl": "text_encoder_2"}[name]
        files = sorted((Path(folder) / part).glob("*.safetensors"))
        return files[0] if len(files) == 1 else None

    # ---- adapters
    def network_args(self):
        from ..config.network_args import FLUX_ARGS

        return FLUX_ARGS

    def adapter_targets(self, components, train_unet, train_text_encoder, spec):
        """sd-scripts' networks.lora_flux: every Linear of the double and single blocks (fused qkv and linear1 are
        one module each), chosen by train_blocks and the block indices, at the per-type dims; in_dims adds the input
        layers; CLIP-L's attention and MLP as lora_te1_, T5's with train_t5xxl as lora_te3_."""
        from torch import nn

        from .clip import adapted_layers

        plan = FluxAdapterPlan.of(dict(spec.family_args), components.denoiser)
        targets = []
        model = components.denoiser
        if train_unet:
            for path, module in model.named_modules():
                if not (isinstance(module, nn.Linear) and path.startswith(TARGET_BLOCKS)):
                    continue
                if spec.attention_only and not (".img_attn." in path or ".txt_attn." in path
                                                or path.endswith(("linear1", "linear2"))):
                    continue
                rank = plan.rank(path)
                if rank == 0:
                    continue
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), module, None, rank=rank,
                                             split=plan.split(path, module)))
            for path, rank in plan.input_layers(model):
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), model.get_submodule(path),
                                             None, rank=rank))
        if train_text_encoder and spec.text_encoder:
            for index, encoder in enumerate(components.text_encoders):
                if self._is_clip(encoder):
                    targets += [AdapterTarget(stem, module, index)
                                for stem, module in adapted_layers(encoder, "lora_te1", spec.attention_only)]
                elif spec.t5:
                    targets += [AdapterTarget(stem, module, index) for stem, module in t5_layers(encoder)]
        return targets

    @staticmethod
    def _is_clip(encoder) -> bool:
        return type(encoder).__name__.startswith("CLIP")

    # ---- prompts
    def prompt_options(self, settings):
        length = getattr(settings, "t5xxl_max_token_length", None) or self.default_t5_length
        mask = getattr(settings, "apply_t5_attn_mask", None)
        return {"t5xxl_max_token_length": int(length), "apply_t5_attn_mask": bool(mask if mask is not None
                                                                                   else self.t5_mask_default)}

    default_t5_length = 512
    t5_mask_default = False

    def encode_prompt(self, components, captions, device, options, weighted=False):
        from .flux_parts import encode_prompts

        if self.uses_clip:
            clip, t5 = components.text_encoders
            clip_tok, t5_tok = components.tokenizers
        else:
            clip, clip_tok = None, None
            (t5,), (t5_tok,) = components.text_encoders, components.tokenizers
        return encode_prompts(clip, t5, clip_tok, t5_tok, captions, options["t5xxl_max_token_length"],
                              options["apply_t5_attn_mask"], device)

    # ---- objective
    default_sampling = "shift"  # sd-scripts' docs: shift 3.1582, raw prediction, guidance 1.0 for dev LoRA
    default_shift = 3.1582

    def guidance(self, cfg) -> float | None:
        """The guidance vector's value in training (dev: sd-scripts' docs say 1.0), None without guidance_in."""
        value = getattr(cfg, "guidance_scale", None)
        return float(value) if value is not None else 1.0

    def objective(self, components, cfg):
        return FlowObjective(self.flow_recipe(cfg), self.guidance(cfg) if self.guidance_embed else None,
                             chroma=isinstance(self, Chroma),
                             apply_t5_mask=self.prompt_options(cfg)["apply_t5_attn_mask"])

    def render(self, components, prompt, sampler, options, device, dtype, seed, output_type="pil"):
        """sd-scripts' Flux sampling: Euler over the shifted schedule (unshifted for schnell); dev gets the
        embedded guidance (``--g``, default 3.5), Chroma classifier-free guidance with the negative prompt
        (``--l``)."""
        import torch

        from . import flow_matching as fm

        cond = self.encode_prompt(components, [prompt.prompt], device, options)
        cfg_scale = prompt.cfg_scale if prompt.cfg_scale is not None else self.sample_cfg
        uncond = self.encode_prompt(components, [prompt.negative], device, options) if cfg_scale != 1.0 else None
        m = self.pixel_multiple
        h, w = prompt.height // m * 2, prompt.width // m * 2  # latent size (8x AE)
        channels = components.vae.config.latent_channels
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = torch.randn((1, channels, h, w), generator=generator).to(device, torch.float32)
        guidance = prompt.guidance if prompt.guidance is not None else 3.5
        objective = FlowObjective(fm.FlowRecipe(model_prediction_type="raw"),
                                  guidance if self.guidance_embed else None, isinstance(self, Chroma),
                                  options["apply_t5_attn_mask"])

        def velocity(condition):
            def call(x, sigmas):
                return objective.velocity(components, x, sigmas, condition).float()
            return call
        sigmas = fm.sampling_sigmas(prompt.steps, fm.packed_token_count(h, w), shift=self.shifted_sampling)
        latents = fm.euler_sample(velocity(cond), latents, sigmas, cfg_scale,
                                  velocity(uncond) if uncond is not None else None)
        return decode_image(components.vae, latents, self.vae_scale_and_shift(components.vae), output_type)

    shifted_sampling = True
    sample_cfg = 1.0  # guidance-distilled: no negative pass
    sample_steps = 20  # Euler over the shifted schedule converges in about 20 steps

    # ---- metadata
    def architecture(self, v_parameterization):
        return f"flux-1-{self.model_description}/lora"

    def metadata(self, cfg):
        """sd-scripts' FluxNetworkTrainer.update_metadata keys, with the values this run used."""
        recipe = self.flow_recipe(cfg)
        return {"ss_model_type": "chroma" if isinstance(self, Chroma) else "flux",
                "ss_apply_t5_attn_mask": self.prompt_options(cfg)["apply_t5_attn_mask"],
                **self.recipe_metadata(cfg),
                "ss_guidance_scale": self.guidance(cfg) if self.guidance_embed else None,
                "ss_model_prediction_type": recipe.model_prediction_type,
                "ss_t5xxl_max_token_length": self.prompt_options(cfg)["t5xxl_max_token_length"]}

    # ---- estimate
    def parameter_counts(self, shapes):
        """Counts from a header, torch-free (the estimate): the transformer in BFL names (ComfyUI's prefix or none) or
        a diffusers folder's (``transformer.``, ``text_encoder(_2).`` and ``vae.`` as the estimate prefixes a
        folder's parts); lora_linear sums (in + out) over the block Linears LoRA adapts, a fused qkv and linear1 once
        as BFL has them (diffusers' split to_k / to_v / add_k_proj / add_v_proj / proj_mlp share their input); the
        blocks' counts and sizes and the width (block swap, gradient checkpointing) and the latent channels."""
        import math
        import re

        parts = (("transformer.", "unet"), ("text_encoder.", "text_encoders"), ("text_encoder_2.", "text_encoders"),
                 ("vae.", "vae"))
        shared_input = (".attn.to_k.weight", ".attn.to_v.weight", ".attn.add_k_proj.weight",
                        ".attn.add_v_proj.weight", ".proj_mlp.weight")
        block_kinds = {"double_blocks": "double", "transformer_blocks": "double", "single_blocks": "single",
                       "single_transformer_blocks": "single"}
        counts = {"unet": 0, "text_encoders": 0, "vae": 0, "lora_linear": 0, "lora_te": 0}
        blocks: dict[str, dict[int, int]] = {"double": {}, "single": {}}
        width, channels = 0, 16
        for key, shape in shapes.items():
            part, name = next(((p, key[len(prefix):]) for prefix, p in parts if key.startswith(prefix)),
                              ("unet", key.removeprefix(BFL_PREFIX)))
            size = math.prod(shape)
            counts[part] += size
            block = re.match(r"(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)\.",
                             name) if part == "unet" else None
            if block:
                sizes = blocks[block_kinds[block.group(1)]]
                sizes[int(block.group(2))] = sizes.get(int(block.group(2)), 0) + size
                if name.endswith(".weight") and len(shape) == 2:
                    counts["lora_linear"] += shape[0] + (0 if name.endswith(shared_input) else shape[1])
            elif part == "unet" and name in ("img_in.weight", "x_embedder.weight"):
                width, channels = shape[0], shape[1] // 4  # 2 x 2 packed latent channels
        counts["blocks"] = {kind: [len(sizes), max(sizes.values(), default=0)] for kind, sizes in blocks.items()}
        counts["blocks"]["hidden"] = width
        counts["latent_channels"] = channels
        return counts

    # ---- tools (lora inspect / convert / extract / merge into a checkpoint)
    # They work from file headers and read tensor by tensor: a 24 GB transformer is never built or held whole.
    def lora_file_fits(self, stems) -> bool:
        """Whether a LoRA file's module names can be this variant's: the double / single block layout, and no module
        only another variant has (Chroma has no CLIP-L, no per-block modulation and no time / vector / guidance input;
        schnell no guidance input; Flux.1 no distilled guidance layer)."""
        names = {self.kohya_stem(s) for s in stems}
        if not any(n.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for n in names):
            return False
        flux_only = any(n.startswith(("lora_te1_", "lora_unet_time_in_", "lora_unet_vector_in_",
                                      "lora_unet_guidance_in_")) or n.endswith(("_mod_lin", "_modulation_lin"))
                        for n in names)
        chroma_only = any(n.startswith("lora_unet_distilled_guidance_layer_") for n in names)
        if isinstance(self, Chroma):
            return not flux_only
        return not chroma_only and (self.guidance_embed or not any(n.startswith("lora_unet_guidance_in_")
                                                                   for n in names))

    def lora_module_type(self, stem: str) -> str:
        """A module's type across blocks: "double img_attn_qkv", "single linear1", "input time_in_in_layer",
        "te1 (CLIP-L)", "te3 (T5)"."""
        import re

        name = self.kohya_stem(stem)
        match = re.match(r"lora_unet_(double|single)_blocks_\d+_(.+)", name)
        if match:
            return f"{match[1]} {match[2]}"
        if name.startswith("lora_te1_"):
            return "te1 (CLIP-L)"
        if name.startswith("lora_te3_"):
            return "te3 (T5)"
        return "input " + name.removeprefix("lora_unet_")

    @staticmethod
    def fused_parts(path: str, out_features: int, in_features: int) -> tuple[int, ...]:
        """The output rows of each projection a fused BFL Linear holds (double block ``*_attn.qkv``: q, k, v; single
        block ``linear1``: q, k, v and the MLP input, each q / k / v as wide as the input), () for any other."""
        path = "." + path.replace("_", ".")
        if path.endswith(".attn.qkv"):
            return (out_features // 3,) * 3
        if path.endswith(".linear1"):
            return (in_features,) * 3 + (out_features - 3 * in_features,)
        return ()

    fused_endings = {"_attn_qkv": "qkv", "_linear1": "linear1"}

    def lora_file_summary(self, modules: dict, metadata: dict) -> dict:
        """What ``lora inspect`` shows of a Flux / Chroma file besides the common report: per module type its count,
        ranks and alphas; the double and single block indices it changes; the fused modules (double blocks' qkv,
        single blocks' linear1), how many of them are stored split, and split_qkv (``fused_summary``)."""
        summary = super().lora_file_summary(modules, metadata)
        blocks = summary.pop("blocks")
        return {**summary, **self.fused_summary(modules, metadata),
                "double_blocks": blocks.get("double_blocks", []), "single_blocks": blocks.get("single_blocks", [])}

    def lora_apps(self, stems, plain: bool) -> dict[str, str]:
        """Which apps apply a Flux / Chroma LoRA file: ComfyUI and Forge read sd-scripts' and ComfyUI's names of every
        kind; AUTOMATIC1111 has no Flux; diffusers converts sd-scripts' names of plain LoRA / LoCon
        (``_convert_kohya_flux_lora_to_diffusers``) and leaves T5's (lora_te3_) out."""
        names = [self.kohya_stem(s) for s in stems]
        if not plain:
            diffusers = "no: its Flux loader reads plain LoRA only"
        elif any(not s.startswith("lora_") for s in stems):
            diffusers = "convert it first (lora-studio lora convert --to diffusers): it reads sd-scripts' names"
        elif any(n.startswith("lora_te3_") for n in names):
            diffusers = "yes, but without the T5 (lora_te3_) modules"
        else:
            diffusers = "yes"
        return {"ComfyUI": "yes", "Forge": "yes", "AUTOMATIC1111": f"no: it has no {self.title}",
                "diffusers": diffusers}

    def diffusers_lora_modules(self, bfl_path: str, out_features: int, in_features: int) -> list[tuple[str, int]]:
        """The diffusers modules (under ``transformer.``) a BFL Linear's outputs are, with their row counts, in row
        order: a fused qkv is diffusers' to_q, to_k, to_v (add_*_proj for the text stream), a single block's linear1
        those and proj_mlp (the names of diffusers' Flux / Chroma transformers, as ``flux_net.diffusers_to_bfl``
        reads them). [] for a module diffusers' LoRA names cannot hold as rows (the final layer's adaLN, whose halves
        diffusers swaps)."""
        import re

        from .flux_net import (_DOUBLE, _DOUBLE_FUSED, _DOUBLE_MODS, _SINGLE_LINEAR1, FluxConfig,
                               _top_level_names)

        match = re.fullmatch(r"(double|single)_blocks\.(\d+)\.(.+)", bfl_path)
        if match is None:
            top = {**_top_level_names(FluxConfig()), **_top_level_names(FluxConfig(chroma=True, approximator_depth=64))}
            inverse = {bfl: name for name, bfl in top.items()}
            return [(inverse[bfl_path], out_features)] if bfl_path in inverse else []
        kind, index, inner = match.groups()
        if kind == "double":
            prefix = f"transformer_blocks.{index}."
            if inner in _DOUBLE_FUSED:
                rows = self.fused_parts(inner, out_features, in_features)
                return [(prefix + name, n) for name, n in zip(_DOUBLE_FUSED[inner], rows)]
            inverse = {bfl: name for name, bfl in {**_DOUBLE, **_DOUBLE_MODS}.items()}
        else:
            prefix = f"single_transformer_blocks.{index}."
            if inner == "linear1":
                rows = self.fused_parts(inner, out_features, in_features)
                return [(prefix + name, n) for name, n in zip(_SINGLE_LINEAR1, rows)]
            inverse = {"linear2": "proj_out", "modulation.lin": "norm.linear"}
        return [(prefix + inverse[inner], out_features)] if inner in inverse else []

    def text_encoder_module_path(self, stem: str) -> tuple[str, str] | None:
        """(diffusers pipeline part, module path) of a CLIP-L (lora_te1_) or T5 (lora_te3_) LoRA module: the
        pipeline's text encoder of that setting (FluxPipeline: text_encoder, text_encoder_2; ChromaPipeline's T5 is
        its text_encoder) with transformers' names; None for another name."""
        import re

        part = {setting: name for name, setting in self.diffusers_text_encoders.items()}
        match = re.fullmatch(r"lora_te1_text_model_encoder_layers_(\d+)_(self_attn|mlp)_(\w+)", stem)
        if match and "clip_l" in part:
            return part["clip_l"], f"text_model.encoder.layers.{match[1]}.{match[2]}.{match[3]}"
        match = re.fullmatch(r"lora_te3_encoder_block_(\d+)_layer_(\d+)_(SelfAttention|DenseReluDense)_(\w+)", stem)
        if match:
            return part["t5xxl"], f"encoder.block.{match[1]}.layer.{match[2]}.{match[3]}.{match[4]}"
        return None


class FluxSchnell(FluxFamily):
    name = "flux-schnell"
    title = "Flux.1 schnell"
    model_description = "schnell"
    guidance_embed = False
    default_t5_length = 256  # sd-scripts: 256 for schnell
    sample_steps = 4  # timestep-distilled
    shifted_sampling = False

    def matches_checkpoint(self, keys):
        keys = set(strip_prefix(keys))
        return (any(k.startswith("double_blocks.") for k in keys) and "guidance_in.in_layer.weight" not in keys
                and not any(k.startswith("distilled_guidance_layer.") for k in keys))

    def matches_diffusers(self, model_index, unet_config):
        return model_index.get("_class_name") == "FluxPipeline" and not unet_config.get("guidance_embeds", True)


class Chroma(FluxFamily):
    """Flux-schnell derived (8.9 B), T5 only; the blocks' modulations come from the distilled guidance layer, so it
    has no ``*_mod.lin`` to adapt; trained with the T5 mask and guidance 0 (sd-scripts requires both)."""

    name = "chroma"
    title = "Chroma"
    base_model_version = "chroma"
    modelspec_implementation = "https://huggingface.co/lodestones/Chroma"
    separate_files = {"ae": FluxFamily.separate_files["ae"], "t5xxl": FluxFamily.separate_files["t5xxl"]}
    uses_clip = False
    guidance_embed = True  # the approximator takes a guidance value; 0 in training
    t5_mask_default = True
    default_sampling = "sigmoid"  # sd-scripts' Chroma recommendation, with raw prediction
    sample_cfg = 4.0  # sd-scripts' Chroma samples: --g 0 --l 4.0 with a negative prompt
    ignored_settings = {**FluxFamily.ignored_settings, "clip_l": "Chroma has no CLIP-L"}
    diffusers_text_encoders = {"text_encoder": "t5xxl"}  # ChromaPipeline

    def matches_checkpoint(self, keys):
        keys = set(strip_prefix(keys))
        return any(k.startswith("distilled_guidance_layer.") for k in keys)

    def matches_diffusers(self, model_index, unet_config):
        return model_index.get("_class_name") == "ChromaPipeline"

    def guidance(self, cfg):
        value = getattr(cfg, "guidance_scale", None)
        return float(value) if value is not None else 0.0

    def architecture(self, v_parameterization):
        return "chroma/lora"

    def render(self, components, prompt, sampler, options, device, dtype, seed, output_type="pil"):
        import dataclasses

        if prompt.guidance is None:
            prompt = dataclasses.replace(prompt, guidance=0.0)
        return super().render(components, prompt, sampler, options, device, dtype, seed, output_type)


class FlowObjective(SigmaObjective):
    """Rectified flow as sd-scripts trains Flux and Chroma: x_t = (1 - sigma) x0 + sigma eps packed into tokens,
    the model given sigma (and the guidance vector), target eps - x0, the prediction type's transform and
    weighting."""

    def __init__(self, recipe, guidance: float | None, chroma: bool = False, apply_t5_mask: bool = False):
        super().__init__(recipe)
        self.guidance, self.chroma, self.apply_t5_mask = guidance, chroma, apply_t5_mask

    def velocity(self, components, noisy, sigmas, cond):
        """The transformer's output for ``noisy`` latents [B, C, H, W] at ``sigmas``, unpacked to [B, C, H, W]."""
        import torch

        from . import flow_matching as fm
        from .fp8 import compute_dtype

        model = components.denoiser
        dtype = compute_dtype(model)
        b, _, h, w = noisy.shape
        device = noisy.device
        guidance = torch.full((b,), self.guidance, device=device, dtype=torch.float32) \
            if self.guidance is not None else None
        t5 = cond["t5"]
        mask = cond.get("t5_mask") if self.apply_t5_mask else None
        if mask is not None and self.chroma:
            from .flux_net import chroma_text_mask

            mask = chroma_text_mask(mask)  # Chroma also attends the first padding token, as sd-scripts
        out = model(img=fm.pack_latents(noisy).to(dtype), img_ids=fm.image_ids(b, h, w, device),
                    txt=t5.to(device, dtype), txt_ids=fm.text_ids(b, t5.shape[1], device),
                    timesteps=sigmas.to(device, torch.float32),
                    y=cond["pooled"].to(device, dtype) if not self.chroma else None,
                    guidance=guidance, txt_mask=mask.to(device) if mask is not None else None)
        return fm.unpack_latents(out, h, w)

    def prediction_and_target(self, components, latents, noise, timesteps, cond):
        from . import flow_matching as fm

        sigmas = timesteps
        noisy = fm.model_input(self.recipe, latents, noise, sigmas)
        pred = self.velocity(components, noisy, sigmas, cond)
        pred, self._weighting = fm.apply_prediction_type(self.recipe.model_prediction_type, pred, noisy, sigmas,
                                                         self.recipe.weighting_scheme)
        return pred, fm.velocity_target(latents, noise)



def t5_layers(t5) -> list[tuple[str, object]]:
    """(LoRA stem, module) of T5's attention and gated MLP Linears with sd-scripts' ``lora_te3_`` names (the
    module path under the encoder, e.g. ``lora_te3_encoder_block_0_layer_0_SelfAttention_q``)."""
    from torch import nn

    found = []
    for path, module in t5.named_modules():
        if isinstance(module, nn.Linear) and path.startswith("encoder.block.") and (
                ".SelfAttention." in path or ".DenseReluDense." in path):
            found.append(("lora_te3_" + path.replace(".", "_"), module))
    return found


class FluxAdapterPlan:
    """sd-scripts' networks.lora_flux arguments read for one model: which blocks train (train_blocks,
    train_double_block_indices, train_single_block_indices), each module type's rank (img_attn_dim ...
    single_mod_dim; None: network_dim, 0: not trained), the input layers' ranks (in_dims) and split_qkv."""

    def __init__(self, type_dims: dict[str, int], doubles: list[bool] | None, singles: list[bool] | None,
                 train_blocks: str, in_dims: list[int] | None, split_qkv: bool):
        self.type_dims, self.doubles, self.singles = type_dims, doubles, singles
        self.train_blocks, self.in_dims, self.split_qkv = train_blocks, in_dims, split_qkv

    @classmethod
    def of(cls, args: dict, model) -> FluxAdapterPlan:
        from ..errors import UserError

        def whole(name):
            try:
                return int(args[name])
            except (TypeError, ValueError):
                raise UserError(f"network_args: {name} must be a whole number, got {args[name]!r}") from None
        type_dims = {name: whole(name) for name in set(TYPE_DIMS.values()) if name in args}
        train_blocks = str(args.get("train_blocks", "all") or "all")
        if train_blocks not in ("all", "single", "double"):
            raise UserError(f"network_args: train_blocks must be all, single or double, got {train_blocks!r}")
        n_double, n_single = len(getattr(model, "double_blocks", ())), len(getattr(model, "single_blocks", ()))
        doubles = block_selection(args.get("train_double_block_indices"), n_double, "train_double_block_indices")
        singles = block_selection(args.get("train_single_block_indices"), n_single, "train_single_block_indices")
        in_dims = None
        if args.get("in_dims") not in (None, ""):
            raw = args["in_dims"]
            values = raw if isinstance(raw, (list, tuple)) else str(raw).strip().strip("[]").split(",")
            try:
                in_dims = [int(v) for v in values]
            except ValueError:
                in_dims = []
            if len(in_dims) != 5:
                raise UserError(f"network_args: in_dims needs 5 ranks [img, time, vector, guidance, txt], got {raw!r}")
        split = str(args.get("split_qkv", False)).strip().lower() in ("true", "1", "yes")
        return cls(type_dims, doubles, singles, train_blocks, in_dims, split)

    def rank(self, path: str) -> int | None:
        """The rank of the block Linear at ``path`` (None: network_dim), 0 when it does not train."""
        kind, index = path.split(".")[0], int(path.split(".")[1])
        if kind == "double_blocks" and (self.train_blocks == "single" or (self.doubles and not self.doubles[index])):
            return 0
        if kind == "single_blocks" and (self.train_blocks == "double" or (self.singles and not self.singles[index])):
            return 0
        for part, name in TYPE_DIMS.items():
            if part in path and name in self.type_dims:
                return self.type_dims[name]
        return None

    def split(self, path: str, module) -> tuple[int, ...]:
        """split_qkv: q, k, v of a double block's fused qkv, and q, k, v, mlp of a single block's linear1."""
        if not self.split_qkv:
            return ()
        if path.endswith("_attn.qkv"):
            third = module.out_features // 3
            return (third, third, third)
        if path.endswith(".linear1"):
            hidden = module.in_features
            return (hidden, hidden, hidden, module.out_features - 3 * hidden)
        return ()

    def input_layers(self, model) -> list[tuple[str, int]]:
        """(module path, rank) of the input layers in_dims trains (rank 0 or a missing layer: none)."""
        if not self.in_dims:
            return []
        found = []
        for rank, paths in zip(self.in_dims, IN_LAYERS):
            for path in paths:
                if rank and _has(model, path):
                    found.append((path, rank))
        return found


def block_selection(selection, count: int, name: str) -> list[bool] | None:
    """sd-scripts' block selection: "all", "none" or "", or indices and ranges ("0-5,10"); None when not given."""
    from ..errors import UserError

    if selection is None:
        return None
    text = str(selection).strip()
    if text == "all":
        return [True] * count
    if text in ("none", ""):
        return [False] * count
    chosen = [False] * count
    try:
        for part in text.split(","):
            start, _, end = part.strip().partition("-")
            first, last = int(start), int(end or start)
            if not 0 <= first <= last < count:
                raise ValueError
            chosen[first:last + 1] = [True] * (last - first + 1)
    except ValueError:
        raise UserError(f"network_args: {name} = {selection!r}: give indices and ranges from 0 to {count - 1} "
                        "(e.g. 0-5,10), all or none") from None
    return chosen


def _has(model, path: str) -> bool:
    try:
        model.get_submodule(path)
        return True
    except AttributeError:
        return False
