"""Optimizers and learning-rate schedules by the names sd-scripts users write."""

from __future__ import annotations

import logging

import torch

from ..config import Config, parse_key_values
from ..config.optimizers import EIGHT_BIT, LEARNING_RATE_FREE, SCHEDULE_FREE, optimizer_problem
from ..confinement import Confinement, active
from ..errors import UserError
from .plan import warmup_steps


def _import_class(dotted: str, setting: str = "optimizer_type"):
    """A dotted name from a setting: any importable one on one's own command line, only a trusted one when the run is
    confined (``confinement``)."""
    return active().import_callable(dotted, setting)


def _eight_bit(name: str, bnb_class: str, stand_in: str):
    """bitsandbytes' optimizer on a GPU, or on its CPU backend where that works; else the 32-bit optimizer, said
    once (a preset made for a GPU still trains)."""
    try:
        import bitsandbytes as bnb

        cls = getattr(bnb.optim, bnb_class)
        if bnb_class == "SGD8bit":  # sd-scripts' SGDNesterov8bit
            cls = _nesterov(cls)
        if not torch.cuda.is_available():  # try the CPU backend on one parameter before trusting it
            param = torch.nn.Parameter(torch.zeros(8))
            param.grad = torch.ones(8)
            cls([param], lr=1e-3).step()
        return cls
    except Exception as exc:
        reason = "bitsandbytes is not installed" if isinstance(exc, ImportError) else \
            f"bitsandbytes cannot run it here ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        logging.getLogger(__name__).warning("optimizer_type %s: %s; training with the 32-bit %s instead (more "
                                            "memory for the optimizer state, the same training)", name, reason,
                                            {"adamw": "AdamW", "lion": "Lion", "sgdnesterov": "SGDNesterov"}[stand_in])
        return optimizer_class(stand_in)


def is_schedule_free(optimizer) -> bool:
    """Schedule-free optimizers keep two sets of weights: train() between steps, eval() before the weights are
    saved or used for samples (sd-scripts switches them so)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None)) and \
        "ScheduleFree" in type(getattr(optimizer, "optimizer", optimizer)).__name__


def optimizer_class(name: str):
    """The optimizer class for ``optimizer_type`` (case-insensitive for the built-in names)."""
    key = name.lower()
    if key in ("", "adamw"):
        return torch.optim.AdamW
    if key in EIGHT_BIT:
        return _eight_bit(name, *EIGHT_BIT[key])
    if key in LEARNING_RATE_FREE or key in SCHEDULE_FREE:
        return Confinement().import_callable(LEARNING_RATE_FREE.get(key) or SCHEDULE_FREE[key], "optimizer_type",
                                             known=True)
    if key == "sgdnesterov":
        return _sgd_nesterov
    if key == "lion":
        from lion_pytorch import Lion

        return Lion
    if key == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy
    if key == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    if "." in name:
        return _import_class(name)
    for attr in dir(torch.optim):
        if attr.lower() == key and isinstance(getattr(torch.optim, attr), type):
            return getattr(torch.optim, attr)
    raise UserError(f"optimizer_type: {optimizer_problem(name)}")


def _nesterov(cls):
    def make(params, **kwargs):
        kwargs.setdefault("momentum", 0.9)
        return cls(params, nesterov=True, **kwargs)
    return make


def _sgd_nesterov(params, **kwargs):
    """sd-scripts' SGDNesterov: SGD with Nesterov momentum, 0.9 unless optimizer_args sets it."""
    kwargs.setdefault("momentum", 0.9)
    return torch.optim.SGD(params, nesterov=True, **kwargs)


def build_optimizer(cfg: Config, param_groups: list[dict]) -> torch.optim.Optimizer:
    cls = optimizer_class(cfg.optimizer_type)
    kwargs = parse_key_values(cfg.optimizer_args, "optimizer_args")
    groups = [{k: v for k, v in g.items() if k != "name"} for g in param_groups]
    lr = cfg.learning_rate
    if cls.__name__ == "Adafactor":
        groups, lr = _adafactor_arguments(cfg, kwargs, groups)
    if cls is torch.optim.AdamW and "fused" not in kwargs and "foreach" not in kwargs and _fusable(groups):
        kwargs["fused"] = True  # one kernel for every parameter (on a GPU and on the CPU), not a loop of them
    if cls.__module__.startswith(("dadaptation", "prodigyopt")):
        groups = _one_learning_rate(cls.__name__, groups, cfg.learning_rate)
    try:
        return cls(groups, lr=lr, **kwargs)
    except TypeError as exc:
        raise UserError(f"optimizer_args: {cls.__name__} does not accept these arguments: {exc}") from None


