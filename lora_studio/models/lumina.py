"""Lumina-Image 2.0 (NextDiT 2 B, Gemma2-2B, the Flux AE), trained as sd-scripts' lumina_train_network.py trains it.

- Files: the transformer is one file in its native names (optionally under ComfyUI's ``model.diffusion_model.``, as
  the Neta Lumina all-in-one files); Gemma2 (``gemma2``: gemma_2_2b_fp16.safetensors or a folder) and the autoencoder
  (``ae``: the Flux AE) come from their own files, as sd-scripts asks.
- Latents: the Flux AE's ``(z - 0.1159) * 0.3611``, applied once at encoding (sd-scripts: inside its AE's encode);
  the transformer cuts 2x2 patches, so image sides are multiples of 16.
- Conditioning: Gemma2's ``hidden_states[-2]`` of the caption (``"{system_prompt} <Prompt Start> {caption}"`` with a
  system prompt), right-padded to ``gemma2_max_token_length`` (256), and its attention mask.
- Objective: x_t = (1 - sigma) x0 + sigma eps; the model gets t = 1 - sigma (Lumina's time runs from noise, 0, to
  image, 1) and predicts x0 - eps: the target is latents - noise. sigma from ``timestep_sampling`` (shift with
  discrete_flow_shift 6.0 by default; nextdit_shift is what sd-scripts' docs recommend).
- LoRA names: ``lora_unet_`` + the native module path: every Linear of the 26 layers, the 2 noise refiners, the 2
  context refiners (no adaLN) and the final layer, with q, k and v one fused ``attention_qkv`` module: 180 modules at
  real size; Gemma2's attention and MLP as ``lora_te_``.
"""

from __future__ import annotations

import logging
import re

from .dit import DIT_IGNORED, DiTFamily, decode_image
from .family import AdapterTarget, EstimateConstants, PartFile
from .flux import FlowObjective

log = logging.getLogger("lora_studio")

COMFY_PREFIX = "model.diffusion_model."
# sd-scripts' networks.lora_lumina: every Linear of these blocks (JointTransformerBlock, FinalLayer)
BLOCKS = ("layers.", "noise_refiner.", "context_refiner.")
# embedder_dims [x, t, cap] -> the Linears of each
EMBEDDERS = (("x_embedder",), ("t_embedder.mlp.0", "t_embedder.mlp.2"), ("cap_embedder.1",))
# train_blocks -> the module paths it keeps
TRAIN_BLOCKS = {"all": ("layers.", "noise_refiner.", "context_refiner.", "final_layer."),
                "transformer": ("layers.",), "refiners": ("noise_refiner.", "context_refiner."),
                "noise_refiner": ("noise_refiner.",), "context_refiner": ("context_refiner.",)}
# the diffusers Lumina2Transformer2DModel name of each native module (diffusers' single-file conversion)
_DIFFUSERS_TOP = {"x_embedder": "x_embedder", "t_embedder.mlp.0": "time_caption_embed.timestep_embedder.linear_1",
                  "t_embedder.mlp.2": "time_caption_embed.timestep_embedder.linear_2",
                  "cap_embedder.1": "time_caption_embed.caption_embedder.1",
                  "final_layer.adaLN_modulation.1": "norm_out.linear_1", "final_layer.linear": "norm_out.linear_2"}
_DIFFUSERS_BLOCK = {"attention.out": "attn.to_out.0", "feed_forward.w1": "feed_forward.linear_1",
                    "feed_forward.w2": "feed_forward.linear_2", "feed_forward.w3": "feed_forward.linear_3",
                    "adaLN_modulation.1": "norm1.linear"}
GEMMA_PREFIXES = ("text_encoders.gemma2_2b.transformer.model.", "model.")  # how Gemma2 files name their modules


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def lumina_fused_parts(path: str, out_features: int, in_features: int) -> tuple[int, ...]:
    """The output rows of q, k and v in a fused ``attention.qkv`` (q as wide as the input: n_heads x head_dim =
    dim; k and v share the rest: 2304, 768, 768 at real size), () for any other Linear."""
    if ("." + path.replace("_", ".")).endswith(".attention.qkv"):
        kv = (out_features - in_features) // 2
        return (in_features, kv, kv)
    return ()


