"""Anima (circlestone-labs; a 2 B anime DiT on Cosmos-Predict2's MiniTrainDIT with an LLM adapter), trained as
sd-scripts' anima_train_network.py trains it.

- Files: the DiT is one file (``anima-base-v1.0.safetensors``: keys under ``net.``, ComfyUI's ``model.diffusion_model.``
  or none) with its LLM adapter (``llm_adapter.*``; ``llm_adapter_path`` names another file holding it); Qwen3-0.6B
  (``qwen3``: ``qwen_3_06b_base.safetensors`` or an HF folder) and the Qwen-Image VAE (``vae``:
  ``qwen_image_vae.safetensors``) come from their own files.
- Latents: the VAE's posterior mode normalised per channel, (z - mean) / std, once at encoding (``AnimaVAE``); the DiT
  takes them as (B, 16, 1, H, W) and patchifies 2 x 2, so image sides are multiples of 16.
- Conditioning: Qwen3's last hidden states (padded positions zero) and the caption's T5 ids and masks; the LLM
  adapter inside the DiT turns them into the cross-attention context. Caption dropout works on cached outputs
  (``drop_cached_condition``).
- Objective: x_t = (1 - sigma) x0 + sigma eps, sigma drawn by the shared sampler with Anima's defaults (sigmoid,
  shift 1.0, scale 1.0), the model gets sigma and a zero padding mask, the target is eps - x0, weighted by
  ``weighting_scheme`` (compute_loss_weighting_for_anima).
- LoRA names (networks.lora_anima): ``lora_unet_`` + the module path of the Linears in the blocks, the patch and
  timestep embedders and the final layer, minus ``.*(_modulation|_norm|_embedder|final_layer).*`` (fullmatch):
  blocks_N_{self_attn,cross_attn}_{q,k,v,output}_proj and blocks_N_mlp_layer{1,2}, 280 modules; train_llm_adapter
  adds the adapter blocks' Linears (60); ``lora_te_`` + the Qwen3 path for its attention and MLP (196).
"""

from __future__ import annotations

from pathlib import Path

from .dit import DiTFamily, SigmaObjective
from .family import AdapterTarget, EstimateConstants, PartFile

# the network_args networks.lora_anima reads that are Anima's own (rank_dropout, module_dropout and loraplus_* are
# the common ones)
DEFAULT_EXCLUDE = r".*(_modulation|_norm|_embedder|final_layer).*"
# the modules networks.lora_anima looks inside (ANIMA_TARGET_REPLACE_MODULE: Block, PatchEmbed, TimestepEmbedding,
# FinalLayer; with train_llm_adapter also LLMAdapterTransformerBlock), as our module paths
TARGET_ROOTS = r"(blocks\.\d+|x_embedder|t_embedder\.1|final_layer)\..+"
ADAPTER_ROOTS = r"llm_adapter\.blocks\.\d+\..+"
QWEN3_TARGETS = r"layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"
SAMPLE_SHIFT = 3.0  # sd-scripts' anima sample_images: flow_shift 3.0 unless the prompt says otherwise


def _flag(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _patterns(value, name: str) -> list[str]:
    """sd-scripts reads include_patterns / exclude_patterns with ast.literal_eval: a list of regexes, or one."""
    import ast
    import re

    from ..errors import UserError

    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        found = list(value)
    else:
        try:
            found = ast.literal_eval(str(value))
        except (ValueError, SyntaxError):
            found = str(value)
        found = found if isinstance(found, list) else [found]
    for pattern in found:
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise UserError(f"network_args: {name} has an invalid regular expression {pattern!r} ({exc})") from None
    return [str(p) for p in found]


def _reg_values(value, name: str, kind) -> dict[str, float]:
    """network_reg_dims / network_reg_lrs "regex=value,regex=value" (sd-scripts' parse_kv_pairs), in order."""
    from ..errors import UserError

    found = {}
    for pair in str(value or "").split(","):
        if not pair.strip():
            continue
        key, sep, number = pair.partition("=")
        try:
            found[key.strip()] = kind(number)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"network_args: {name} needs regex={'dim' if kind is int else 'lr'} pairs, got "
                            f"{pair.strip()!r}")
    return found


