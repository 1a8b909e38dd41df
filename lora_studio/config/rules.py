"""Rules between settings (a single setting's type and range are checked when the config is built)."""

from __future__ import annotations

from ..confinement import Confinement
from ..errors import ConfigError, UserError
from . import Config
from .network_args import check_rank, parse_network_args
from .optimizers import optimizer_problem

_BAD_NAME_CHARS = '/\\:*?"<>|\x00\r\n'


def setting_problems(cfg: Config, confinement: Confinement | None = None) -> dict[str, str]:
    """Problems that stop a run, keyed by the setting to fix (the GUI shows each message next to its field).
    ``confinement``: a confined run may import callables only from the trusted list."""
    problems: dict[str, str] = {}
    for name in ("pretrained_model_name_or_path", "output_dir"):
        if not getattr(cfg, name):
            problems[name] = "required: set it before starting"
    if not cfg.train_data_dir and not cfg.dataset_config:
        problems["train_data_dir"] = "set the Image folder (or a Dataset config file)"
    if cfg.network_train_unet_only and cfg.network_train_text_encoder_only:
        problems["network_train_text_encoder_only"] = ("both 'Train U-Net only' and 'Train Text Encoder only' are set: "
                                                       "nothing to train")
    if not cfg.output_name or any(c in cfg.output_name for c in _BAD_NAME_CHARS) or cfg.output_name.strip() in (".", ".."):
        problems["output_name"] = f"'{cfg.output_name}' must be a plain file name (no / \\ : * ? \" < > |)"
    try:
        rank_problem = check_rank(cfg.network_dim, parse_network_args(cfg.network_args, cfg.network_module))
        if rank_problem:
            problems["network_dim"] = rank_problem
    except ConfigError as exc:
        problems["network_args"] = str(exc).replace("setting 'network_args': ", "")
    if cfg.scale_weight_norms and cfg.network_module == "networks.dylora":
        problems["scale_weight_norms"] = "sd-scripts' DyLoRA (networks.dylora) has no max-norm regularisation"
    for name, mode in (("full_fp16", "fp16"), ("full_bf16", "bf16")):
        if getattr(cfg, name) and cfg.mixed_precision != mode:
            problems[name] = f"needs Mixed precision {mode}, as in sd-scripts"
    for name in ("fp8_base", "fp8_base_unet"):
        if getattr(cfg, name) and cfg.mixed_precision == "no":
            problems[name] = ("stores the frozen weights in float8 and computes them in the mixed precision: it needs "
                              "mixed_precision \"bf16\" or \"fp16\" (mixed_precision is \"no\"), as in sd-scripts")
    optimizer = optimizer_problem(cfg.optimizer_type or "")
    if optimizer:
        problems["optimizer_type"] = optimizer
    for name in ("optimizer_type", "lr_scheduler_type"):
        untrusted = (confinement or Confinement()).callable_problem(getattr(cfg, name) or "", name)
        if untrusted:
            problems[name] = untrusted
    if cfg.log_with in ("tensorboard", "all") and not cfg.logging_dir:
        problems["logging_dir"] = f"log_with = {cfg.log_with} writes TensorBoard logs here: set a Logging folder"
    problems.update(_noise_problems(cfg))
    if cfg.dim_from_weights and not cfg.network_weights:
        problems["dim_from_weights"] = "needs LoRA network weights (the file to read the rank from)"
    return problems


def _noise_problems(cfg: Config) -> dict[str, str]:
    """The noise options' own rules, as sd-scripts checks them."""
    problems = {}
    if cfg.adaptive_noise_scale and not cfg.noise_offset:
        problems["adaptive_noise_scale"] = "needs Noise offset (it is added to it)"
    if cfg.noise_offset_random_strength and not cfg.noise_offset:
        problems["noise_offset_random_strength"] = "needs Noise offset"
    if cfg.ip_noise_gamma_random_strength and not cfg.ip_noise_gamma:
        problems["ip_noise_gamma_random_strength"] = "needs IP noise gamma"
    low, high = cfg.min_timestep or 0, cfg.max_timestep or 1000
    if low > high or low == high == 1000:
        problems["max_timestep"] = (f"must be above Min timestep ({low}), or equal to it below 1000 for one fixed "
                                    f"timestep; timesteps are drawn from [{low}, {high})")
    return problems


def check_settings(cfg: Config, confinement: Confinement | None = None) -> None:
    """Raise one UserError listing every rule ``cfg`` breaks."""
    problems = setting_problems(cfg, confinement)
    if problems:
        raise UserError("; ".join(f"{name}: {message}" for name, message in problems.items()))