class LuminaFamily(DiTFamily):
    """Lumina-Image 2.0 and its fine-tunes (Neta Lumina)."""

    name = "lumina2"
    title = "Lumina 2"
    base_model_version = "lumina2"  # lumina_util.MODEL_VERSION_LUMINA_V2
    modelspec_implementation = "https://github.com/Alpha-VLLM/Lumina-Image-2.0"
    lora_module = "networks.lora_lumina"
    diffusers_text_encoders = {"text_encoder": "gemma2"}  # Lumina2Pipeline
    checkpoint_prefixes = (COMFY_PREFIX,)
    separate_files = {"gemma2": "Gemma2 text encoder (gemma_2_2b_fp16.safetensors)",
                      "ae": "autoencoder (ae.safetensors, the Flux AE)"}
    part_files = {"gemma2": PartFile(("text_encoders", "clip"), ("gemma_2_2b_fp16.safetensors",
                                                                 "gemma-2-2b.safetensors"), ("gemma",)),
                  "ae": PartFile(("vae",), ("ae.safetensors", "flux_ae.safetensors"), ("ae",))}
    part_checks = {"gemma2": ("lumina_parts.is_gemma2", "a Gemma2 text encoder (gemma_2_2b_fp16.safetensors)"),
                   "ae": ("flux_parts.is_flux_ae", "a Flux autoencoder (ae.safetensors)")}
    ignored_settings = {**DIT_IGNORED, "vae": "Lumina 2's autoencoder is the ae setting (the Flux AE)"}
    block_pattern = r"(layers|noise_refiner|context_refiner)\.(\d+)\."
    main_blocks = "layers"
    text_encoder_lora_prefixes = {"gemma2": "lora_te_"}
    te_target_patterns = {"gemma2": r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"}
    lora_path_prefixes = ("diffusion_model.", "layers.", "noise_refiner.", "context_refiner.", "final_layer.",
                          "x_embedder.", "t_embedder.", "cap_embedder.")
    default_sampling = "shift"  # sd-scripts' default (its docs recommend nextdit_shift)
    default_shift = 6.0
    # sd-scripts' Lumina samples: 36 steps, CFG 3.5 applied while t < 0.25 (the noisiest quarter), renormalised
    sample_steps = 36
    sample_cfg = 3.5
    cfg_trunc_ratio = 0.25
    renorm_cfg = 1.0
    # Lumina 2 at 1024 px: 4096 image + up to 256 caption tokens through 26 layers (and 2 + 2 refiners) of width
    # 2304. FLOPs: FlopCounterMode on one real-width layer with LoRA (meta device, 4352 tokens): 0.86 TFLOP forward,
    # x 26 layers + the refiners ~ 24 TFLOP; a LoRA step (backward 1.2 x the forward, perf.md's rule) ~ 53 TFLOP.
    # Activations: NOT measured (the meta device's SDPA is the math kernel, which keeps the attention matrix): Flux's
    # measured ~49.5 bytes a token per unit of width for a block with LoRA on every Linear, x 26 x 2304 / 4 latent
    # pixels a token = 0.74 MB a latent pixel, + the refiners ~ 0.8 MB; to calibrate on a GPU. TE cache entry:
    # Gemma2's 256 x 2304 states and the 256 mask, float32.
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.8e6, step_flops=5.3e13,
                                 native_pixels=1024 * 1024, te_cache_bytes_per_caption=(256 * 2304 + 256) * 4)

    # ---- recognising and loading
    def matches_checkpoint(self, keys):
        """NextDiT's caption embedder and a modulated layer's ``adaLN_modulation.1`` (Z-Image's NextDiT names it
        ``adaLN_modulation.0``)."""
        keys = {self.strip_prefix(k) for k in keys}
        return "cap_embedder.1.weight" in keys and ("layers.0.adaLN_modulation.1.weight" in keys
                                                    or "noise_refiner.0.adaLN_modulation.1.weight" in keys)

    def matches_diffusers(self, model_index, unet_config):
        return model_index.get("_class_name") in ("Lumina2Pipeline", "Lumina2Text2ImgPipeline")

    def family_checks(self, cfg):
        from ..errors import UserError

        length = getattr(cfg, "gemma2_max_token_length", None)
        if length is not None and (int(length) < 8 or int(length) % 8):
            raise UserError(f"gemma2_max_token_length = {length}: Gemma's tokenizer pads to a multiple of 8 (as "
                            "sd-scripts asks it), so the length must be one too (256: sd-scripts' default)")
        notes = []
        if getattr(cfg, "model_prediction_type", None) in ("sigma_scaled", "additive"):
            notes.append(("model_prediction_type", f"{cfg.model_prediction_type} turns Lumina's x0 - noise "
                                                   "prediction into something else while the target stays "
                                                   "latents - noise; raw is sd-scripts' default and recommendation"))
        return notes

    def load_single_file(self, sd, source, options=None):
        from . import ldm_build
        from .lumina_net import LuminaTransformer, config_from_state_dict

        config = config_from_state_dict({k: tuple(sd[k].shape) for k in sd})
        prefixed = any(k.startswith(COMFY_PREFIX) for k in sd)
        model = ldm_build.empty(lambda: LuminaTransformer(config))
        ldm_build._fill(model, lambda name, shape: sd.get(COMFY_PREFIX + name if prefixed else name), "UNet", source)
        return self._with_other_parts(model, source, options)

    def load_diffusers(self, folder, model_index, options=None):
        from ..errors import UserError

        raise UserError(f"pretrained_model_name_or_path: {folder} is a diffusers Lumina 2 folder; sd-scripts (and "
                        "LoRA Studio) train Lumina 2 from its single file (lumina_2_model_bf16.safetensors, "
                        "Comfy-Org/Lumina_Image_2.0_Repackaged) with gemma2 and ae set")

    def _with_other_parts(self, denoiser, source: str, options):
        from pathlib import Path

        import torch

        from .family import Components
        from .flux_parts import load_ae
        from .ldm_build import wanted_dtype
        from .lumina_parts import load_gemma2, load_tokenizer

        get = (lambda name: getattr(options, name, None)) if options is not None else (lambda name: None)
        paths = {name: get(name) for name in self.separate_files}
        self._require_files(paths, source)
        gemma2 = load_gemma2(Path(paths["gemma2"]).expanduser(), wanted_dtype("text encoder") or torch.float32)
        ae = load_ae(Path(paths["ae"]).expanduser(), torch.float32)
        tokenizer = load_tokenizer(get("tokenizer_cache_dir"))
        info = {"text_encoder_identity": self._files_identity([paths["gemma2"]])}
        return Components(self, denoiser, ae, [gemma2], [tokenizer], {}, source, info)

    # ---- adapters
    def network_args(self):
        from ..config.network_args import LUMINA_ARGS

        return LUMINA_ARGS

    def adapter_targets(self, components, train_unet, train_text_encoder, spec):
        """sd-scripts' networks.lora_lumina: every Linear of the layers, the refiners and the final layer (fused qkv
        one module), chosen by train_blocks, at the per-type dims (attn_dim, mlp_dim, mod_dim, refiner_dim: the first
        that applies), embedder_dims adding the x / t / caption embedders, split_qkv training q, k and v apart in
        the one module; Gemma2's attention and MLP Linears as lora_te_."""
        from torch import nn

        plan = LuminaAdapterPlan.of(dict(spec.family_args))
        model = components.denoiser
        targets = []
        if train_unet:
            for path, module in model.named_modules():
                if not (isinstance(module, nn.Linear) and path.startswith(BLOCKS + ("final_layer.",))):
                    continue
                if spec.attention_only and ".attention." not in path:
                    continue
                rank = plan.rank(path)
                if rank == 0:
                    continue
                split = model.config.qkv_rows if plan.split_qkv and path.endswith("attention.qkv") else ()
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), module, None, rank=rank,
                                             split=split))
            for path, rank in plan.embedders(model):
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), model.get_submodule(path),
                                             None, rank=rank))
            if plan.verbose:
                for target in targets:
                    log.info("LoRA module %s, rank %s", target.stem, target.rank or "network_dim")
        if train_text_encoder and spec.text_encoder:
            pattern = re.compile(self.te_target_patterns["gemma2"])
            for index, encoder in enumerate(components.text_encoders):
                for path, module in encoder.named_modules():
                    if isinstance(module, nn.Linear) and pattern.search(path) and \
                            (not spec.attention_only or ".self_attn." in path):
                        targets.append(AdapterTarget("lora_te_" + path.replace(".", "_"), module, index))
        return targets

    def denoiser_target(self, path):
        """sd-scripts' default targets: the blocks' Linears and the final layer's."""
        return path.startswith(BLOCKS + ("final_layer.",)) and not path.rsplit(".", 1)[-1].endswith("norm")

    # ---- prompts
    def joint_text_tokens(self, options):
        """Gemma2's caption tokens join the image tokens."""
        return int(options.get("gemma2_max_token_length", 256))

    def prompt_options(self, settings):
        length = getattr(settings, "gemma2_max_token_length", None)
        return {"gemma2_max_token_length": int(length) if length else 256,
                "system_prompt": getattr(settings, "system_prompt", None) or ""}

    def encode_prompt(self, components, captions, device, options, weighted=False):
        """Gemma2's states and mask of ``captions``, the system prompt in front (sd-scripts puts it before every
        training caption and sample prompt, not before negative prompts: ``render`` encodes those without it)."""
        from .lumina_parts import encode_prompts

        (gemma2,), (tokenizer,) = components.text_encoders, components.tokenizers
        return encode_prompts(gemma2, tokenizer, captions, options["gemma2_max_token_length"],
                              options.get("system_prompt") or None, device)

    # ---- objective
    def objective(self, components, cfg):
        return LuminaObjective(self.flow_recipe(cfg))

    # ---- sample images
    def render(self, components, prompt, sampler, options, device, dtype, seed, output_type="pil"):
        """sd-scripts' Lumina sampling (lumina_train_util.denoise): Euler over its scheduler's sigmas (shift 6.0,
        ``sampling_sigmas``); the model's prediction is x0 - noise, so each step moves by -(prediction); classifier-
        free guidance with the negative prompt (no system prompt) only while the model time 1 - sigma is below
        ``cfg_trunc_ratio`` (0.25; ``--ctr``), the guided prediction's norm kept under ``renorm_cfg`` (1.0;
        ``--rcfg``) times the conditional one's. CFG scale ``--l`` (3.5), 36 steps unless ``--s``."""
        import torch

        cond = self.encode_prompt(components, [prompt.prompt], device, options)
        negative = self.encode_prompt(components, [prompt.negative or ""], device, {**options, "system_prompt": ""})
        scale = prompt.cfg_scale if prompt.cfg_scale is not None else self.sample_cfg
        trunc = getattr(prompt, "cfg_trunc_ratio", None)
        trunc = self.cfg_trunc_ratio if trunc is None else float(trunc)
        renorm = getattr(prompt, "renorm_cfg", None)
        renorm = self.renorm_cfg if renorm is None else float(renorm)
        m = self.pixel_multiple
        h, w = prompt.height // m * 2, prompt.width // m * 2  # latent size (8x AE)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = torch.randn((1, components.vae.config.latent_channels, h, w), generator=generator)
        objective = LuminaObjective(self.flow_recipe(None))
        x = latents.to(device, torch.float32)
        sigmas = sampling_sigmas(prompt.steps)
        with torch.no_grad():
            for sigma, following in zip(sigmas[:-1], sigmas[1:]):
                batch = torch.full((1,), sigma, device=device)
                pred = objective.prediction(components, x, batch, cond).float()
                if 1 - sigma < trunc and scale != 1.0:
                    uncond = objective.prediction(components, x, batch, negative).float()
                    pred = guided(pred, uncond, scale, renorm)
                x = x + (following - sigma) * -pred
        return decode_image(components.vae, x, self.vae_scale_and_shift(components.vae), output_type)

    # ---- metadata
    def architecture(self, v_parameterization):
        return "lumina-2/lora"

    def metadata(self, cfg):
        """sd-scripts' LuminaNetworkTrainer.update_metadata keys (it writes neither the system prompt nor the token
        length), with the values this run used."""
        recipe = self.flow_recipe(cfg)
        return {**self.recipe_metadata(cfg), "ss_model_prediction_type": recipe.model_prediction_type}

    # ---- estimate
    def width_of(self, shapes):
        for key, shape in shapes.items():
            if self.strip_prefix(key) == "x_embedder.weight":
                return shape[0]
        return 0

    def latent_channels_of(self, shapes):
        for key, shape in shapes.items():
            if self.strip_prefix(key) == "x_embedder.weight":
                return shape[1] // 4
        return 16

    # ---- lora-studio bench --model lumina2
    def bench_configs(self):
        from .lumina_net import LUMINA_2B
        from .tiny_lumina import tiny_lumina_config

        return LUMINA_2B, tiny_lumina_config()

    def build_denoiser(self, config):
        from .lumina_net import LuminaTransformer

        return LuminaTransformer(config)

    def bench_condition(self, denoiser, batch_size, device, dtype):
        return bench_condition(denoiser, batch_size, device, dtype)

    # ---- tools
    def te_module_path(self, part, key_path):
        for prefix in GEMMA_PREFIXES:
            if key_path.startswith(prefix):
                return key_path[len(prefix):]
        return key_path

    def lora_file_fits(self, stems) -> bool:
        """Lumina's own module names: a layer's or refiner's fused ``attention_qkv``, ``feed_forward_w1..3`` or
        ``adaLN_modulation_1`` (Z-Image's NextDiT files name theirs otherwise), and no CLIP / T5 modules."""
        names = {self.kohya_stem(s) for s in stems}
        own = re.compile(r"lora_unet_(layers|noise_refiner|context_refiner)_\d+_(attention_(qkv|out)|"
                         r"feed_forward_w[123]|adaLN_modulation_1)$")
        return any(own.match(n) for n in names) and not any(n.startswith(("lora_te1_", "lora_te2_", "lora_te3_"))
                                                            for n in names)

    fused_parts = staticmethod(lumina_fused_parts)

    fused_endings = {"_attention_qkv": "qkv"}

    def lora_file_summary(self, modules, metadata):
        """The common report plus the fused qkv modules, how many are stored split and split_qkv
        (``fused_summary``)."""
        return {**super().lora_file_summary(modules, metadata), **self.fused_summary(modules, metadata)}

    def lora_apps(self, stems, plain):
        """ComfyUI reads sd-scripts' names (its Lumina2 model's native paths, Gemma2's lora_te_); diffusers' Lumina 2
        loader reads only ``diffusion_model.`` + native path files with lora_A / lora_B (its converter also expects
        2304 / 768 / 768 qkv rows and no final layer) or diffusers' own names: convert first."""
        names = [self.kohya_stem(s) for s in stems]
        if not plain:
            diffusers = "no: its Lumina 2 loader reads plain LoRA only"
        else:
            diffusers = "convert it first (lora-studio lora convert --to diffusers): its Lumina 2 loader does not " \
                        "read sd-scripts' names"
            if any(n.startswith("lora_te_") for n in names):
                diffusers += "; the Gemma2 (lora_te_) modules are left out (it loads the transformer's only)"
        return {"ComfyUI": "yes", "Forge": f"no: it has no {self.title}", "AUTOMATIC1111": f"no: it has no {self.title}",
                "diffusers": diffusers}

    def diffusers_lora_modules(self, native_path, out_features, in_features):
        """The diffusers Lumina2Transformer2DModel modules (under ``transformer.``) a native Linear's output rows
        are: a fused qkv is attn.to_q, to_k, to_v (q as wide as the input, k and v the rest in halves)."""
        if native_path in _DIFFUSERS_TOP:
            return [(_DIFFUSERS_TOP[native_path], out_features)]
        match = re.fullmatch(r"((?:layers|noise_refiner|context_refiner)\.\d+)\.(.+)", native_path)
        if match is None:
            return []
        prefix, inner = match[1] + ".", match[2]
        if inner == "attention.qkv":
            rows = lumina_fused_parts(inner, out_features, in_features)
            return [(prefix + "attn." + name, n) for name, n in zip(("to_q", "to_k", "to_v"), rows)]
        return [(prefix + _DIFFUSERS_BLOCK[inner], out_features)] if inner in _DIFFUSERS_BLOCK else []

    @staticmethod
    def text_encoder_module_path(stem):
        """(diffusers pipeline part, module path) of a Gemma2 (lora_te_) module: Lumina2Pipeline's text_encoder, a
        Gemma2Model; None for another name."""
        match = re.fullmatch(r"lora_te_layers_(\d+)_(self_attn|mlp)_(\w+)", stem)
        return ("text_encoder", f"layers.{match[1]}.{match[2]}.{match[3]}") if match else None


