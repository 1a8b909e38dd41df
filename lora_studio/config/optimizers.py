"""Optimizer names as sd-scripts users write them, and whether this machine can run one: checked without importing
torch, so the GUI and the Kohya_ss import can name a problem before a run starts."""

from __future__ import annotations

import importlib.util

# 8-bit optimizers (bitsandbytes) -> (bitsandbytes class, the 32-bit optimizer that stands in where it cannot run)
EIGHT_BIT = {"adamw8bit": ("AdamW8bit", "adamw"), "pagedadamw8bit": ("PagedAdamW8bit", "adamw"),
             "pagedadamw": ("PagedAdamW", "adamw"), "pagedadamw32bit": ("PagedAdamW32bit", "adamw"),
             "lion8bit": ("Lion8bit", "lion"), "pagedlion8bit": ("PagedLion8bit", "lion"),
             "sgdnesterov8bit": ("SGD8bit", "sgdnesterov")}
# D-Adaptation (package dadaptation) and schedule-free (package schedulefree) optimizers by their sd-scripts names.
LEARNING_RATE_FREE = {"dadaptation": "dadaptation.experimental.DAdaptAdamPreprint",
                      "dadaptadampreprint": "dadaptation.experimental.DAdaptAdamPreprint",
                      "dadaptadagrad": "dadaptation.DAdaptAdaGrad", "dadaptadam": "dadaptation.DAdaptAdam",
                      "dadaptadan": "dadaptation.DAdaptAdan", "dadaptadanip": "dadaptation.experimental.DAdaptAdanIP",
                      "dadaptlion": "dadaptation.DAdaptLion", "dadaptsgd": "dadaptation.DAdaptSGD"}
SCHEDULE_FREE = {"adamwschedulefree": "schedulefree.AdamWScheduleFree",
                 "radamschedulefree": "schedulefree.RAdamScheduleFree",
                 "sgdschedulefree": "schedulefree.SGDScheduleFree"}
# Other names sd-scripts knows, with the package each needs (None: torch itself)
NAMED = {"": None, "adamw": None, "sgdnesterov": None, "lion": "lion_pytorch", "prodigy": "prodigyopt",
         "adafactor": "transformers"}
TORCH_OPTIMIZERS = {"adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "asgd", "lbfgs", "nadam", "radam",
                    "rmsprop", "rprop", "sgd", "sparseadam", "muon"}
PIP_NAMES = {"lion_pytorch": "lion-pytorch", "prodigyopt": "prodigyopt", "pytorch_optimizer": "pytorch-optimizer",
             "prodigyplus": "prodigy-plus-schedule-free", "came_pytorch": "came-pytorch"}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def optimizer_problem(name: str) -> str | None:
    """Why ``optimizer_type`` cannot run here, or None. An 8-bit optimizer without bitsandbytes is not a problem:
    its 32-bit form stands in (said when training starts)."""
    key = name.lower()
    if key in EIGHT_BIT:
        return None
    if key in NAMED or key in LEARNING_RATE_FREE or key in SCHEDULE_FREE:
        package = NAMED.get(key) or (LEARNING_RATE_FREE.get(key) or SCHEDULE_FREE.get(key) or "").split(".")[0]
        if package and not _installed(package):
            return f"{name} needs the {package} package: pip install {PIP_NAMES.get(package, package)}"
        return None
    if "." in name:
        top = name.split(".")[0]
        if not _installed(top):
            return f"{name} needs the {top} package, which is not installed: pip install {PIP_NAMES.get(top, top)}"
        return None
    if key in TORCH_OPTIMIZERS:
        return None
    return (f"unknown optimizer '{name}'. Use AdamW, AdamW8bit, Lion, Prodigy, Adafactor, DAdaptAdam, "
            "AdamWScheduleFree, SGDNesterov, a torch.optim class name (e.g. SGD) or a dotted path (package.Class)")