class AnimaPlan:
    """networks.lora_anima's module choice for one run: the default exclude regex plus exclude_patterns, overridden
    by include_patterns (re.fullmatch on the module path), train_llm_adapter, network_reg_dims' per-regex ranks."""

    def __init__(self, args: dict):
        import re

        self.exclude = [re.compile(p) for p in _patterns(args.get("exclude_patterns"), "exclude_patterns")
                        + [DEFAULT_EXCLUDE]]
        self.include = [re.compile(p) for p in _patterns(args.get("include_patterns"), "include_patterns")]
        self.train_adapter = _flag(args.get("train_llm_adapter", False))
        self.reg_dims = {re.compile(k): v for k, v in
                         _reg_values(args.get("network_reg_dims"), "network_reg_dims", int).items()}
        self.reg_lrs = {re.compile(k): v for k, v in
                        _reg_values(args.get("network_reg_lrs"), "network_reg_lrs", float).items()}

    def chosen(self, path: str) -> bool:
        return not any(p.fullmatch(path) for p in self.exclude) or any(p.fullmatch(path) for p in self.include)

    def rank(self, path: str) -> int | None:
        """network_reg_dims' rank of the first regex matching ``path`` (None: network_dim; 0: not trained)."""
        return next((dim for pattern, dim in self.reg_dims.items() if pattern.fullmatch(path)), None)

    def lr(self, path: str) -> float | None:
        """network_reg_lrs' learning rate of the first regex matching ``path`` (None: its part's)."""
        return next((lr for pattern, lr in self.reg_lrs.items() if pattern.fullmatch(path)), None)