def sampling_sigmas(steps: int, shift: float = 6.0) -> list[float]:
    """sd-scripts' Lumina sampling sigmas (its FlowMatchEulerDiscreteScheduler(shift=6.0).set_timesteps(steps)):
    ``steps`` sigmas evenly from the training table's largest (1) to its smallest (shift(1/1000)), each shifted
    again (float64, then float32), then 0."""
    import torch

    from .flow_matching import discrete_shift

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    smallest = float(discrete_shift(torch.tensor([1 / 1000], dtype=torch.float32), shift)[0])
    linear = torch.linspace(1.0, smallest, steps, dtype=torch.float64)
    return discrete_shift(linear, shift).float().tolist() + [0.0]


def guided(cond, uncond, scale: float, renorm: float):
    """Classifier-free guidance, uncond + scale (cond - uncond), then with ``renorm`` > 0 each sample's norm capped at
    renorm x the conditional prediction's norm (sd-scripts' renorm_cfg)."""
    import torch

    pred = uncond + scale * (cond - uncond)
    if renorm > 0:
        dims = tuple(range(1, cond.ndim))
        limit = torch.linalg.vector_norm(cond, dim=dims, keepdim=True) * renorm
        norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
        pred = pred * (limit / norm).where(norm >= limit, pred.new_ones(()))
    return pred


