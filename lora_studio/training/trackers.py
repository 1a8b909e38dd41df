"""Where a run's scalars go besides the events file, as sd-scripts' ``log_with``: TensorBoard (``logging_dir``) and
Weights & Biases (``wandb``; its offline mode, ``WANDB_MODE=offline``, works as well)."""

from __future__ import annotations

import logging
import netrc
import os
import time
from typing import Any

from ..config import Config, secret_free
from ..errors import UserError

log = logging.getLogger("lora_studio")


# settings log_config leaves out, as sd-scripts does: where the user's files are
PRIVATE_PATHS = ("pretrained_model_name_or_path", "vae", "train_data_dir", "conditioning_data_dir", "reg_data_dir",
                 "output_dir", "logging_dir", "dataset_config", "in_json", "network_weights", "resume",
                 "log_tracker_config", "sample_prompts")


def logged_config(cfg: Config) -> dict[str, Any]:
    """What log_config sends to the trackers: every setting but the secrets and the private paths (nothing without
    log_config)."""
    if not cfg.log_config:
        return {}
    return {k: v if v is None or isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in secret_free(cfg).items() if k not in PRIVATE_PATHS}


def tracker_dir(cfg: Config) -> str | None:
    """This run's folder under logging_dir: ``<log_prefix><timestamp>`` as sd-scripts names it, or
    ``<output_name>-<timestamp>`` without a prefix."""
    if not cfg.logging_dir:
        return None
    prefix = cfg.log_prefix if cfg.log_prefix is not None else f"{cfg.output_name}-"
    return os.path.join(cfg.logging_dir, prefix + time.strftime("%Y%m%d-%H%M%S"))


def chosen(cfg: Config) -> set[str]:
    """The trackers of ``log_with`` (sd-scripts: TensorBoard by default when logging_dir is set)."""
    if cfg.log_with is None:
        return {"tensorboard"} if cfg.logging_dir else set()
    return {"tensorboard", "wandb"} if cfg.log_with == "all" else {cfg.log_with}


def wandb_key_missing(cfg: Config) -> str | None:
    """Why W&B cannot log online (no key anywhere wandb looks), with the ways out; None when it can (or is not
    used, or is offline by choice)."""
    if "wandb" not in chosen(cfg) or cfg.wandb_api_key or os.environ.get("WANDB_API_KEY"):
        return None
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or \
            os.environ.get("WANDB_OFFLINE", "").lower() in ("1", "true"):
        return None
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return None
    except (OSError, netrc.NetrcParseError):
        pass
    return ("log_with = \"wandb\" but no Weights & Biases API key is set up: give wandb_api_key, run `wandb login` "
            "once, set WANDB_MODE=offline (the run is recorded locally; `wandb sync` uploads it later), or log with "
            "TensorBoard (log_with = \"tensorboard\" and a Logging folder). Until then the run records W&B offline")


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("log_with = \"wandb\" needs the wandb package, which is not installed: run "
                        ".venv/bin/pip install wandb (Windows: .venv\\Scripts\\pip install wandb), or log with "
                        "TensorBoard (log_with = \"tensorboard\" and a Logging folder)") from None
    return wandb


class Trackers:
    def __init__(self, cfg: Config, run_dir: str | None):
        self._tb = self._wandb = None
        kinds = chosen(cfg)
        config_values = logged_config(cfg)
        if "tensorboard" in kinds:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=run_dir)
            if config_values:
                self._tb.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in sorted(config_values.items())))
        if "wandb" in kinds:
            wandb = import_wandb()
            if run_dir:
                os.makedirs(run_dir, exist_ok=True)
            if cfg.wandb_api_key:
                wandb.login(key=cfg.wandb_api_key)
            offline = {"mode": "offline"} if wandb_key_missing(cfg) else {}  # said at the start (resolve)
            # the run's name: wandb_run_name, else the output name (what the Kohya_ss GUI passes)
            init = {"wandb": {"name": cfg.wandb_run_name or cfg.output_name}}
            if cfg.log_tracker_config:
                init = _read_tracker_config(cfg.log_tracker_config)
            self._wandb = wandb.init(project=cfg.log_tracker_name or "network_train", config=config_values,
                                     dir=run_dir, **{**offline, **init.get("wandb", {})})
            log.info("logging to Weights & Biases: project %s, run %s%s", self._wandb.project, self._wandb.name,
                     " (offline)" if self._wandb.settings.mode == "offline" else "")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def image(self, step: int, path: str, caption: str, index: int) -> None:
        if self._wandb is not None:  # sd-scripts sends sample images to W&B as sample_<n>
            import wandb

            self._wandb.log({f"sample_{index}": wandb.Image(path, caption=caption)}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            import wandb

            self._wandb.finish()
            wandb.teardown()  # waits until W&B's service process has written (or sent) all of the run's data
            self._wandb = None


def _read_tracker_config(path: str) -> dict:
    """sd-scripts' log_tracker_config: a TOML of each tracker's init arguments ([wandb] name = ..., tags = ...)."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise UserError(f"log_tracker_config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"log_tracker_config: {path} is not valid TOML: {exc}") from None