def _fusable(groups: list[dict]) -> bool:
    """torch's fused AdamW takes floating-point parameters on a CUDA device or the CPU."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)


def _adafactor_arguments(cfg: Config, kwargs: dict, groups: list[dict]) -> tuple[list[dict], float | None]:
    """As sd-scripts sets Adafactor up: relative_step=True unless optimizer_args says otherwise (warmup_init=True
    turns it on); with it, Adafactor computes its own step size, the learning rates per part are dropped and the
    learning rate only starts the adafactor schedule."""
    kwargs.setdefault("relative_step", True)
    if kwargs.get("warmup_init"):
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return groups, cfg.learning_rate
    return [{k: v for k, v in g.items() if k != "lr"} for g in groups], None


def uses_adafactor_schedule(optimizer) -> bool:
    return type(optimizer).__name__ == "Adafactor" and bool(optimizer.defaults.get("relative_step"))


def build_scheduler(cfg: Config, optimizer, total_steps: int):
    from diffusers.optimization import get_scheduler

    if cfg.lr_scheduler_type:
        return _scheduler_by_type(cfg, optimizer)
    if cfg.lr_scheduler == "adafactor" or uses_adafactor_schedule(optimizer):
        return _adafactor_schedule(cfg, optimizer, total_steps)
    if is_schedule_free(optimizer):  # it schedules itself; warm-up is its own optimizer_args warmup_steps=N
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    # a warm-up that has no effect here ("constant", as in sd-scripts; schedule-free; lr_scheduler_type) is said by
    # resolve, before the run starts
    warmup = warmup_steps(cfg, total_steps)
    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps,
                         num_cycles=cfg.lr_scheduler_num_cycles, power=cfg.lr_scheduler_power)


def _adafactor_schedule(cfg: Config, optimizer, total_steps: int):
    """sd-scripts' adafactor scheduler: the step size Adafactor computes (relative_step), reported as the learning
    rate; learning_rate is its initial value. Adafactor with relative_step always uses it, as in sd-scripts."""
    if type(optimizer).__name__ != "Adafactor":
        raise UserError(f"lr_scheduler = \"adafactor\" needs optimizer_type = \"Adafactor\" (not "
                        f"{type(optimizer).__name__}), as in sd-scripts")
    if not uses_adafactor_schedule(optimizer):
        raise UserError("lr_scheduler = \"adafactor\" needs Adafactor's relative_step=True (its default; remove "
                        "relative_step=False from optimizer_args), or choose another lr_scheduler")
    if warmup_steps(cfg, total_steps):
        raise UserError("lr_scheduler adafactor (Adafactor with relative_step) takes no warm-up: set "
                        "lr_warmup_steps = 0, as sd-scripts requires")
    if cfg.lr_scheduler != "adafactor":
        logging.getLogger(__name__).info("Adafactor with relative_step: its own schedule (adafactor) replaces "
                                         "lr_scheduler %s, as in sd-scripts", cfg.lr_scheduler)
    return _adafactor_schedule_class()(optimizer, initial_lr=cfg.learning_rate)


def _adafactor_schedule_class():
    from transformers.optimization import AdafactorSchedule

    class PerGroupAdafactorSchedule(AdafactorSchedule):
        """transformers' AdafactorSchedule with one learning rate for every group: it reads each group's first
        parameter, and a group whose first parameter had no gradient this step (a DyLoRA rank not drawn) made it
        return fewer rates than groups. Here a group's step size comes from a parameter that has Adafactor state,
        else its last rate stands."""

        def get_lr(self):
            optimizer = self.optimizer
            last = getattr(self, "_last_lr", None) or self.base_lrs
            rates = []
            for group, before in zip(optimizer.param_groups, last):
                param = next((p for p in group["params"] if p.grad is not None and optimizer.state.get(p)), None)
                rates.append(optimizer._get_lr(group, optimizer.state[param]) if param is not None else before)
            return rates

    return PerGroupAdafactorSchedule


def _scheduler_by_type(cfg: Config, optimizer):
    """sd-scripts' lr_scheduler_type: a torch.optim.lr_scheduler class name, or a dotted path (package.Class),
    made with lr_scheduler_args; it replaces lr_scheduler and its warm-up."""
    name = cfg.lr_scheduler_type
    cls = getattr(torch.optim.lr_scheduler, name, None) if "." not in name else _import_class(name, "lr_scheduler_type")
    if not isinstance(cls, type):
        raise UserError(f"lr_scheduler_type: no scheduler '{name}' in torch.optim.lr_scheduler (for another package "
                        "give its dotted path, package.Class)")
    kwargs = parse_key_values(cfg.lr_scheduler_args, "lr_scheduler_args")
    try:
        return cls(optimizer, **kwargs)
    except TypeError as exc:
        raise UserError(f"lr_scheduler_args: {cls.__name__} does not accept these arguments: {exc}") from None


def _one_learning_rate(name: str, groups: list[dict], learning_rate: float) -> list[dict]:
    """D-Adaptation and Prodigy find the step size themselves and take one learning rate (around 1.0) for all
    parameter groups: different ones stop them at their first step, so the first group's is used for all (the one
    sd-scripts says takes effect)."""
    log = logging.getLogger(__name__)
    rates = [g["lr"] for g in groups]
    if len(set(rates)) > 1:
        log.warning("optimizer_type %s takes one learning rate for every part: %g is used for all (was %s)", name,
                    rates[0], ", ".join(f"{r:g}" for r in rates))
    if (rates[0] if rates else learning_rate) <= 0.1:
        log.warning("optimizer_type %s: the learning rate %g is low; D-Adaptation and Prodigy want about 1.0", name,
                    rates[0] if rates else learning_rate)
    return [{**g, "lr": rates[0]} for g in groups]
