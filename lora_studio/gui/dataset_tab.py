"""The Dataset tab: tagging and captioning as queued jobs, the caption editor, and the dataset health report.

Tagging (WD14) and captioning (BLIP) run in the engine process (``lora-studio caption ...``) like the LoRA tools;
the caption editor and the health report work on files only and run in the page's process (no torch).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ..dataset_tools import caption_edit as ce
from ..data.sources import parse_resolution
from ..errors import UserError
from ..jobs.runs import RunManager
from .browse import browse_button
from .carry import FORM_KEYS, form_settings, has_images, is_empty, kohya_subfolders
from .form import outside_roots
from .tools_tab import Field, Tool, ToolsTab

PER_PAGE = 24
_COMMON = (Field("caption_extension", "Caption extension", "text", ".txt"),
           Field("mode", "Existing captions", "choice", "skip", choices=("skip", "append", "overwrite"),
                 info="skip: keep them; append: add what is new; overwrite: replace them"),
           Field("dry_run", "Dry run (show what would change, write nothing)", "check", False, False),
           Field("recursive", "Include subfolders", "check", False, False),
           Field("batch_size", "Batch size", "int", 1))
CAPTION_TOOLS = (
    Tool("wd14", "wd14", "WD14 tags", "Danbooru-style tags from a WD14 tagger (SmilingWolf's ONNX models). Order: "
         "trigger word, always-first tags, rating, character tags (when first), then the rest by confidence.",
         (Field("folder", "Image folder", "folder", positional=True),
          Field("trigger", "Trigger word (written first)", "text", "", False),
          Field("repo_id", "Model (Hugging Face repo)", "text", "SmilingWolf/wd-v1-4-convnext-tagger-v2"),
          Field("model_dir", "Model folder (instead of the download)", "folder", "", False,
                info="a folder with model.onnx and selected_tags.csv"),
          Field("general_threshold", "General tag threshold", "float", 0.35),
          Field("character_threshold", "Character tag threshold", "float", 0.85),
          Field("undesired_tags", "Tags to leave out (comma separated)", "text", "", False),
          Field("always_first_tags", "Tags to put first (comma separated)", "text", "", False),
          Field("character_tags_first", "Character tags first", "check", False, False),
          Field("use_rating_tags", "Rating tag first", "check", False, False),
          Field("keep_underscore", "Keep underscores (default: spaces)", "check", False, False),
          Field("no_escape_brackets", "Do not escape brackets (default: \\( \\) as A1111 reads them)", "check",
                False, False), *_COMMON), group="caption"),
    Tool("blip", "blip", "BLIP captions", "A sentence for each image from BLIP, with an optional prefix (e.g. your "
         "trigger word) and suffix.",
         (Field("folder", "Image folder", "folder", positional=True),
          Field("prefix", "Prefix", "text", "", False), Field("suffix", "Suffix", "text", "", False),
          Field("repo_id", "Model (Hugging Face repo)", "text", "Salesforce/blip-image-captioning-large"),
          Field("model_dir", "Model folder (instead of the download)", "folder", "", False),
          Field("max_length", "Max length (tokens)", "int", 75), Field("min_length", "Min length (tokens)", "int", 5),
          Field("num_beams", "Beams", "int", 1), *_COMMON), group="caption"),
)
def dataset_markdown(report: dict) -> str:
    """A health report for the page: the verdict, the advice, then the whole report as text."""
    icon = {"ready": "✓", "ready, with advice": "⚠", "not ready": "✗"}.get(report["verdict"], "")
    lines = [f"### Dataset: {icon} {report['verdict']} ({report['problems']} problem(s), {report['warnings']} "
             f"warning(s); {report['steps_per_epoch']} steps per epoch)"]
    lines += [f"- {advice}" for advice in report["advice"][:12]]
    return "\n".join(lines) + "\n\n```text\n" + report["text"] + "\n```"


CAPTION_INTRO = ("Tag or caption a folder of images. Each runs as a job in the queue (after the job before it); the "
                 "models download on first use (or give a folder that holds them). Check the result in the "
                 "**Caption editor**.")


def _training_subfolders(root: Path) -> list[Path]:
    """The ``N_name`` subfolders of a Kohya training folder that holds no image itself (else none)."""
    return [] if has_images(root) else kohya_subfolders(root)


def _no_images_hint(root: Path) -> str:
    """Why a folder shows no image: its images may lie in subfolders."""
    try:
        subfolders = sorted(c.name for c in root.iterdir() if c.is_dir() and not c.name.startswith("."))
    except OSError:
        return ""
    if not subfolders:
        return ""
    shown = ", ".join(subfolders[:8]) + (", …" if len(subfolders) > 8 else "")
    return f". This folder holds no image itself, only subfolders: pick one ({shown})."


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = parse_resolution(str(text or "").strip() or "512")
    except ValueError:
        raise UserError(f"Resolution: give a number or width,height, e.g. 512 or 512,768 (got {text!r})") from None
    if min(width, height) < 64:
        raise UserError(f"Resolution: at least 64, got {text}")
    return width, height


class DatasetTab:
    def __init__(self, manager: RunManager, roots: list[Path] | None):
        self.manager = manager
        self.roots = roots

    # ------------------------------------------------------------ caption editor
    def _checked(self, folder: str) -> Path:
        folder = (folder or "").strip()
        if not folder:
            raise UserError("Give the image folder.")
        outside = outside_roots(folder, self.roots)
        if outside:
            raise UserError(outside)
        return Path(folder).expanduser()

    def show(self, folder: str, extension: str, number: float, search: str):
        """The page's images with their captions, the tag table and where we are. A Kohya training folder (its
        images in ``N_name`` subfolders) shows all its subfolders' images, each labelled with its subfolder."""
        try:
            root = self._checked(folder)
            subfolders = _training_subfolders(root)
            items = ce.images_with_captions(root, extension or ".txt", recursive=bool(subfolders))
        except UserError as exc:
            return [], [], pd.DataFrame(columns=["tag", "images"]), f"✗ {exc}", 1
        pages = max(1, -(-len(items) // PER_PAGE))
        number = min(max(1, int(number or 1)), pages)
        shown = ce.page(items, number, PER_PAGE)
        gallery = [(str(i.image), (f"{i.image.parent.name}: " if subfolders else "")
                    + (i.caption if i.caption is not None else "(no caption)")) for i in shown]
        table = pd.DataFrame(ce.tag_frequency(items, search or ""), columns=["tag", "images"])
        missing = sum(i.caption is None for i in items)
        counts = {f.name: sum(i.image.parent == f for i in items) for f in subfolders}
        text = (f"{len(items)} image(s)"
                + (f" in {len(subfolders)} subfolder(s) ({', '.join(f'{k}: {n}' for k, n in counts.items())}); "
                   "changes to all captions apply to every subfolder" if subfolders else "")
                + f", page {number} of {pages}" + (f"; {missing} without a caption" if missing else ""))
        if not items:
            text += _no_images_hint(root)
        return gallery, [str(i.image) for i in shown], table, text, number

    @staticmethod
    def pick(paths: list[str], extension: str, evt: gr.SelectData):
        """The clicked image and its caption."""
        path = paths[evt.index] if paths and 0 <= evt.index < len(paths) else ""
        caption_file = Path(path).with_suffix(extension or ".txt") if path else None
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file and caption_file.is_file() else ""
        return path, caption

    def save_caption(self, folder: str, extension: str, image: str, text: str):
        try:
            if not image:
                raise UserError("Click an image first.")
            written = ce.edit_caption(self._checked(folder), image, text, extension or ".txt")
            return f"Saved {written.name} (Undo puts the old caption back)."
        except UserError as exc:
            return f"✗ {exc}"

    def bulk(self, folder: str, extension: str, operation: str, tag: str, new_tag: str, at_front: bool):
        try:
            root = self._checked(folder)
            changed = ce.bulk_edit(root, operation, tag or "", new_tag or "", at_front, extension or ".txt",
                                   recursive=bool(_training_subfolders(root)))
            return f"Changed {len(changed)} caption(s)." + (" Undo puts them back." if changed else "")
        except UserError as exc:
            return f"✗ {exc}"

    def undo(self, folder: str):
        try:
            return ce.undo_last(self._checked(folder))
        except UserError as exc:
            return f"✗ {exc}"

    # ------------------------------------------------------------ layout
    def build(self) -> dict:
        """The tab; ``opened`` (with the LoRA tab's ``FORM_KEYS`` values first, then ``carried``) fills its empty
        folders and the health report's settings from the form."""
        with gr.Tabs(elem_id="dataset-tabs"):
            with gr.Tab("Tag & caption", id="dataset-caption"):
                self.caption_tools = ToolsTab(self.manager, self.roots, CAPTION_TOOLS, prefix="caption",
                                              intro=CAPTION_INTRO)
                captions = self.caption_tools.build()
            with gr.Tab("Caption editor", id="dataset-editor"):
                editor = self._editor()
            with gr.Tab("Health report", id="dataset-health"):
                health = self._health()
        return dict(editor=editor, health=health, opened=self.opened,
                    carried=[editor["folder"], editor["extension"], *health["carried"], *captions["carried"]])

    def opened(self, *values):
        """The tab opened: an empty caption editor and health report folder take the LoRA tab's image folder, the
        health report takes the form's resolution, caption extension, token length, buckets and batch size (while
        it checks the form's folder), and the tagging tools' empty fields what the Tools tab's take."""
        form = form_settings(values[:len(FORM_KEYS)])
        editor_folder, _, health_folder, *rest = values[len(FORM_KEYS):]
        caption_values = rest[4:]  # after the resolution, extension, token length and form settings
        train_dir = form["train_data_dir"] or ""
        extension = form["caption_extension"] or ".txt"
        editor = [train_dir, extension] if is_empty(editor_folder) and train_dir else [gr.skip(), gr.skip()]
        if is_empty(health_folder) or health_folder.strip() == train_dir:
            health = [train_dir or gr.skip(), form["resolution"], extension, form["max_token_length"]]
        else:
            health = [gr.skip()] * 4
        tools = self.caption_tools.opened(form["pretrained_model_name_or_path"], train_dir, *caption_values)
        return [*editor, *health, form, *tools]

    def health(self, folder: str, resolution: str, trigger: str, extension: str, token_length: int,
               form: dict | None = None):
        """The health report of a folder (files only, in this process), with the LoRA tab's buckets and batch size
        (``form``, from ``carry.form_settings``; none: buckets on, as ``lora-studio dataset check DIR``)."""
        from ..dataset_tools.health import CheckOptions, FolderSettings, check_datasets, datasets_from_folder

        try:
            path = self._checked(folder)
            if not path.is_dir():
                raise UserError(f"Folder not found: {folder}")
            form = form or {}
            buckets = {k: form[k] for k in ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                                            "bucket_no_upscale") if form.get(k) is not None}
            settings = FolderSettings(resolution=_resolution(resolution),
                                      caption_extension=(extension or ".txt").strip(),
                                      batch_size=int(form.get("train_batch_size") or 1), **buckets)
            options = CheckOptions(trigger=(trigger or "").strip() or None, max_token_length=int(token_length),
                                   show_progress=False)
            datasets, early = datasets_from_folder(path, settings)
            return dataset_markdown(check_datasets(datasets, options, path, source=str(path), early_issues=early))
        except UserError as exc:
            return f"✗ {exc}"

    def _health(self) -> dict:
        gr.Markdown("Is the dataset ready? Images, repeats and steps per folder, buckets, small or heavily cropped "
                    "images, near-duplicates, captions (missing, empty, too long, without the trigger word), tags "
                    "and file problems, with a verdict. The folder, resolution, caption extension and token length "
                    "start from the LoRA tab; buckets and batch size are the LoRA tab's. The LoRA tab's **Check "
                    "dataset** checks its own folders.")
        with gr.Row(equal_height=True):
            folder = gr.Textbox(label="Training folder (with N_name subfolders) or a folder of images", scale=3,
                                elem_id="health-folder")
            browse_button(folder, "folder")
            resolution = gr.Textbox("512", label="Resolution", placeholder="512 or width,height",
                                    elem_id="health-resolution")
            trigger = gr.Textbox(label="Trigger word (default: from the folder names)", elem_id="health-trigger")
        with gr.Row():
            extension = gr.Textbox(".txt", label="Caption extension", elem_id="health-extension")
            tokens = gr.Dropdown(choices=[75, 150, 225], value=75, label="Max token length", elem_id="health-tokens")
            button = gr.Button("Check", variant="primary", elem_id="health-check")
        report = gr.Markdown(elem_id="health-report", elem_classes=["ls-mono"])
        form = gr.State({})
        button.click(self.health, [folder, resolution, trigger, extension, tokens, form], [report])
        return dict(folder=folder, report=report, carried=[folder, resolution, extension, tokens, form])

    def _editor(self) -> dict:
        gr.Markdown("Check and fix captions. Every change is written safely and can be undone (the old captions are "
                    "kept in the folder's `.caption_backups`).")
        with gr.Row():
            folder = gr.Textbox(label="Image folder (or a training folder: all its N_name subfolders)",
                                placeholder="/path/to/img/10_emi person", scale=3, elem_id="editor-folder")
            browse_button(folder, "folder")
            extension = gr.Textbox(".txt", label="Caption extension", elem_id="editor-extension")
            load = gr.Button("Load", elem_id="editor-load")
        with gr.Row():
            number = gr.Number(1, label="Page", precision=0, minimum=1, elem_id="editor-page")
            prev_btn = gr.Button("◀ Previous", elem_id="editor-prev")
            next_btn = gr.Button("Next ▶", elem_id="editor-next")
            where = gr.Markdown(elem_id="editor-where")
        paths = gr.State([])
        gallery = gr.Gallery(label="Images (click one to edit its caption)", columns=6, height=420,
                             elem_id="editor-gallery", interactive=False, allow_preview=False)
        with gr.Row():
            image = gr.Textbox(label="Image", interactive=False, elem_id="editor-image", scale=2)
            caption = gr.Textbox(label="Caption", lines=2, elem_id="editor-caption", scale=4)
            save = gr.Button("Save caption", elem_id="editor-save")
        gr.Markdown("**All captions of the folder**")
        with gr.Row():
            operation = gr.Dropdown(choices=[("add a tag", "add"), ("remove a tag", "remove"),
                                             ("replace a tag", "replace"), ("move a tag to the front", "front")],
                                    value="add", label="Change", elem_id="editor-operation")
            tag = gr.Textbox(label="Tag", elem_id="editor-tag")
            new_tag = gr.Textbox(label="Replace with", elem_id="editor-new-tag")
            at_front = gr.Checkbox(True, label="Add at the front", elem_id="editor-at-front")
            apply = gr.Button("Apply to all", variant="primary", elem_id="editor-apply")
            undo = gr.Button("Undo last change", elem_id="editor-undo")
        status = gr.Markdown(elem_id="editor-status")
        search = gr.Textbox(label="Search tags", elem_id="editor-search")
        table = gr.Dataframe(headers=["tag", "images"], value=[], interactive=False, elem_id="editor-tags",
                             max_height=360)
        view_in = [folder, extension, number, search]
        view_out = [gallery, paths, table, where, number]
        load.click(self.show, view_in, view_out)
        search.change(self.show, view_in, view_out)
        number.submit(self.show, view_in, view_out)
        prev_btn.click(lambda f, e, n, s: self.show(f, e, (n or 1) - 1, s), view_in, view_out)
        next_btn.click(lambda f, e, n, s: self.show(f, e, (n or 1) + 1, s), view_in, view_out)
        gallery.select(self.pick, [paths, extension], [image, caption])
        save.click(self.save_caption, [folder, extension, image, caption], [status]).then(
            self.show, view_in, view_out)
        apply.click(self.bulk, [folder, extension, operation, tag, new_tag, at_front], [status]).then(
            self.show, view_in, view_out)
        undo.click(self.undo, [folder], [status]).then(self.show, view_in, view_out)
        return dict(folder=folder, extension=extension, gallery=gallery, caption=caption, status=status,
                    table=table)