class LuminaAdapterPlan:
    """sd-scripts' networks.lora_lumina arguments read for one model: train_blocks, the per-type dims (attn_dim,
    mlp_dim, mod_dim, refiner_dim; None: network_dim, 0: not trained), embedder_dims [x, t, cap], split_qkv and
    verbose.

    mlp_dim: sd-scripts looks for "mlp" in the LoRA name, which Lumina's feed-forward (``feed_forward_w1``) does not
    have, so there it changes nothing but the time embedder's rank; here it sets the feed-forward's rank, as its
    documentation says it does."""

    TYPES = (("attn_dim", ".attention."), ("mlp_dim", ".feed_forward."), ("mod_dim", "adaLN_modulation"),
             ("refiner_dim", "refiner."))

    def __init__(self, type_dims: dict[str, int], train_blocks: str, embedder_dims: list[int] | None,
                 split_qkv: bool, verbose: bool):
        self.type_dims, self.train_blocks, self.embedder_dims = type_dims, train_blocks, embedder_dims
        self.split_qkv, self.verbose = split_qkv, verbose

    @classmethod
    def of(cls, args: dict) -> LuminaAdapterPlan:
        from ..errors import UserError

        def whole(name):
            try:
                return int(args[name])
            except (TypeError, ValueError):
                raise UserError(f"network_args: {name} must be a whole number, got {args[name]!r}") from None
        type_dims = {name: whole(name) for name, _ in cls.TYPES if args.get(name) is not None}
        train_blocks = str(args.get("train_blocks") or "all")
        if train_blocks not in TRAIN_BLOCKS:
            raise UserError(f"network_args: train_blocks must be one of {', '.join(TRAIN_BLOCKS)}, got "
                            f"{train_blocks!r}")
        embedder_dims = None
        raw = args.get("embedder_dims")
        if raw not in (None, ""):
            values = raw if isinstance(raw, (list, tuple)) else str(raw).strip().strip("[]").split(",")
            try:
                embedder_dims = [int(v) for v in values]
            except ValueError:
                embedder_dims = []
            if len(embedder_dims) != 3:
                raise UserError(f"network_args: embedder_dims needs 3 ranks [x_embedder, t_embedder, cap_embedder], "
                                f"got {raw!r}")
        return cls(type_dims, train_blocks, embedder_dims, _truthy(args.get("split_qkv", False)),
                   _truthy(args.get("verbose", False)))

    def rank(self, path: str) -> int | None:
        """The rank of the block Linear at ``path`` (None: network_dim), 0 when it does not train."""
        if not path.startswith(TRAIN_BLOCKS[self.train_blocks]):
            return 0
        for name, part in self.TYPES:
            if name in self.type_dims and part in "." + path:
                return self.type_dims[name]
        return None

    def embedders(self, model) -> list[tuple[str, int]]:
        """(module path, rank) of the embedder Linears embedder_dims trains (rank 0: none)."""
        if not self.embedder_dims:
            return []
        return [(path, rank) for rank, paths in zip(self.embedder_dims, EMBEDDERS) for path in paths if rank]


