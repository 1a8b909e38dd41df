"""What the flow-matching transformer families (Flux.1 and Chroma, SD3 / SD3.5, Anima, Lumina 2) share.

Each of them is trained by sd-scripts from a transformer file in its native layout (one of ``checkpoint_prefixes``
before the names, or none) with its other parts in files of their own (``separate_files``): so a LoRA module's name
is ``lora_unet_`` + the native module path with "." as "_", which is also what ComfyUI derives from the model it
loaded; the text encoders' modules are ``lora_te*_`` + their transformers path. The LoRA tools read these families'
checkpoints tensor by tensor from the file headers (``lora_weight_keys``), so a 16 GB transformer is never held whole.

``DiTFamily`` holds those shared rules; a family module (flux.py, sd3.py, anima.py, lumina.py) says what its own
files, names and recipe are. Torch-free at import, as every family module.
"""

from __future__ import annotations

import re
from pathlib import Path

from .family import ModelFamily, Objective

SD_ERA = "a DDPM-noise option; flow matching has no SNR schedule (sd-scripts ignores it for these models too)"
# What the Stable Diffusion settings mean to a flow-matching transformer: nothing (named when set, never silently)
DIT_IGNORED = {**{name: SD_ERA for name in (
    "min_snr_gamma", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "debiased_estimation_loss",
    "noise_offset", "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
    "zero_terminal_snr", "v_parameterization")},
    "clip_skip": "these models read their text encoders' fixed layers (sd-scripts ignores clip_skip too)",
    "max_token_length": "their caption length is the family's own token-length setting",
    "v2": "a Stable Diffusion 2 switch",
    "weighted_captions": "sd-scripts' training of these models reads no emphasis; write the caption as it should be "
                         "read"}