class Anima(DiTFamily):
    name = "anima"
    lora_module = "networks.lora_anima"
    title = "Anima"
    base_model_version = "anima"
    modelspec_implementation = "https://huggingface.co/circlestone-labs/Anima"
    checkpoint_prefixes = ("net.", "model.diffusion_model.")
    separate_files = {"qwen3": "Qwen3-0.6B text encoder (qwen_3_06b_base.safetensors, or its folder)",
                      "vae": "Qwen-Image VAE (qwen_image_vae.safetensors)",
                      "llm_adapter_path": "LLM adapter (llm_adapter.*; empty: the one in the DiT file)"}
    optional_files = ("llm_adapter_path",)
    part_files = {"qwen3": PartFile(("text_encoders", "clip"), ("qwen_3_06b_base.safetensors",), ("qwen3", "qwen_3")),
                  "vae": PartFile(("vae",), ("qwen_image_vae.safetensors",), ("qwen_image", "qwen-image", "wan"))}
    part_checks = {"qwen3": ("anima_parts.is_qwen3", "a Qwen3 text encoder (qwen_3_06b_base.safetensors)"),
                   "vae": ("anima_parts.is_qwen_image_vae", "the Qwen-Image VAE (qwen_image_vae.safetensors)"),
                   "llm_adapter_path": ("anima_parts.is_llm_adapter", "an Anima LLM adapter (llm_adapter.* weights)")}
    text_encoder_lora_prefixes = {"qwen3": "lora_te_"}
    te_target_patterns = {"qwen3": QWEN3_TARGETS}
    lora_path_prefixes = ("diffusion_model.", "blocks.", "llm_adapter.", "x_embedder.", "t_embedder.",
                          "final_layer.")
    ignored_settings = {**DiTFamily.ignored_settings,
                        "model_prediction_type": "sd-scripts' Anima compares the raw output with the velocity",
                        "guidance_scale": "Anima is not guidance-distilled (CFG only when sampling)",
                        "t5xxl_max_token_length": "Anima's lengths are qwen3_max_token_length and t5_max_token_length",
                        "apply_t5_attn_mask": "Anima's LLM adapter always reads the T5 mask"}
    default_sampling = "sigmoid"  # anima_train_utils.add_anima_training_arguments
    default_shift = 1.0
    sample_steps = 30  # sd-scripts' Anima sample defaults: 30 steps, scale 7.5, flow_shift 3.0
    sample_cfg = 7.5
    # Anima at 1024 px: 4096 image tokens (a 128 x 128 latent in 2 x 2 patches) through 28 blocks of width 2048 with a
    # 512-token context, counted on one real-size block on the meta device (bf16, frozen weights, the input needing
    # its gradient as under LoRA): autograd keeps 134,686 bytes a token per block with a flash-style attention (q, k,
    # v, output and its log-sum-exp saved; 65.8 bytes a token per unit of width, Flux's double block 49.5), so x 28
    # / 4 latent pixels a token = 0.94 MB a latent pixel. FLOPs (FlopCounterMode, SDPA counted): forward 0.640,
    # backward 0.773 TFLOP a block (activation gradients only: 1.2 x), x 28 = 39.6 TFLOP a sample (the LLM adapter
    # over 512 tokens adds under 1%). TE cache entry: Qwen3's 512 x 1024 states and three 512-long id / mask rows.
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.94e6, step_flops=3.96e13,
                                 native_pixels=1024 * 1024,
                                 te_cache_bytes_per_caption=(512 * 1024 + 3 * 512) * 4)

    # ---- recognising and loading
    def matches_checkpoint(self, keys):
        from .anima_parts import is_anima_transformer

        return is_anima_transformer(keys)

    def matches_diffusers(self, model_index, unet_config):
        return False  # the Diffusers repackaging is read as the single files sd-scripts trains from

    def family_checks(self, cfg):
        from ..errors import UserError

        if getattr(cfg, "fp8_base", False) or getattr(cfg, "fp8_base_unet", False):
            raise UserError("fp8_base: sd-scripts does not train Anima with fp8 weights (it turns the option off); "
                            "turn it off")
        chunk = getattr(cfg, "vae_chunk_size", None)
        notes = []
        if chunk is not None and chunk % 2:
            notes.append(("vae_chunk_size", f"{chunk} is odd; {chunk + 1} is used, as sd-scripts does"))
        return notes

    def load_single_file(self, sd, source, options=None):
        """The DiT from ``sd`` (its adapter from llm_adapter_path when set), Qwen3, the VAE and the tokenizers from
        their settings."""
        import torch

        from . import anima_net, ldm_build
        from .anima_parts import load_qwen3, load_tokenizers, load_vae
        from .ldm_build import wanted_dtype

        get = (lambda name: getattr(options, name, None)) if options is not None else (lambda name: None)
        paths = {name: get(name) for name in self.separate_files}
        self._require_files({name: paths[name] for name in self.required_files(source)}, source)
        prefixed = {self.strip_prefix(k): k for k in sd}
        adapter_lookup, adapter_config = self._adapter(paths.get("llm_adapter_path"), prefixed, sd)
        entries = getattr(sd, "_entries", None)  # a SafetensorsView: shapes from its header, nothing read
        shapes = {name: tuple(entries[key]["shape"]) if entries is not None else tuple(sd[key].shape)
                  for name, key in prefixed.items()}
        config = anima_net.config_from_shapes(shapes, adapter=adapter_config)
        if config.adapter is None:
            from ..errors import UserError

            raise UserError(f"llm_adapter_path: {source} holds no LLM adapter (llm_adapter.*); set llm_adapter_path "
                            "to the file that has it")

        def lookup(name, shape):
            if name.startswith("llm_adapter.") and adapter_lookup is not None:
                return adapter_lookup(name)
            return sd[prefixed[name]] if name in prefixed else None
        denoiser = ldm_build.empty(lambda: anima_net.AnimaTransformer(config))
        ldm_build._fill(denoiser, lookup, "UNet", source)
        te_dtype = wanted_dtype("text encoder") or torch.float32
        qwen3 = load_qwen3(paths["qwen3"], te_dtype)
        vae = load_vae(paths["vae"], torch.float32, chunk_size=get("vae_chunk_size"),
                       disable_cache=bool(get("vae_disable_cache")))
        tokenizers = list(load_tokenizers(get("tokenizer_cache_dir"), paths["qwen3"], get("t5_tokenizer_path")))
        info = {"text_encoder_identity": self._files_identity([paths["qwen3"]])}
        from .family import Components

        return Components(self, denoiser, vae, [qwen3], tokenizers, {}, source, info)

    @staticmethod
    def _adapter(path, prefixed: dict, sd):
        """(lookup of llm_adapter.* names, its config) from llm_adapter_path (keys with or without ``llm_adapter.``,
        under ``net.`` or not), or (None, None): the DiT file's own adapter."""
        if not path:
            return None, None
        from .anima_net import adapter_config_from_shapes, strip_prefix
        from .loading import SafetensorsView

        view = SafetensorsView(Path(path).expanduser(), "llm_adapter_path")
        names = {}
        for key in view:
            name = strip_prefix(key)
            names[name if name.startswith("llm_adapter.") else "llm_adapter." + name] = key
        shapes = {name: tuple(view._entries[key]["shape"]) for name, key in names.items()}
        config = adapter_config_from_shapes(shapes)
        if config is None:
            from ..errors import UserError

            raise UserError(f"llm_adapter_path: {path} is not an Anima LLM adapter (no llm_adapter.embed.weight)")
        return (lambda name: view[names[name]] if name in names else None), config

    def load_diffusers(self, folder, model_index, options=None):
        from ..errors import UserError

        raise UserError(f"{folder}: LoRA Studio trains Anima from its single files, as sd-scripts: the DiT "
                        "(anima-base-v1.0.safetensors), qwen3 and vae")

    # ---- adapters
    def network_args(self):
        from ..config.network_args import ANIMA_ARGS

        return ANIMA_ARGS

    def adapter_targets(self, components, train_unet, train_text_encoder, spec):
        """networks.lora_anima's modules: the Linears inside the blocks, patch / timestep embedders and final
        layer (and with train_llm_adapter the adapter blocks) whose path the exclude regexes do not fullmatch, or an
        include regex does; network_reg_dims' ranks (0: left out). Qwen3's attention and MLP Linears as lora_te_,
        the same regexes applied."""
        import re

        from torch import nn

        plan = AnimaPlan(dict(spec.family_args))
        roots = TARGET_ROOTS + (f"|{ADAPTER_ROOTS}" if plan.train_adapter else "")
        targets = []
        if train_unet and spec.transformer:
            for path, module in components.denoiser.named_modules():
                if not (isinstance(module, nn.Linear) and re.fullmatch(roots, path) and plan.chosen(path)):
                    continue
                if spec.attention_only and not re.search(r"(self_attn|cross_attn)\.", path):
                    continue
                rank = plan.rank(path)
                if rank == 0:
                    continue
                targets.append(AdapterTarget(self.denoiser_lora_stem(path, components), module, None, rank=rank,
                                             lr=plan.lr(path)))
        if train_text_encoder and spec.text_encoder:
            for index, encoder in enumerate(components.text_encoders):
                for path, module in encoder.named_modules():
                    if not (isinstance(module, nn.Linear) and re.search(QWEN3_TARGETS, path) and plan.chosen(path)):
                        continue
                    if spec.attention_only and ".self_attn." not in path:
                        continue
                    rank = plan.rank(path)
                    if rank != 0:
                        targets.append(AdapterTarget("lora_te_" + path.replace(".", "_"), module, index, rank=rank,
                                                     lr=plan.lr(path)))
        return targets

    def denoiser_target(self, path):
        """sd-scripts' default: a Linear in a block (not its modulations); embedders and final layer excluded."""
        import re

        return re.fullmatch(TARGET_ROOTS, path) is not None and re.fullmatch(DEFAULT_EXCLUDE, path) is None

    def te_module_path(self, part, key_path):
        from .anima_parts import QWEN3_PREFIXES

        for prefix in sorted(QWEN3_PREFIXES, key=len, reverse=True):
            if prefix and key_path.startswith(prefix):
                return key_path[len(prefix):]
        return key_path

    # ---- prompts
    def joint_text_tokens(self, options):
        """None: the blocks read the LLM adapter's context by cross-attention (counted in the estimate's constants)."""
        return 0

    def prompt_options(self, settings):
        from .anima_parts import DEFAULT_QWEN3_LENGTH, DEFAULT_T5_LENGTH

        return {"qwen3_max_token_length": int(getattr(settings, "qwen3_max_token_length", None)
                                              or DEFAULT_QWEN3_LENGTH),
                "t5_max_token_length": int(getattr(settings, "t5_max_token_length", None) or DEFAULT_T5_LENGTH)}

    def encode_prompt(self, components, captions, device, options, weighted=False):
        from .anima_parts import encode_prompts

        (qwen3,), (qwen_tok, t5_tok) = components.text_encoders, components.tokenizers
        return encode_prompts(qwen3, qwen_tok, t5_tok, captions, options["qwen3_max_token_length"],
                              options["t5_max_token_length"], device)

    def drop_cached_condition(self, cond: dict, drop) -> dict:
        """Caption dropout on cached text-encoder outputs (sd-scripts' drop_cached_text_encoder_outputs): the rows
        ``drop`` (B,) bool marks get zero Qwen3 states and mask, T5 ids [1, 0, ...] and T5 mask [1, 0, ...]. The
        cached tensors are not changed."""
        from .anima_parts import drop_condition

        return drop_condition(cond, drop)

    # ---- objective
    def flow_recipe(self, cfg, **overrides):
        return super().flow_recipe(cfg, **{"model_prediction_type": "raw", **overrides})

    def objective(self, components, cfg):
        return AnimaObjective(self.flow_recipe(cfg))

    def vae_scale_and_shift(self, vae):
        """(1, 0): ``AnimaVAE.encode`` already returns the normalised latents (z - mean) / std."""
        return 1.0, 0.0

    # ---- sample images
    def render(self, components, prompt, sampler, options, device, dtype, seed, output_type="pil"):
        """sd-scripts' Anima sampling: Euler from sigma 1 to 0 over linspace(1, 0, steps + 1) shifted by flow_shift
        3.0, CFG with the negative prompt when the scale is above 1 (default 7.5), a zero padding mask."""
        import torch

        from . import flow_matching as fm
        from .dit import decode_image

        cond = self.encode_prompt(components, [prompt.prompt], device, options)
        cfg_scale = prompt.cfg_scale if prompt.cfg_scale is not None else self.sample_cfg
        uncond = self.encode_prompt(components, [prompt.negative], device, options) if cfg_scale > 1.0 else None
        h, w = prompt.height // 8, prompt.width // 8
        generator = torch.Generator(device="cpu").manual_seed(seed)
        latents = torch.randn((1, 16, h, w), generator=generator).to(device, torch.float32)
        objective = AnimaObjective(self.flow_recipe(None))

        def velocity(condition):
            def call(x, sigmas):
                return objective.velocity(components, x, sigmas, condition).float()
            return call
        shift = getattr(prompt, "flow_shift", None) or SAMPLE_SHIFT
        sigmas = fm.discrete_shift(torch.linspace(1, 0, prompt.steps + 1), shift).tolist()
        latents = fm.euler_sample(velocity(cond), latents, sigmas, cfg_scale,
                                  velocity(uncond) if uncond is not None else None)
        return decode_image(components.vae, latents, (1.0, 0.0), output_type)

    # ---- metadata
    def architecture(self, v_parameterization):
        return "anima-preview/lora"  # sd-scripts: get_sai_model_spec_dataclass(..., anima="preview")

    def metadata(self, cfg):
        """sd-scripts' AnimaNetworkTrainer.update_metadata keys."""
        return self.recipe_metadata(cfg)

    # ---- tools
    def lora_file_fits(self, stems):
        """Anima's block names (self_attn / cross_attn with output_proj, mlp layer1 / layer2), not another DiT's."""
        import re

        names = [self.kohya_stem(s) for s in stems]
        return any(re.match(r"lora_unet_(blocks_\d+_(self_attn|cross_attn|mlp)_|llm_adapter_)", n) for n in names)

    def lora_apps(self, stems, plain: bool) -> dict[str, str]:
        """ComfyUI (2026) reads lora_unet_ (its generic diffusion_model. mapping) and lora_te_ (its "kohya anima"
        Qwen3 branch); an older ComfyUI needs sd-scripts' networks/convert_anima_lora_to_comfy.py. diffusers'
        AnimaLoraLoaderMixin converts only files in ComfyUI's diffusion_model. names."""
        names = [self.kohya_stem(s) for s in stems]
        if not plain:
            diffusers = "no: its Anima loader reads plain LoRA only"
        elif all(s.startswith("diffusion_model.") for s in stems):
            diffusers = "yes"
        else:
            diffusers = ("convert it first (sd-scripts' networks/convert_anima_lora_to_comfy.py writes the "
                         "diffusion_model. names diffusers converts)")
        te = any(n.startswith("lora_te_") for n in names)
        return {"ComfyUI": "yes (a ComfyUI before its 2026 Anima LoRA support: convert with sd-scripts' "
                           "convert_anima_lora_to_comfy.py)" + (", Qwen3 modules included" if te else ""),
                "Forge": "no: it has no Anima", "AUTOMATIC1111": "no: it has no Anima", "diffusers": diffusers}

    def width_of(self, shapes):
        for key, shape in shapes.items():
            if self.strip_prefix(key) == "x_embedder.proj.1.weight":
                return shape[0]
        return 0

    # ---- lora-studio bench --model anima
    def bench_configs(self):
        from .anima_net import ANIMA, TINY_ANIMA

        return ANIMA, TINY_ANIMA

    def build_denoiser(self, config):
        from .anima_net import AnimaTransformer

        return AnimaTransformer(config)

    def bench_condition(self, denoiser, batch_size, device, dtype, tokens: int = 512):
        """Qwen3's states and the T5 ids of ``tokens`` tokens each (sd-scripts' default lengths), all attended."""
        import torch

        config = denoiser.config
        width = config.adapter.source_dim if config.adapter else config.crossattn_emb_channels
        vocab = config.adapter.vocab_size if config.adapter else 32128
        g = torch.Generator().manual_seed(2)
        ones = torch.ones(batch_size, tokens, dtype=torch.int64, device=device)
        return {"qwen3": torch.randn(batch_size, tokens, width, generator=g).to(device, dtype), "qwen3_mask": ones,
                "t5_ids": torch.randint(0, vocab, (batch_size, tokens), generator=g).to(device), "t5_mask": ones}