class LuminaObjective(FlowObjective):
    """Rectified flow as sd-scripts trains Lumina 2: eps ~ N(0, 1), sigma per image from ``recipe``, x_t = (1 - sigma)
    x0 + sigma eps; the model gets t = 1 - sigma and Gemma2's states with their mask; the target is latents - noise
    (x0 - eps, the opposite of Flux's); the prediction type's transform and weighting as sd-scripts applies them."""

    def __init__(self, recipe):
        super().__init__(recipe, None)

    def prediction(self, components, noisy, sigmas, cond):
        """The transformer's output for ``noisy`` latents [B, C, H, W] at ``sigmas`` (given as 1 - sigma)."""
        import torch

        from .fp8 import compute_dtype

        model = components.denoiser
        dtype = compute_dtype(model)
        device = noisy.device
        return model(x=noisy.to(dtype), t=(1 - sigmas).to(device, torch.float32),
                     cap_feats=cond["gemma2"].to(device, dtype), cap_mask=cond["gemma2_mask"].to(device))

    def prediction_and_target(self, components, latents, noise, timesteps, cond):
        from . import flow_matching as fm

        sigmas = timesteps
        noisy = fm.model_input(self.recipe, latents, noise, sigmas)
        pred = self.prediction(components, noisy, sigmas, cond)
        pred, self._weighting = fm.apply_prediction_type(self.recipe.model_prediction_type, pred, noisy, sigmas,
                                                         self.recipe.weighting_scheme)
        return pred, latents - noise


def bench_condition(denoiser, batch_size: int, device, dtype, tokens: int = 256) -> dict:
    """A random condition of the shapes ``encode_prompt`` returns (Gemma2's states at the transformer's caption
    width, ``tokens`` of them, all attended), for ``lora-studio bench``."""
    import torch

    width = denoiser.config.cap_feat_dim
    return {"gemma2": torch.randn(batch_size, tokens, width, device=device, dtype=dtype),
            "gemma2_mask": torch.ones(batch_size, tokens, dtype=torch.int64, device=device)}
