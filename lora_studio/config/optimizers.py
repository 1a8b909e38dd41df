"""Optimizer names as sd-scripts users write them, and whether this machine can run one: checked without importing
torch, so the GUI and the Kohya_ss import can name a problem before a run starts."""

from __future__ import annotations

import importlib.util

# Each table is keyed by the name as sd-scripts users write it (the GUI's list, ``OPTIMIZER_NAMES``); a lookup is by
# its lower case (``EIGHT_BIT`` ... ``NAMED``), as sd-scripts compares them.
# 8-bit optimizers (bitsandbytes) -> (bitsandbytes class, the 32-bit optimizer that stands in where it cannot run)
_EIGHT_BIT = {"AdamW8bit": ("AdamW8bit", "adamw"), "PagedAdamW8bit": ("PagedAdamW8bit", "adamw"),
              "PagedAdamW": ("PagedAdamW", "adamw"), "PagedAdamW32bit": ("PagedAdamW32bit", "adamw"),
              "Lion8bit": ("Lion8bit", "lion"), "PagedLion8bit": ("PagedLion8bit", "lion"),
              "SGDNesterov8bit": ("SGD8bit", "sgdnesterov")}
# D-Adaptation (package dadaptation) and schedule-free (package schedulefree) optimizers by their sd-scripts names.
_LEARNING_RATE_FREE = {"DAdaptation": "dadaptation.experimental.DAdaptAdamPreprint",
                       "DAdaptAdamPreprint": "dadaptation.experimental.DAdaptAdamPreprint",
                       "DAdaptAdaGrad": "dadaptation.DAdaptAdaGrad", "DAdaptAdam": "dadaptation.DAdaptAdam",
                       "DAdaptAdan": "dadaptation.DAdaptAdan", "DAdaptAdanIP": "dadaptation.experimental.DAdaptAdanIP",
                       "DAdaptLion": "dadaptation.DAdaptLion", "DAdaptSGD": "dadaptation.DAdaptSGD"}
_SCHEDULE_FREE = {"AdamWScheduleFree": "schedulefree.AdamWScheduleFree",
                  "RAdamScheduleFree": "schedulefree.RAdamScheduleFree",
                  "SGDScheduleFree": "schedulefree.SGDScheduleFree"}
# Other names sd-scripts knows, with the package each needs (None: torch itself)
_NAMED = {"AdamW": None, "SGDNesterov": None, "Lion": "lion_pytorch", "Prodigy": "prodigyopt",
          "Adafactor": "transformers"}
# Every optimizer sd-scripts knows by name, in the order the GUI lists them
OPTIMIZER_NAMES = tuple(sorted({**_NAMED, **_EIGHT_BIT, **_LEARNING_RATE_FREE, **_SCHEDULE_FREE}, key=lambda n: (
    n not in ("AdamW", "AdamW8bit"), n.lower())))
EIGHT_BIT = {k.lower(): v for k, v in _EIGHT_BIT.items()}
LEARNING_RATE_FREE = {k.lower(): v for k, v in _LEARNING_RATE_FREE.items()}
SCHEDULE_FREE = {k.lower(): v for k, v in _SCHEDULE_FREE.items()}
NAMED = {"": None, **{k.lower(): v for k, v in _NAMED.items()}}
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