class DiTFamily(ModelFamily):
    """A flow-matching transformer family; subclasses fill in the class attributes and their own loading, adapters,
    prompts, objective and sampling."""

    pixel_multiple = 16  # an 8x autoencoder and 2x2 patches
    denoiser_title = "transformer"
    snr_schedule = False  # rectified flow: no DDPM schedule
    ignored_settings = DIT_IGNORED
    base_model_version = ""  # ss_base_model_version, as sd-scripts writes it
    modelspec_implementation = ""
    lora_module = "networks.lora"  # sd-scripts' LoRA network module for the family (ss_network_module of extract)
    # the prefixes a transformer's keys may carry in a checkpoint (ComfyUI's full checkpoints, Anima's net.)
    checkpoint_prefixes: tuple[str, ...] = ("model.diffusion_model.",)
    # setting -> ("module.function" under lora_studio.models: a torch-free test of a header's tensor names, what the
    # file should be): the separate part files
    part_checks: dict[str, tuple[str, str]] = {}
    # separate parts that may be left empty (SD3's T5; a part the checkpoint holds itself is the family's call)
    optional_files: tuple[str, ...] = ()
    # separate text-encoder setting -> the LoRA prefix of its modules, and the regex of the module paths LoRA trains
    text_encoder_lora_prefixes: dict[str, str] = {}
    te_target_patterns: dict[str, str] = {}
    # the diffusers pipeline's text-encoder components -> their separate-file setting (lora convert)
    diffusers_text_encoders: dict[str, str] = {}
    # module paths a LoRA file may name as they are (ComfyUI reads the bare path and ``diffusion_model.`` + path)
    lora_path_prefixes: tuple[str, ...] = ("diffusion_model.",)
    # a transformer block's path: group 1 the block list, group 2 its index (block swap, inspect, the estimate)
    block_pattern = r"(blocks)\.(\d+)\."
    # the recipe's defaults for the Flux sampler settings (flow_recipe)
    default_sampling = "shift"
    default_shift = 3.1582
    sample_cfg = 1.0
    sample_steps = 20

    # ---- recognising files
    def strip_prefix(self, key: str) -> str:
        for prefix in self.checkpoint_prefixes:
            if key.startswith(prefix):
                return key[len(prefix):]
        return key

    def check_flags(self, v2, source):
        from ..errors import UserError

        if v2:
            raise UserError(f"{source} is a {self.title} model but the config sets v2 = true; remove v2")

    def is_part_file(self, setting, tensors):
        """The right tensor names (``part_checks``), float8 only as e4m3fn and no "scaled" fp8 file (the loaders
        refuse the others)."""
        keys = list(tensors)
        if setting not in self.part_checks or not self.part_test(setting)(keys):
            return False
        if any(str(v.get("dtype", "")).startswith("F8") and v.get("dtype") != "F8_E4M3" for v in tensors.values()):
            return False
        return not any(k.endswith("scaled_fp8") or k.endswith(".scale_weight") for k in keys)

    def check_settings(self, cfg) -> list[tuple[str, str]]:
        """The settings' checks every transformer family shares (block swap with the options it excludes, the part
        files present and of the right kind), then the family's own (``family_checks``): a UserError names the
        setting; the warnings come back as (setting, message)."""
        from ..errors import UserError

        source = cfg.pretrained_model_name_or_path
        if cfg.blocks_to_swap and cfg.cpu_offload_checkpointing:
            raise UserError("blocks_to_swap and cpu_offload_checkpointing cannot be used together (as in sd-scripts); "
                            "turn one off")
        if cfg.blocks_to_swap and cfg.torch_compile and cfg.dynamo_mode in ("reduce-overhead", "max-autotune"):
            raise UserError(f"dynamo_mode {cfg.dynamo_mode} replays CUDA graphs at fixed memory addresses, and "
                            "blocks_to_swap moves blocks in and out of the GPU every step: turn one off (or use "
                            "dynamo_mode default / max-autotune-no-cudagraphs)")
        if not Path(str(source)).expanduser().is_dir():
            self._require_files({name: getattr(cfg, name, None) for name in self.required_files(source)}, source)
        for name in self.separate_files:
            if getattr(cfg, name, None):
                self.check_part_file(name, Path(getattr(cfg, name)).expanduser())
        self._check_blocks_to_swap(int(cfg.blocks_to_swap or 0), Path(str(source)).expanduser())
        return self.family_checks(cfg)

    def _check_blocks_to_swap(self, count: int, source: Path) -> None:
        """blocks_to_swap within what the transformer in ``source`` can swap (``swap_limit``, from its header)."""
        from ..errors import UserError
        from ..io_utils import read_safetensors_header

        if not count or not source.is_file():
            return
        try:
            shapes = {k: v["shape"] for k, v in read_safetensors_header(source, "model").tensors.items()}
        except Exception:
            return  # the model check names an unreadable file
        limit = self.swap_limit(self.parameter_counts(shapes)["blocks"])
        if limit is not None and count > limit:
            raise UserError(f"blocks_to_swap {count} is too many for this {self.title} transformer: at most {limit} "
                            "(sd-scripts keeps 2 blocks of each kind on the device)")

    def swap_limit(self, blocks: dict) -> int | None:
        """The most blocks_to_swap can be for a transformer of these blocks (``parameter_counts``' "blocks"): all
        its blocks but 2, as sd-scripts; None when the header shows no blocks."""
        count = blocks["double"][0]
        return max(count - 2, 0) if count else None

    def family_checks(self, cfg) -> list[tuple[str, str]]:
        """The family's own requirements (raise UserError naming the setting) and warnings."""
        return []

    def parts_to_find(self, source) -> list[str]:
        """The separate parts a run of ``source`` reads from files of their own (all of them; a family whose
        checkpoints may hold their parts asks the file: SD3)."""
        return list(self.separate_files)

    def required_files(self, source) -> list[str]:
        """The separate files a run of ``source`` must name: ``parts_to_find`` but ``optional_files``."""
        return [name for name in self.parts_to_find(source) if name not in self.optional_files]

    def _require_files(self, paths: dict, source: str) -> None:
        from ..errors import UserError

        missing = [name for name, path in paths.items() if not path]
        if missing:
            raise UserError(f"{missing[0]}: {source} is a {self.title} {self.denoiser_title}; it trains with its other "
                            "parts in their own files: set "
                            + ", ".join(f"{n} (the {self.separate_files[n]})" for n in missing))
        for name, path in paths.items():
            if path and not Path(path).expanduser().exists():
                raise UserError(f"{name}: not found: {path}")

    def check_part_file(self, setting: str, path: Path) -> None:
        """The file a separate-part setting names is that part, from its header only (torch-free): a swapped file
        is named before the run starts. A folder (an HF text-encoder folder) is the loader's to check."""
        from ..errors import UserError
        from ..io_utils import SafetensorsFormatError, read_safetensors_header

        if path.is_dir() or setting not in self.part_checks:
            return
        if not path.is_file():
            raise UserError(f"{setting}: not found: {path}")
        try:
            header = read_safetensors_header(path, setting)
        except SafetensorsFormatError as exc:
            raise UserError(f"{exc}; {setting} needs a .safetensors file") from None
        what = self.part_checks[setting][1]
        if not self.part_test(setting)(list(header.tensors)):
            raise UserError(f"{setting}: {path.name} is not {what}; is it the right file for this setting?")

    def part_test(self, setting: str):
        """The function that tells a ``setting``'s file from its tensor names."""
        import importlib

        module, _, function = self.part_checks[setting][0].rpartition(".")
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)

    @staticmethod
    def _files_identity(paths) -> str:
        from ..file_hashes import cached_sha256

        return "|".join(cached_sha256(Path(p).expanduser()) for p in paths if Path(p).expanduser().is_file())

    # ---- adapters
    def denoiser_lora_stem(self, module_path, components):
        return "lora_unet_" + module_path.replace(".", "_")

    def lora_names(self, components):
        """``lora_unet_`` + every native module path (sd-scripts, ComfyUI), the bare and ``diffusion_model.`` paths
        (ComfyUI accepts both), and the text encoders' sd-scripts names."""
        from torch import nn

        from .family import TargetSpec

        table = {}
        for path, module in components.denoiser.named_modules():
            if path and isinstance(module, nn.Linear):
                for name in ("lora_unet_" + path.replace(".", "_"), path, "diffusion_model." + path):
                    table.setdefault(name, module)
        for target in self.adapter_targets(components, False, True, TargetSpec(t5=True)):
            table[target.stem] = target.module
        return table

    def lora_block_index(self, stem):
        """No U-Net block numbering: the families choose blocks with their own network_args (sd-scripts)."""
        return -1

    # ---- placing and memory
    def place_denoiser(self, components, cfg, device, dtype):
        """The transformer in the training dtype on the device, but for blocks_to_swap of its blocks (the
        denoiser's ``swap_plan``: sd-scripts' choice per family), which stay on the CPU and come in as they run once
        ``finish_placing`` turns block swap on."""
        model = components.denoiser
        count = int(getattr(cfg, "blocks_to_swap", None) or 0)
        model.to(dtype)
        if not count:
            model.to(device)
            return
        swapped = {id(p) for blocks, n in model.swap_plan(count) for block in list(blocks)[len(blocks) - n:]
                   for p in block.parameters()}
        for module in model.modules():  # everything but the swapped blocks' weights on the device
            for name, param in list(module.named_parameters(recurse=False)):
                if id(param) not in swapped:
                    param.data = param.data.to(device)
            for name, buffer in list(module.named_buffers(recurse=False)):
                module._buffers[name] = buffer.to(device)

    def finish_placing(self, components, cfg, device):
        """Block swap from here (after fp8_base stored the weights: the swapped blocks keep theirs in float8)."""
        from .block_swap import swap_by_plan

        count = int(getattr(cfg, "blocks_to_swap", None) or 0)
        if count:
            components.denoiser.block_swap = swap_by_plan(components.denoiser.swap_plan(count), device)

    def enable_gradient_checkpointing(self, components, cfg) -> None:
        components.denoiser.enable_gradient_checkpointing(
            cpu_offload=bool(getattr(cfg, "cpu_offload_checkpointing", False)))

    # ---- objective
    def flow_recipe(self, cfg, **overrides):
        """sd-scripts' flow-matching recipe settings, empty ones at this family's defaults."""
        from .flow_matching import FlowRecipe

        values = dict(
            timestep_sampling=getattr(cfg, "timestep_sampling", None) or self.default_sampling,
            sigmoid_scale=float(getattr(cfg, "sigmoid_scale", None) or 1.0),
            discrete_flow_shift=float(getattr(cfg, "discrete_flow_shift", None) or self.default_shift),
            weighting_scheme=getattr(cfg, "weighting_scheme", None) or "uniform",
            logit_mean=float(getattr(cfg, "logit_mean", 0.0) or 0.0),
            logit_std=float(getattr(cfg, "logit_std", 1.0) or 1.0),
            mode_scale=float(getattr(cfg, "mode_scale", 1.29) or 1.29),
            model_prediction_type=getattr(cfg, "model_prediction_type", None) or "raw",
            min_timestep=getattr(cfg, "min_timestep", None), max_timestep=getattr(cfg, "max_timestep", None),
            ip_noise_gamma=getattr(cfg, "ip_noise_gamma", None),
            ip_noise_gamma_random_strength=bool(getattr(cfg, "ip_noise_gamma_random_strength", False)))
        values.update(overrides)
        return FlowRecipe(**values)

    def recipe_metadata(self, cfg) -> dict:
        """sd-scripts' recipe keys of the flow families' update_metadata, with the values this run used."""
        recipe = self.flow_recipe(cfg)
        return {"ss_weighting_scheme": recipe.weighting_scheme, "ss_logit_mean": recipe.logit_mean,
                "ss_logit_std": recipe.logit_std, "ss_mode_scale": recipe.mode_scale,
                "ss_timestep_sampling": recipe.timestep_sampling, "ss_sigmoid_scale": recipe.sigmoid_scale,
                "ss_discrete_flow_shift": recipe.discrete_flow_shift}

    # ---- latents and sample images
    def vae_scale_and_shift(self, vae):
        return float(vae.config.scaling_factor), float(vae.config.shift_factor)

    def vae_needs_float32(self, precision, no_half_vae):
        return precision == "no" or no_half_vae

    def samplers(self):
        return ("euler",)

    # ---- metadata
    def modelspec_prediction_type(self, v_parameterization):
        """None: these are flow models. (sd-scripts stamps "epsilon" on SD3, Anima and Lumina files, which is not
        what they predict; the README says so.)"""
        return None

    # ---- tools (lora inspect / convert / extract / merge into a checkpoint), from file headers
    def kohya_stem(self, stem: str) -> str:
        """sd-scripts' name of a module that a file names by its native path (bare or after ``diffusion_model.``)."""
        if stem.startswith("lora_"):
            return stem
        return "lora_unet_" + stem.removeprefix("diffusion_model.").replace(".", "_")

    def module_path(self, key: str) -> str:
        """The native module path of a transformer weight key (the checkpoint prefix and ``.weight`` taken off)."""
        return self.strip_prefix(key).removesuffix(".weight")

    def denoiser_target(self, path: str) -> bool:
        """Whether sd-scripts' LoRA module for this family adapts the transformer Linear at ``path`` by default."""
        return re.match(self.block_pattern, path) is not None

    def lora_weight_keys(self, part: str, keys, targets_only: bool = False) -> dict[str, str]:
        """LoRA stem -> the weight key it changes in a file of ``part`` ("transformer" or a separate text encoder's
        setting) from that file's keys. Every name a file may use, or with ``targets_only`` one sd-scripts name per
        layer LoRA trains (what ``extract`` writes)."""
        table = {}
        for key in keys:
            if not key.endswith(".weight"):
                continue
            path = key.removesuffix(".weight")
            if part == "transformer":
                path = self.strip_prefix(path)
                if (targets_only and not self.denoiser_target(path)) or "norm" in path.rsplit(".", 1)[-1]:
                    continue
                names = ["lora_unet_" + path.replace(".", "_")] + ([] if targets_only else
                                                                   [path, "diffusion_model." + path])
            elif part in self.text_encoder_lora_prefixes:
                path = self.te_module_path(part, path)
                if path is None or (targets_only and not re.search(self.te_target_patterns[part], path)):
                    continue
                names = [self.text_encoder_lora_prefixes[part] + path.replace(".", "_")]
            else:
                raise ValueError(f"unknown part {part!r}")
            for name in names:
                table.setdefault(name, key)
        return table

    def te_module_path(self, part: str, key_path: str) -> str | None:
        """The module path sd-scripts names a text encoder's layer by, from the path of its key in the part's file
        (the same by default)."""
        return key_path

    def lora_module_type(self, stem: str) -> str:
        """A module's type across blocks: "blocks self_attn_q_proj", "te (Qwen3)", "input x_embedder"."""
        name = self.kohya_stem(stem)
        pattern = self.block_pattern.replace(r"\.", "_")
        match = re.match("lora_unet_" + pattern + "(.+)", name)
        if match:
            return f"{match[1]} {match[3]}"
        for part, prefix in self.text_encoder_lora_prefixes.items():
            if name.startswith(prefix):
                return f"{prefix.removeprefix('lora_').rstrip('_')} ({part})"
        return "input " + name.removeprefix("lora_unet_")

    def lora_file_summary(self, modules: dict, metadata: dict) -> dict:
        """What ``lora inspect`` shows of the family's file besides the common report: per module type its count,
        ranks and alphas, and the block indices it changes."""
        types: dict[str, dict] = {}
        blocks: dict[str, set] = {}
        pattern = "lora_unet_" + self.block_pattern.replace(r"\.", "_")
        for stem, m in modules.items():
            entry = types.setdefault(self.lora_module_type(stem), {"modules": 0, "rank": set(), "alpha": set()})
            entry["modules"] += 1
            if m.rank is not None:
                entry["rank"].add(m.rank)
            if m.alpha is not None:
                entry["alpha"].add(round(m.alpha, 6))
            match = re.match(pattern, self.kohya_stem(stem))
            if match:
                blocks.setdefault(match[1], set()).add(int(match[2]))
        return {"module_types": {t: {"modules": e["modules"], "rank": sorted(e["rank"]), "alpha": sorted(e["alpha"])}
                                 for t, e in sorted(types.items())},
                "blocks": {kind: sorted(found) for kind, found in sorted(blocks.items())}}

    # a fused projection's name ending -> its kind in ``fused_summary`` (Flux: qkv and linear1; Lumina 2: qkv)
    fused_endings: dict[str, str] = {}

    def fused_summary(self, modules: dict, metadata: dict) -> dict:
        """The fused projections a file adapts, per kind, and how many are stored split (a block-diagonal up:
        split_qkv trained q, k, v apart), and split_qkv as the file's network_args say (sd-scripts writes them to
        ss_network_args)."""
        import json

        fused = {**{kind: 0 for kind in self.fused_endings.values()}, "stored_split": 0}
        for stem, m in modules.items():
            name = self.kohya_stem(stem)
            kind = next((k for end, k in self.fused_endings.items() if name.endswith(end)), None)
            if kind is None or not name.startswith("lora_unet_"):
                continue
            fused[kind] += 1
            if m.kind == "lora" and "lora_mid.weight" not in m.tensors:
                up, down = m.tensors["lora_up.weight"].flatten(1), m.tensors["lora_down.weight"]
                fused["stored_split"] += self.split_ranks(up, self.fused_parts(name, up.shape[0], down.shape[1])) \
                    is not None
        try:
            args = json.loads(metadata.get("ss_network_args") or "{}")
        except json.JSONDecodeError:
            args = {}
        split = args.get("split_qkv") if isinstance(args, dict) else None
        return {"fused": fused,
                "split_qkv": None if split is None else str(split).strip().lower() in ("true", "1", "yes")}

    @staticmethod
    def fused_parts(path: str, out_features: int, in_features: int) -> tuple[int, ...]:
        """The output rows of each projection a fused Linear holds, () for any other (the family's)."""
        return ()

    @staticmethod
    def split_ranks(up, parts: tuple[int, ...]) -> tuple[int, ...] | None:
        """The rank of each part when a fused module's up [rows, rank] is block-diagonal over its ``parts`` (how
        split_qkv stores q, k, v [, mlp] trained apart), else None."""
        import torch

        rank = up.shape[1]
        if not parts or rank % len(parts):
            return None
        each, start = rank // len(parts), 0
        inside = torch.zeros(up.shape, dtype=torch.bool)
        for i, rows in enumerate(parts):
            inside[start:start + rows, i * each:(i + 1) * each] = True
            start += rows
        return (each,) * len(parts) if not bool(up.flatten(1)[~inside].any()) else None

    def lora_file_fits(self, stems) -> bool:
        """Whether a LoRA file's module names can be this family's (its own block names; subclasses narrow it)."""
        pattern = "lora_unet_" + self.block_pattern.replace(r"\.", "_")
        return any(re.match(pattern, self.kohya_stem(s)) for s in stems)

    # ---- estimate
    def parameter_counts(self, shapes):
        """Counts from a header, torch-free (the estimate): the transformer's weights (any checkpoint prefix; a
        checkpoint's own text encoders and VAE under ``text_encoders.`` / ``first_stage_model.`` / ``vae.`` count as
        theirs), lora_linear = sum of (in + out) over the Linears LoRA adapts, the blocks' count and size (all one
        kind: "double") and the width, and the latent channels (``latent_channels_of``)."""
        import math

        counts = {"unet": 0, "text_encoders": 0, "vae": 0, "lora_linear": 0, "lora_te": 0}
        sizes: dict[int, int] = {}
        for key, shape in shapes.items():
            size = math.prod(shape)
            if key.startswith(("text_encoders.", "conditioner.", "cond_stage_model.")):
                counts["text_encoders"] += size
                continue
            if key.startswith(("first_stage_model.", "vae.")):
                counts["vae"] += size
                continue
            counts["unet"] += size
            name = self.strip_prefix(key)
            block = re.match(self.block_pattern, name)
            if block and block.group(1) == self.main_blocks:
                index = int(block.group(2))
                sizes[index] = sizes.get(index, 0) + size
            # every Linear LoRA adapts, in the blocks or not (Lumina 2's final layer)
            if name.endswith(".weight") and len(shape) == 2 and self.denoiser_target(name.removesuffix(".weight")):
                counts["lora_linear"] += shape[0] + shape[1]
        width = self.width_of(shapes)
        counts["blocks"] = {"double": [len(sizes), max(sizes.values(), default=0)], "single": [0, 0],
                            "hidden": width}
        counts["latent_channels"] = self.latent_channels_of(shapes)
        return counts

    main_blocks = "blocks"  # the block list block swap and checkpointing count (the block_pattern's group 1)

    def joint_text_tokens(self, options: dict) -> int:
        """The text tokens the blocks attend beside the image tokens (the estimate's sequence length), from the
        family's ``prompt_options``: T5's length (Flux.1)."""
        return int(options.get("t5xxl_max_token_length", 512))

    def width_of(self, shapes) -> int:
        """The transformer's width, from a header."""
        return 0

    def latent_channels_of(self, shapes) -> int:
        return 16

    # ---- lora-studio bench --model: the denoiser at real size and a tiny one of the same topology
    def bench_configs(self) -> tuple:
        """(the real denoiser's config, a tiny config of the same topology)."""
        raise NotImplementedError

    def build_denoiser(self, config):
        """The denoiser of ``config`` (called on the meta device by the bench)."""
        raise NotImplementedError

    def bench_condition(self, denoiser, batch_size: int, device, dtype) -> dict:
        """A random condition of the shapes ``encode_prompt`` gives for ``denoiser``."""
        raise NotImplementedError


