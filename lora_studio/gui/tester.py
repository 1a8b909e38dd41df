"""The Test tab without the page: its settings (remembered in the state folder), the checks, the comparison job's
options, the render requests a paused run answers, and the images of either as gallery items.

Torch-free, like the engine's own readers it uses: ``training.prompts`` (sd-scripts' prompt options) and
``training.render_requests`` (what a paused run renders).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..compare import run_seed, sample_size
from ..config.schema import BY_NAME
from ..errors import UserError
from ..io_utils import atomic_write_bytes
from ..training.prompts import parse_prompt_line, prompt_options, read_prompt_lines
from ..training.render_requests import RenderRequest
from .form import outside_roots

# the samplers training.sampling knows (its _SAMPLERS), without the k_ aliases
SAMPLERS = [c for c in BY_NAME["sample_sampler"].choices if not c.startswith("k_")]
DEFAULT_STRENGTHS = "0, 0.5, 0.7, 0.85, 1"
SETTINGS_FILE = "test_settings.json"


@dataclass
class TestSettings:
    """What the Test tab's fields hold (as typed: the numbers lists are text)."""

    __test__ = False  # not a pytest class

    model: str = ""
    files: str = ""
    prompts: str = ""
    negative: str = ""
    seeds: str = "1"
    strengths: str = DEFAULT_STRENGTHS
    sampler: str = "euler_a"
    steps: int = 20
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_values(cls, values) -> TestSettings:
        defaults = cls()
        out = {}
        for name, value in zip(cls.names(), values):
            default = getattr(defaults, name)
            if value is None or (isinstance(value, str) and not isinstance(default, str) and not value.strip()):
                value = default
            out[name] = value if isinstance(default, str) else type(default)(value)
        return cls(**out)

    def values(self) -> list:
        return [getattr(self, n) for n in self.names()]

    def file_list(self) -> list[str]:
        return [line.strip().strip('"') for line in (self.files or "").splitlines() if line.strip()]


