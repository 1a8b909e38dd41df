"""Browse: a folder and file picker for the page's path fields, confined like every other path.

A path field gets a small **Browse** button beside it (``browse_button``, called right after the field is made, while
the page's ``PathPicker`` is collecting). The button opens one shared picker panel (it floats over the page): the
folders of a place (the allowed folders when the GUI is confined, else the home folder and the filesystem root, and
the folders the LoRA tab's form names), one folder at a time, listed only when opened. Clicking a folder opens it,
clicking a file fills the field with it, **Use this folder** fills the field with the folder shown.

Nothing outside the allowed folders is ever listed or offered: every folder is checked before it is listed, and an
entry whose path (links followed) leads outside is left out. The picker lists names and sizes; it serves no file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from .form import outside_roots

MAX_ENTRIES = 1000  # a folder with more shows its first ones (folders first, by name)
LIST_HEADERS = ["Name", "Size"]
_COLLECTING: list["PathPicker"] = []


def browse_button(box: Any, kind: str = "path") -> Any:
    """A Browse button beside ``box`` (call it right after making the box, in the same row). ``kind``: path (a file
    or a folder), folder, out (a new file: a folder pick keeps the box's file name), lines (a pick adds a line).
    Returns the button (hidden with its field), or None: nothing is added when no page is being built with a picker
    (a tab built on its own)."""
    return _COLLECTING[-1].attach(box, kind) if _COLLECTING else None


def _size(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@dataclass
class Listing:
    folder: str
    entries: list[tuple[str, bool]] = field(default_factory=list)  # (path, is a folder)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


class PathPicker:
    """The page's picker: ``collecting()`` while the tabs are built (their path fields call ``browse_button``), then
    ``build(places)`` makes the panel and wires every Browse button."""

    def __init__(self, roots: list[Path] | None, latest: Callable[[], list[tuple[str, str]]] = list):
        """``latest()``: more places, (label, folder), asked each time the picker opens (the latest run's)."""
        self.roots = roots
        self.latest = latest
        self.targets: list[tuple[Any, str, Any]] = []  # (box, kind, its Browse button)

    @contextlib.contextmanager
    def collecting(self) -> Iterator["PathPicker"]:
        _COLLECTING.append(self)
        try:
            yield self
        finally:
            _COLLECTING.remove(self)

    def attach(self, box: Any, kind: str) -> Any:
        name = getattr(box, "elem_id", None) or f"path-{len(self.targets)}"
        button = gr.Button("Browse", size="sm", scale=0, min_width=80, elem_id=f"browse-{name}",
                           elem_classes=["ls-browse"])
        self.targets.append((box, kind, button))
        return button

    # ------------------------------------------------------------------ where one may look
    def base_places(self) -> list[tuple[str, str]]:
        """The allowed folders (confined), else the home folder and the filesystem root."""
        if self.roots is not None:
            return [(str(r), str(r)) for r in self.roots]
        home = Path.home()
        return [(f"Home folder ({home})", str(home)), (f"Filesystem root ({Path(home.anchor or '/')})",
                                                      str(Path(home.anchor or "/")))]

    def allowed(self, path: str | Path) -> bool:
        return outside_roots(path, self.roots) is None

    def _folder_of(self, value: str) -> str | None:
        """The folder to start in for a field's value: the value's folder (or the value when it is one)."""
        value = (value or "").strip().splitlines()[-1].strip() if (value or "").strip() else ""
        if not value:
            return None
        path = Path(value).expanduser()
        for candidate in (path, *path.parents):
            if candidate.is_dir():
                return str(candidate) if self.allowed(candidate) else None
        return None

    def places(self, value: str, form: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The Places menu: the field's own folder, the form's folders (the LoRA tab), then the base places;
        only folders that exist and are allowed, each once."""
        out: list[tuple[str, str]] = []
        own = self._folder_of(value)
        if own:
            out.append((f"This field's folder ({own})", own))
        for label, path in [*form, *self.latest()]:
            folder = self._folder_of(path)
            if folder:
                out.append((f"{label} ({folder})", folder))
        out += [p for p in self.base_places() if Path(p[1]).is_dir()]
        seen, unique = set(), []
        for label, path in out:
            if path not in seen:
                seen.add(path)
                unique.append((label, path))
        return unique

    def listing(self, folder: str) -> Listing:
        """One folder's entries (folders first, then files, by name; hidden ones and links that lead outside the
        allowed folders left out)."""
        path = Path(folder).expanduser()
        if not self.allowed(path):
            raise PermissionError(outside_roots(path, self.roots))
        if not path.is_dir():
            raise FileNotFoundError(f"folder not found: {folder}")
        found = []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    continue
                found.append((not is_dir, entry.name.lower(), entry.path, is_dir))
        found.sort()
        result = Listing(str(path))
        for _, _, entry_path, is_dir in found:
            if len(result.entries) >= MAX_ENTRIES:
                result.note = f"The first {MAX_ENTRIES} entries of {len(found)} are shown; type the rest of the path."
                break
            if self.roots is not None and not self.allowed(entry_path):
                continue  # a link that leads outside the allowed folders
            name = os.path.basename(entry_path)
            result.entries.append((entry_path, is_dir))
            result.rows.append([name + os.sep if is_dir else name, "folder" if is_dir else _size(Path(entry_path))])
        if not result.entries and not result.note:
            result.note = "This folder is empty."
        return result

    def parent(self, folder: str) -> str | None:
        """The folder above, when it may be shown."""
        path = Path(folder)
        if path.parent == path or not self.allowed(path.parent):
            return None
        return str(path.parent)

    # ------------------------------------------------------------------ events
    def _show(self, state: dict, folder: str) -> tuple:
        """The panel's updates for ``folder``: its listing, where we are, the message; the new state."""
        try:
            found = self.listing(folder)
        except (OSError, PermissionError) as exc:
            return state, gr.skip(), gr.skip(), f"Cannot open {folder}: {exc}"
        state = {**state, "folder": found.folder, "entries": found.entries}
        up = self.parent(found.folder) is not None
        return (state, gr.update(value=found.rows), found.folder,
                found.note or ("Click a folder to open it, a file to choose it." + ("" if up else
                                                                                 " (the top of this place)")))

    def open(self, index: int, value: str, *form_values):
        """A Browse button: the panel, at the field's folder (else the first place)."""
        places = self.places(value, list(zip(self.form_labels, form_values)))
        if not places:
            return (gr.skip(), gr.update(visible=True), gr.update(choices=[], value=None), gr.skip(), gr.skip(),
                    "No folder to browse: the allowed folders do not exist.")
        state = {"target": index, "value": value or "", "folder": None, "entries": []}
        state, rows, where, message = self._show(state, places[0][1])
        return state, gr.update(visible=True), gr.update(choices=places, value=places[0][1]), rows, where, message

    def go(self, state: dict, folder: str | None):
        if not state or state.get("target") is None or not folder:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return self._show(state, folder)

    def up(self, state: dict):
        above = self.parent(state.get("folder") or "") if state else None
        if above is None:
            return gr.skip(), gr.skip(), gr.skip(), "This is the top of this place."
        return self._show(state, above)

    def _fill(self, state: dict, path: str, is_dir: bool) -> list:
        """The target field's new value (every other field skipped), the panel closed."""
        index = state.get("target")
        if index is None or not self.allowed(path):
            return [gr.skip()] * len(self.targets) + [gr.skip(), "Choose a folder or file inside the allowed folders."]
        kind = self.targets[index][1]
        old = state.get("value") or ""
        if kind == "lines":
            lines = [line for line in old.splitlines() if line.strip()]
            value = "\n".join(lines + ([path] if path not in [line.strip() for line in lines] else []))
        elif kind == "out" and is_dir:
            name = Path(old.strip()).name if old.strip() and Path(old.strip()).suffix else "new.safetensors"
            value = str(Path(path) / name)
        else:
            value = path
        out = [gr.skip()] * len(self.targets)
        out[index] = value
        return out + [gr.update(visible=False), ""]

    def pick(self, state: dict, evt: gr.SelectData):
        """A click in the listing: a folder opens, a file is chosen."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        entries = (state or {}).get("entries") or []
        keep = [gr.skip()] * (len(self.targets) + 1)  # the fields and the panel
        if not isinstance(row, int) or not 0 <= row < len(entries):
            return keep + [gr.skip()] * 4
        path, is_dir = entries[row]
        if is_dir:
            return keep + list(self._show(state, path))
        *fields, panel, message = self._fill(state, path, False)
        return fields + [panel, gr.skip(), gr.skip(), gr.skip(), message]

    def use_folder(self, state: dict):
        folder = (state or {}).get("folder")
        if not folder:
            return [gr.skip()] * (len(self.targets) + 1) + ["Open a folder first."]
        return self._fill(state, folder, True)

    def build(self, form: list[tuple[str, Any]] = ()) -> None:
        """The panel (it floats over the page) and every Browse button's event. ``form``: (label, field) of the
        folders the LoRA tab's form names, offered as places."""
        self.form_labels = [label for label, _ in form]
        with gr.Column(visible=False, elem_id="path-picker", elem_classes=["ls-picker"]) as panel:
            gr.Markdown("**Browse**: click a folder to open it, a file to choose it.")
            with gr.Row(equal_height=True):
                places = gr.Dropdown(choices=[], value=None, label="Place", elem_id="picker-places", scale=4)
                up = gr.Button("Up one folder", size="sm", elem_id="picker-up", scale=1)
            where = gr.Textbox(label="Folder", interactive=False, elem_id="picker-where")
            listing = gr.Dataframe(headers=LIST_HEADERS, value=[], interactive=False, elem_id="picker-list",
                                   max_height=380, wrap=True)
            message = gr.Markdown(elem_id="picker-message")
            with gr.Row():
                use = gr.Button("Use this folder", variant="primary", elem_id="picker-use-folder")
                cancel = gr.Button("Cancel", elem_id="picker-cancel")
        state = gr.State({})
        boxes = [box for box, _, _ in self.targets]
        shown = [state, listing, where, message]
        form_fields = [f for _, f in form]
        for index, (box, _, button) in enumerate(self.targets):
            button.click(partial(self.open, index), [box] + form_fields, [state, panel, places, listing, where, message],
                         show_progress="hidden")
        places.input(self.go, [state, places], shown, show_progress="hidden")
        up.click(self.up, [state], shown, show_progress="hidden")
        listing.select(self.pick, [state], boxes + [panel, state, listing, where, message],
                       show_progress="hidden")
        use.click(self.use_folder, [state], boxes + [panel, message], show_progress="hidden")
        cancel.click(lambda: gr.update(visible=False), [], [panel], show_progress="hidden")