class AnimaObjective(SigmaObjective):
    """Rectified flow as sd-scripts trains Anima: eps ~ N(0, 1), sigma per image from the recipe, x_t = (1 - sigma)
    x0 + sigma eps given to the DiT as (B, 16, 1, H, W) with sigma and a zero padding mask, target eps - x0, the
    weighting scheme's weights (sigma_sqrt, cosmap; 1 for the others)."""

    @staticmethod
    def velocity(components, noisy, sigmas, cond):
        """The DiT's output for ``noisy`` latents (B, C, H, W) at ``sigmas`` (B,), as (B, C, H, W)."""
        import torch

        from .fp8 import compute_dtype

        model = components.denoiser
        dtype = compute_dtype(model)
        b, _, h, w = noisy.shape
        device = noisy.device
        out = model(noisy.unsqueeze(2).to(dtype), sigmas.to(device, torch.float32), cond["qwen3"].to(device, dtype),
                    padding_mask=torch.zeros(b, 1, h, w, dtype=dtype, device=device),
                    t5_ids=cond["t5_ids"].to(device), t5_mask=cond["t5_mask"].to(device),
                    qwen3_mask=cond["qwen3_mask"].to(device))
        return out.squeeze(2)

    def prediction_and_target(self, components, latents, noise, timesteps, cond):
        from . import flow_matching as fm

        noisy = fm.model_input(self.recipe, latents, noise, timesteps)
        pred = self.velocity(components, noisy, timesteps, cond)
        self._weighting = fm.loss_weighting(self.recipe.weighting_scheme, timesteps)
        return pred, fm.velocity_target(latents, noise)
