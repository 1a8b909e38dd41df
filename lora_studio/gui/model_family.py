"""The LoRA tab's model family: which family the chosen base model is, the one-line status under the model field,
which settings the family shows, and the Flux.1 / Chroma part files (ae, clip_l, t5xxl) found beside a transformer.

Everything here is torch-free: the model is read as Check settings reads it (``models.registry.identify``: a folder's
configs, a file's header), and a candidate part file is confirmed by its header's tensor names (``models.flux_parts``'
``is_flux_ae`` / ``is_clip_l`` / ``is_t5``), never by loading it.

Where the parts are looked for is where people put them: beside the transformer (a flat folder holding all four
files, as the Hugging Face downloads are often gathered), and in the sibling folders ComfyUI uses
(``models/unet`` or ``models/diffusion_models`` for the transformer, ``models/vae/ae.safetensors``,
``models/clip`` or ``models/text_encoders`` for ``clip_l.safetensors`` and ``t5xxl_fp16.safetensors`` /
``t5xxl_fp8_e4m3fn.safetensors``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from ..config.schema import SETTINGS, Setting
from ..config.values import parse_value
from ..errors import ConfigError, UserError
from ..models.family import ModelFamily
from ..models.registry import FAMILIES, MODEL_SETTING, family_of_checkpoint, family_of_diffusers_folder, identify
from .form import outside_roots
from .widgets import from_widget

# settings whose field shows or hides with the model's family (schema ``families``, or a family that ignores it)
FAMILY_FIELDS = tuple(s.name for s in SETTINGS if s.families is not None or
                      any(s.name in family.ignored_settings for family in FAMILIES))
MAX_HEADERS_READ = 40  # a part folder with more .safetensors files: the best-named ones are read first


# ================================================================ the family and its fields
@dataclass(frozen=True)
class ModelReading:
    """What the model field says: its family (None: no model, not readable, or a pickle file only the engine opens)
    and the status line (empty with no model)."""

    family: ModelFamily | None = None
    status: str = ""
    problem: str = ""  # what is wrong with the model or the switches that go with it (not fatal here)

    @cached_property
    def named_in_problem(self) -> list[str]:
        """The hidden settings the problem names ("the config sets v2 = true; remove v2"): their fields stay shown,
        so the fix can be made."""
        return [name for name in hidden_settings(self.family) if re.search(rf"\b{re.escape(name)}\b", self.problem)]

    def shows(self, setting: Setting) -> bool:
        return applies(setting, self.family) or setting.name in self.named_in_problem


def family_from_names(path: Path) -> ModelFamily | None:
    """The family from a folder's configs or a file's tensor names alone, without ``identify``'s checks (a v2 switch
    that contradicts the model, an incomplete file): the fields follow the model even while such a problem shows."""
    from ..io_utils import read_safetensors_header

    try:
        if path.is_dir():
            return family_of_diffusers_folder(path)[0]
        return family_of_checkpoint(read_safetensors_header(path, check_data=False).tensors)
    except (UserError, OSError, StopIteration):
        return None


def describe(family: ModelFamily, path: Path) -> str:
    """"Flux.1 dev (transformer; needs ae, clip_l, t5xxl)", "SDXL (diffusers folder)", "SD1.x (single file)"."""
    if path.is_dir():
        return f"{family.title} (diffusers folder)"
    if family.separate_files:
        needs = family.required_files(path) if hasattr(family, "required_files") else list(family.separate_files)
        optional = [n for n in getattr(family, "optional_files", ()) if n in _parts_to_find(family, path)]
        if not needs and not optional:
            return f"{family.title} ({family.denoiser_title}; its parts inside)"
        return (f"{family.title} ({family.denoiser_title}; needs {', '.join(needs) or 'nothing else'}"
                + (f"; optional {', '.join(optional)}" if optional else "") + ")")
    return f"{family.title} (single file)"


def _parts_to_find(family: ModelFamily, path: Path) -> list[str]:
    """The separate parts a transformer file needs (a family may hold some inside: SD3)."""
    return family.parts_to_find(path) if hasattr(family, "parts_to_find") else list(family.separate_files)


def _without_setting(message: str) -> str:
    return message.removeprefix(f"{MODEL_SETTING}: ")


def read_model(model: str | None, v2: bool = False, allow_pickle: bool = False, own_vae: bool = False,
               roots: list[Path] | None = None) -> ModelReading:
    """The family of the model a form names and its status line: "Model: Flux.1 dev (transformer; needs ae, clip_l,
    t5xxl)". A problem (not found, not a model, v2 set for a Flux model) is said on the line and is not fatal: the
    family is still given when the file's names tell it. A path outside ``roots`` is not read."""
    text = (model or "").strip()
    if not text:
        return ModelReading()
    outside = outside_roots(text, roots)
    if outside:
        return ModelReading(None, f"Model: ✗ {outside}", outside)
    path = Path(text).expanduser()
    try:
        family = identify(path, v2, allow_pickle, own_vae=own_vae)
    except UserError as exc:
        family = family_from_names(path) if path.exists() else None
        known = f"{describe(family, path)} · " if family is not None else ""
        problem = _without_setting(str(exc))
        return ModelReading(family, f"Model: {known}✗ {problem}", problem)
    if family is None:  # a pickle file allowed by allow_pickle: only the engine opens it
        return ModelReading(None, "Model: a pickle file; its family is known when the run opens it (every field is "
                                  "shown)")
    return ModelReading(family, f"Model: {describe(family, path)}")


def applies(setting: Setting, family: ModelFamily | None) -> bool:
    """Whether a setting's field shows for a family: every field with no family known; else the settings made for
    it (schema ``families``) that it does not ignore (Chroma has no CLIP-L)."""
    if family is None:
        return True
    if setting.families is not None and family.name not in setting.families:
        return False
    return setting.name not in family.ignored_settings