class SigmaObjective(Objective):
    """Rectified flow as sd-scripts trains the sigma-sampled families (Flux.1, Chroma, Anima, Lumina 2): noise
    eps ~ N(0, 1) (the SD noise options do not apply), sigma per image from ``recipe``, validation at fixed sigmas,
    the weighting ``prediction_and_target`` leaves in ``_weighting``, Huber thresholds over sigma. A subclass says
    what the model is given and what it is compared with."""

    def __init__(self, recipe):
        from .flow_matching import validation_sigmas

        self.recipe = recipe
        self.validation_points = [float(s) for s in validation_sigmas(4, recipe.min_timestep, recipe.max_timestep)]

    def sample_noise(self, latents, generator=None):
        import torch

        return torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)

    def sample_timesteps(self, latents):
        from .flow_matching import sample_sigmas

        return sample_sigmas(self.recipe, latents.shape[0], latents.shape[2], latents.shape[3], latents.device)

    def fixed_timesteps(self, point, batch_size, device):
        import torch

        return torch.full((batch_size,), float(point), dtype=torch.float32, device=device)

    def loss_weights(self, timesteps, options):
        """The weighting the last ``prediction_and_target`` found (sd-scripts' per family); the SD-era SNR options
        do not apply (Check settings names them)."""
        return getattr(self, "_weighting", None)

    def huber_thresholds(self, timesteps, c, kind, scale):
        """sd-scripts' constant and exponential schedules over sigma (its timestep / 1000); "snr" needs a DDPM
        schedule (sd-scripts raises; Check settings refuses it)."""
        import math

        import torch

        if kind == "constant":
            return torch.full((len(timesteps),), c * scale, device=timesteps.device)
        if kind == "exponential":
            return torch.exp(math.log(c) * timesteps.float()) * scale
        from ..errors import UserError

        raise UserError("huber_schedule = \"snr\" needs a DDPM noise schedule, which flow matching has not; use "
                        "constant or exponential")


def decode_image(vae, latents, scale_and_shift, output_type: str = "pil"):
    """Latents back to an image: undo the family's normalisation, decode, map [-1, 1] to [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    scale, shift = scale_and_shift
    with torch.no_grad():
        decoded = vae.decode((latents / scale + shift).to(next(vae.parameters()).dtype)).sample
    if decoded.dim() == 5:  # a video autoencoder's (B, C, T, H, W): the one frame
        decoded = decoded[:, :, 0]
    array = ((decoded[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
    if output_type == "np":
        return array
    return Image.fromarray((array * 255).round().astype(np.uint8))
