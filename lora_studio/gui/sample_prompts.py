"""The Samples tab's prompts box, beside the Sample prompts file field: prompts typed in it are written to a file in
the state folder (``<state>/prompts/<output name>.txt``) that the field then names; a file chosen in the field shows
its prompts in the box."""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr

from ..io_utils import atomic_write_bytes
from .form import outside_roots

MAX_BYTES = 256_000  # a prompts file larger than this is not shown in the box


def _read(path: str | None) -> str | None:
    """A prompts file's text (stripped); None when it is not a readable file of a sensible size."""
    file = Path(path or "").expanduser()
    try:
        if not (path or "").strip() or not file.is_file() or file.stat().st_size > MAX_BYTES:
            return None
        return file.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


class SamplePrompts:
    def __init__(self, state_dir: Path, roots: list[Path] | None):
        self.folder = Path(state_dir) / "prompts"
        self.roots = roots

    def path_for(self, output_name: str | None) -> Path:
        name = re.sub(r"[^\w.\- ]+", "_", (output_name or "").strip()).strip(". ") or "sample_prompts"
        return self.folder / f"{name}.txt"

    def _ours(self, path: str) -> bool:
        try:
            return Path(path).expanduser().resolve().parent == self.folder.resolve()
        except OSError:
            return False

    def typed(self, text: str, output_name: str, current: str):
        """Prompts typed in the box: written to the state folder's prompts file, which the field then names. An
        emptied box empties the field when it named that file (no sample images)."""
        if not (text or "").strip():
            return "" if current and self._ours(current) else gr.skip()
        if not outside_roots(current or "", self.roots) and _read(current) == text.strip():  # the file, shown
            return gr.skip()
        target = Path(current) if current and self._ours(current) else self.path_for(output_name)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = [line.rstrip() for line in text.splitlines() if line.strip()]
        atomic_write_bytes(target, ("\n".join(lines) + "\n").encode("utf-8"))
        return str(target) if str(target) != (current or "") else gr.skip()

    def chosen(self, path: str, text: str):
        """A file named in the field: its prompts in the box (while the box writes its own file, it stays as typed)."""
        path = (path or "").strip()
        if not path:
            return gr.skip()
        if self._ours(path) and (text or "").strip():
            return gr.skip()
        if outside_roots(path, self.roots):
            return gr.skip()
        prompts = _read(path)
        return prompts if prompts is not None and prompts != (text or "").strip() else gr.skip()

    def build(self):
        return gr.Textbox(label="Sample prompts (one a line; --n --w --h --d --s --l as in a prompts file)", lines=4,
                          max_lines=20, elem_id="sample-prompts-text",
                          info=f"Typed here, they are saved to {self.folder}/<output name>.txt and the Sample "
                               "prompts file field names it; a file chosen there shows its prompts here.")

    def wire(self, box, field, output_name) -> None:
        # .change, not .input: a paste or a robot's fill counts as typing too; what ``chosen`` shows changes nothing
        box.change(self.typed, [box, output_name, field], [field], trigger_mode="always_last", show_progress="hidden")
        field.change(self.chosen, [field, box], [box], show_progress="hidden")