def hidden_settings(family: ModelFamily | None) -> list[str]:
    """The settings whose fields a family hides (their values are kept: hiding is not clearing)."""
    return [s.name for s in SETTINGS if not applies(s, family)]


def hidden_but_set(family: ModelFamily | None, values: dict[str, Any], shown: Iterable[str] = ()) -> list[str]:
    """"Clip skip = 2": the hidden settings (not counting ``shown``) that hold a value other than their default
    (Check settings names them too: they have no effect with this family)."""
    out = []
    for setting in SETTINGS:
        if applies(setting, family) or setting.name not in values or setting.name in shown:
            continue
        raw = from_widget(setting, values[setting.name])
        try:
            value = parse_value(setting, raw) if raw is not None else None
        except ConfigError:
            value = raw  # not a valid value either: Check settings says so
        if value not in (setting.default, None, False):  # as the engine's resolve names them
            out.append(f"{setting.label} = {raw}")
    return out


# ================================================================ Flux / Chroma parts beside the transformer
def _usable_header(path: Path, family: ModelFamily, part: str) -> bool:
    """The file's header says it is ``part`` in a form the family loads (``ModelFamily.is_part_file``), and is not
    a base model of its own (an SD3 checkpoint beside a Lumina transformer holds an autoencoder too, but not the
    Flux AE Lumina renders with)."""
    from ..io_utils import read_safetensors_header

    try:
        tensors = read_safetensors_header(path, part).tensors
    except UserError:
        return False
    return family.is_part_file(part, tensors) and family_of_checkpoint(tensors) is None


def part_folders(model_file: Path, family: ModelFamily, part: str) -> list[Path]:
    """The transformer's folder, then its siblings named for ``part`` (the family's ``part_files``, any case)."""
    here = model_file.parent
    try:
        siblings = {p.name.lower(): p for p in here.parent.iterdir() if p.is_dir() and p != here}
    except OSError:
        siblings = {}
    return [here] + [siblings[name] for name in family.part_files[part].folders if name in siblings]


def _name_rank(path: Path, family: ModelFamily, part: str) -> tuple[int, int, str]:
    name, spec = path.name.lower(), family.part_files[part]
    if name in spec.names:
        return 0, spec.names.index(name), name
    if any(hint in name for hint in spec.hints):
        return 1, 0, name
    return 2, 0, name


def candidates(folder: Path, family: ModelFamily, part: str, exclude: Iterable[Path] = ()) -> list[Path]:
    """The .safetensors files of ``folder`` that may be ``part``, best-named first (the names it is downloaded as,
    then a name holding a hint such as "t5", then the others), at most ``MAX_HEADERS_READ``."""
    skip = {Path(p).resolve() for p in exclude}
    try:
        files = [p for p in folder.iterdir() if p.suffix.lower() == ".safetensors" and p.is_file()
                 and p.resolve() not in skip]
    except OSError:
        return []
    return sorted(files, key=lambda p: _name_rank(p, family, part))[:MAX_HEADERS_READ]


def find_part(model_file: Path, family: ModelFamily, part: str, roots: list[Path] | None = None,
              taken: Iterable[Path] = ()) -> Path | None:
    """The first file near the transformer whose header shows it is ``part`` (nothing outside ``roots`` is looked
    at; ``taken``: files already chosen for another part)."""
    for folder in part_folders(model_file, family, part):
        if outside_roots(folder, roots):
            continue
        for path in candidates(folder, family, part, [model_file, *taken]):
            if outside_roots(path, roots) is None and _usable_header(path, family, part):
                return path
    return None


@dataclass
class PartsFilled:
    """The part fields filled in (setting -> path) and what to tell the user."""

    values: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def fill_parts(model: str | None, family: ModelFamily | None, current: dict[str, Any],
               roots: list[Path] | None = None) -> PartsFilled:
    """The separate files a transformer needs (``family.separate_files``) that the form leaves empty, found near it:
    "ae filled in: ../vae/ae.safetensors". A filled field is never changed; a diffusers folder brings its own parts."""
    out = PartsFilled()
    if family is None or not family.separate_files or not (model or "").strip():
        return out
    model_file = Path(model.strip()).expanduser()
    if not model_file.is_file():
        return out
    taken = [Path(str(v)).expanduser() for k, v in current.items() if k in family.separate_files and
             str(v or "").strip()]
    for part in _parts_to_find(family, model_file):
        if str(current.get(part) or "").strip() or part not in family.part_files:
            continue  # a part the file holds, or one with no usual place (Anima's separate LLM adapter)
        found = find_part(model_file, family, part, roots, taken)
        if found is None:
            if part not in getattr(family, "optional_files", ()):
                out.missing.append(part)
            continue
        taken.append(found)
        out.values[part] = str(found)
        out.notes.append(f"`{part}` filled in: `{os.path.relpath(found, model_file.parent)}`")
    return out


# ================================================================ the status shown under the model field
def status_markdown(reading: ModelReading, filled: PartsFilled, values: dict[str, Any]) -> str:
    """The status line, then what was filled in, the parts still to choose and the hidden fields that hold a
    value."""
    if not reading.status:
        return ""
    lines = [reading.status]
    if filled.notes:
        lines.append("; ".join(filled.notes))
    if filled.missing:
        which = "them" if len(filled.missing) > 1 else "it"
        lines.append(f"Not found near the model: {', '.join(filled.missing)} (choose {which})")
    set_but_hidden = hidden_but_set(reading.family, values, reading.named_in_problem)
    if set_but_hidden:
        title = reading.family.title
        lines.append(f"Hidden for {title} but set (no effect with {title}): {', '.join(set_but_hidden)}")
    return "\n\n".join(lines)