def load_remembered(state_dir: str | Path) -> tuple[TestSettings | None, dict]:
    """The Test tab's last settings and last job (None, {} when there are none or the file cannot be read)."""
    try:
        doc = json.loads((Path(state_dir) / SETTINGS_FILE).read_text(encoding="utf-8"))
        known = {k: v for k, v in (doc.get("settings") or {}).items() if k in TestSettings.names()}
        settings = TestSettings.from_values([known.get(n, getattr(TestSettings(), n)) for n in TestSettings.names()])
        return settings, dict(doc.get("job") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return None, {}


def remember(state_dir: str | Path, settings: TestSettings, job: dict | None = None) -> None:
    _, old_job = load_remembered(state_dir)
    doc = {"settings": asdict(settings), "job": old_job if job is None else job}
    atomic_write_bytes(Path(state_dir) / SETTINGS_FILE, json.dumps(doc, indent=1).encode("utf-8"))


# ---------------------------------------------------------------- a family's defaults
@dataclass(frozen=True)
class FamilyDefaults:
    """What the Test tab uses for a model family where a prompt line gives no option of its own."""

    steps: int
    cfg_scale: float
    pixel_multiple: int = 8  # sizes are rounded down to this (16 for Flux: 8x autoencoder, 2x2 patches)
    sampler: str | None = None  # the one sampler the family renders with (None: any of SAMPLERS)


def family_defaults(family) -> FamilyDefaults:
    """The Test tab's defaults for a family (a ``models.family.ModelFamily``, or None when unknown: Stable
    Diffusion's, the engine's 30 steps and CFG 7.5)."""
    from ..models.family import ModelFamily

    if family is None:
        return FamilyDefaults(ModelFamily.sample_steps, ModelFamily.sample_cfg, ModelFamily.pixel_multiple)
    samplers = family.samplers() if family.separate_files else ()  # (the SD families: the run's own sampler)
    return FamilyDefaults(family.sample_steps, float(family.sample_cfg), family.pixel_multiple,
                          samplers[0] if len(samplers) == 1 else None)


def model_family(model: str | Path | None):
    """The family of a base model from its names alone (torch-free, no completeness checks), or None."""
    from .model_family import family_from_names

    text = str(model or "").strip()
    return family_from_names(Path(text).expanduser()) if text else None


def run_family(cfg, file: str | Path | None = None):
    """The family a run trained: its base model's, else (the model is not on this computer) what the LoRA file's
    metadata says (``modelspec.architecture``), else None."""
    from ..io_utils import read_safetensors_header
    from ..models.registry import FAMILIES

    family = model_family(cfg.pretrained_model_name_or_path)
    if family is not None or not file:
        return family
    try:
        architecture = read_safetensors_header(file, check_data=False).metadata.get("modelspec.architecture", "")
    except UserError:
        return None
    return next((f for f in FAMILIES if architecture in (f.architecture(False), f.architecture(True))), None)


# ---------------------------------------------------------------- a run's settings
def settings_from_run(cfg, file: str, current: TestSettings) -> tuple[TestSettings, str]:
    """What "Test this file" puts in the Test tab, and a line saying so: the run's base model, the file, and the
    run's sample images as the engine makes them: its prompt file's lines (each keeps its own --n --w --h --s --l
    --ss; a line without --d gets the seed the engine gave it, the run's seed + its number), its sampler, and where a
    line gives no option of its own, the training resolution and the family's steps and CFG (``family_defaults``:
    30 and 7.5 for Stable Diffusion, sd-scripts' defaults; 20 and 1.0 for Flux.1 dev, 4 for schnell, 4.0 CFG for
    Chroma, with Euler and sizes in multiples of 16). Only the strengths stay as the user set them; a run without
    sample prompts keeps the prompts typed."""
    defaults = family_defaults(run_family(cfg, file))
    size = sample_size(cfg)
    size -= size % defaults.pixel_multiple
    sampler = defaults.sampler or (cfg.sample_sampler or "").lower().removeprefix("k_")
    settings = TestSettings(model=cfg.pretrained_model_name_or_path or current.model, files=file,
                            prompts=current.prompts, negative="", seeds="", strengths=current.strengths,
                            sampler=sampler if sampler in SAMPLERS else TestSettings.sampler, steps=defaults.steps,
                            width=size, height=size, cfg_scale=defaults.cfg_scale)
    note = "the run has no sample prompts: type one"
    if cfg.sample_prompts:
        try:
            lines = prompt_lines("\n".join(read_prompt_lines(cfg.sample_prompts)))
        except (UserError, OSError) as exc:
            lines, note = [], f"its prompts could not be read ({exc})"
        if lines:
            seed = run_seed(cfg, [file])
            settings.prompts = "\n".join(line if "d" in split_prompt(line)[1] else f"{line} --d {seed + i}"
                                          for i, line in enumerate(lines))
            note = f"{len(lines)} prompt(s) of `{Path(cfg.sample_prompts).name}`"
    return settings, f"{size} px, {settings.sampler}, {note}"


# ---------------------------------------------------------------- checks
def numbers(text: str, kind: type, what: str) -> list:
    """``"0, 0.5 1"`` -> [0.0, 0.5, 1.0] (commas or spaces between)."""
    out = []
    for part in re.split(r"[,;\s]+", (text or "").strip()):
        if not part:
            continue
        try:
            out.append(kind(part))
        except ValueError:
            raise UserError(f"{what}: '{part}' is not {'a whole number' if kind is int else 'a number'}") from None
    return out


def split_prompt(line: str) -> tuple[str, dict[str, str]]:
    """A prompt line's text and its sd-scripts options (the last of a repeated option wins, as in training)."""
    text, options = prompt_options(line)
    return text, dict(options)


def prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass
class TestPlan:
    """Checked settings: what a comparison job or the render requests are made from."""

    __test__ = False

    prompts: list[str]  # each line with the tab's defaults added for the options it does not give
    seeds: list[int]
    strengths: list[float]
    sampler: str
    model: str = ""
    files: list[str] = None  # absolute paths
    family_values: dict = None  # a Flux base model's separate files and options (ae, clip_l, t5xxl ...)


def check(settings: TestSettings, roots: list[Path] | None = None, need_files: bool = True,
          pixel_multiple: int = 8) -> TestPlan:
    """The settings as a plan, or a UserError saying what to fix. ``need_files``: a comparison job (a base model
    and LoRA files); a paused run renders on its own weights. The tab's width and height are rounded down to
    ``pixel_multiple`` (the model family's: 16 for Flux)."""
    s = settings
    lines = prompt_lines(s.prompts)
    if not lines:
        raise UserError("Type at least one prompt (one a line).")
    seeds = numbers(s.seeds, int, "Seeds")
    strengths = numbers(s.strengths, float, "Strengths")
    if not strengths:
        raise UserError("Give at least one strength, e.g. 0, 0.5, 1 (0 is the base model).")
    if any(abs(v) > 10 for v in strengths):
        raise UserError("Strengths must be between -10 and 10.")
    if any(v < 0 or v >= 2**32 for v in seeds):
        raise UserError("Seeds must be between 0 and 4294967295.")
    if s.sampler not in SAMPLERS:
        raise UserError(f"Unknown sampler '{s.sampler}'; choose one of {', '.join(SAMPLERS)}.")
    if not 1 <= s.steps <= 1000:
        raise UserError("Steps must be between 1 and 1000.")
    if not (64 <= s.width <= 8192 and 64 <= s.height <= 8192):
        raise UserError("Width and height must be between 64 and 8192 pixels.")
    if not 0 <= s.cfg_scale <= 100:
        raise UserError("CFG must be between 0 and 100.")
    prompts = []
    for line in lines:
        text, options = split_prompt(line)
        if not text:
            raise UserError(f"A prompt line has no prompt text: {line}")
        for key in ("w", "h", "d", "s", "l"):
            if key in options:
                try:
                    float(options[key]) if key == "l" else int(options[key])
                except ValueError:
                    raise UserError(f"Option --{key} needs a number, got '{options[key]}' in: {line}") from None
        defaults = {"n": s.negative.strip(), "w": str(s.width - s.width % pixel_multiple),
                    "h": str(s.height - s.height % pixel_multiple),
                    "s": str(s.steps), "l": f"{s.cfg_scale:g}"}
        extra = [f"--{k} {v}" for k, v in defaults.items() if v and k not in options]
        prompts.append(" ".join([line.replace("\n", " "), *extra]))
    plan = TestPlan(prompts=prompts, seeds=seeds, strengths=strengths, sampler=s.sampler, files=[])
    if not need_files:
        return plan
    model = (s.model or "").strip()
    if not model:
        raise UserError("Give the base model the LoRA files were trained on (a .safetensors checkpoint or a diffusers "
                        "folder).")
    files = s.file_list()
    if not files:
        raise UserError("Give at least one LoRA file (one a line), or pick a saved file to add.")
    for path, what in [(model, "Base model")] + [(f, "LoRA file") for f in files]:
        outside = outside_roots(path, roots)
        if outside:
            raise UserError(f"{what}: {outside}")
        if not Path(path).expanduser().exists():
            raise UserError(f"{what} not found: {path}")
    for f in files:
        if not Path(f).expanduser().is_file() or not f.lower().endswith(".safetensors"):
            raise UserError(f"LoRA file must be a .safetensors file: {f}")
    plan.model = str(Path(model).expanduser().resolve())
    plan.files = [str(Path(f).expanduser().resolve()) for f in files]
    plan.family_values = family_values_for(plan.model, plan.files, roots)
    return plan


def family_values_for(model: str, files: list[str], roots: list[Path] | None = None) -> dict:
    """What a base model with separate parts (Flux: ae, clip_l, t5xxl, and the tokenizer folder and prompt options)
    renders with: the settings of the run that saved the first LoRA file (its ``<name>_config.toml`` beside it),
    then the parts found next to the model (as the LoRA tab fills them). A part found nowhere is a UserError naming
    it."""
    import re

    from ..config import load_config
    from ..config.schema import BY_NAME
    from .model_family import fill_parts, read_model

    family = read_model(model, roots=roots).family
    if family is None or not family.separate_files:
        return {}
    values: dict = {}
    for file in files:
        name = re.sub(r"-(\d{6}|step\d{8})$", "", Path(file).stem)
        config = Path(file).parent / f"{name}_config.toml"
        if config.is_file():
            try:
                cfg = load_config(config)
            except (UserError, OSError):
                continue
            values = {k: v for k, v in cfg.explicit().items()
                      if BY_NAME[k].families and family.name in BY_NAME[k].families}
            break
    found = fill_parts(model, family, values, roots)
    values.update(found.values)
    # the parts the model's file does not hold and that are not optional (SD3's may be inside, its T5 optional;
    # Anima's LLM adapter is in the DiT file unless given)
    needed = family.required_files(model) if hasattr(family, "required_files") else list(family.separate_files)
    missing = [name for name in needed if not values.get(name)]
    if missing:
        names = [family.part_files[n].names[0] for n in missing if n in family.part_files]
        raise UserError(f"{family.title} renders with its {', '.join(missing)} file(s): none was found in the run's "
                        "config beside the LoRA file or next to the base model; put them beside the model"
                        + (f" ({', '.join(names)})" if names else ""))
    return values


def compare_options(plan: TestPlan) -> list[str]:
    """``lora-studio compare`` options for a plan (the prompts go in a file, given by the caller)."""
    options = ["--files", *plan.files, f"--model={plan.model}", "--strengths", *[f"{v:g}" for v in plan.strengths],
               f"--sampler={plan.sampler}"]
    options += [f"--{name}={value}" for name, value in (plan.family_values or {}).items()
                if value is not None and value != ""]
    if plan.seeds:
        options += ["--seeds", *[str(v) for v in plan.seeds]]
    return options


# ---------------------------------------------------------------- a paused run's render requests
def write_requests(tests_folder: str | Path, plan: TestPlan) -> list[Path]:
    """One request a prompt line (each may give its own size, steps, CFG, negative and sampler) in the paused run's
    tests folder; the run answers them in order with ``<id>.done.json``."""
    folder = Path(tests_folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("gui-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    paths = []
    for k, line in enumerate(plan.prompts):  # each line has every option (check() added the tab's)
        p = parse_prompt_line(line, 512)
        seeds = plan.seeds or [p.seed if p.seed is not None else k]
        request = RenderRequest([p.prompt], p.negative, seeds, plan.strengths, p.sampler or plan.sampler, p.steps,
                                p.width, p.height, p.cfg_scale)
        paths.append(request.write(folder / f"{stem}-{k:02d}.json"))
    return paths


def read_answers(requests: list[str]) -> tuple[list[dict], list[str], int]:
    """The answered requests' images, their errors, and how many requests wait for an answer."""
    images, errors, waiting = [], [], 0
    for request in requests:
        done = Path(request).with_name(Path(request).stem + ".done.json")
        try:
            doc = json.loads(done.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            waiting += 1
            continue
        images += [i for i in doc.get("images") or [] if isinstance(i, dict) and i.get("path")]
        if doc.get("error"):
            errors.append(str(doc["error"]))
    return images, errors, waiting


def answer_gallery(images: list[dict], label: str) -> list[tuple[str, str]]:
    return [(i["path"], f"{label} · strength {float(i.get('strength') or 0):g} · seed {i.get('seed')}")
            for i in images if Path(i["path"]).is_file()]


# ---------------------------------------------------------------- a comparison job's images
def index_tiles(index: dict | None) -> list[tuple[str, str]]:
    """Every image of a comparison index as (path, "file · strength · seed"); the base model's image (strength 0)
    once per grid."""
    out = []
    for grid in (index or {}).get("grids") or []:
        names = (index.get("file_names") or [])
        seen = set()
        for row, paths in enumerate(grid.get("tiles") or []):
            for strength, path in zip(index.get("strengths") or [], paths):
                if path in seen or not Path(path).is_file():
                    continue
                seen.add(path)
                name = "base model" if strength == 0 else (names[row] if row < len(names) else f"file {row + 1}")
                out.append((path, f"{name} · strength {strength:g} · seed {grid.get('seed')}"))
    return out


def index_grids(index: dict | None) -> list[tuple[str, str]]:
    return [(g["path"], f"{g.get('prompt', '')} · seed {g.get('seed')}") for g in (index or {}).get("grids") or []
            if g.get("path") and Path(g["path"]).is_file()]
