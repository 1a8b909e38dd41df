"""How the LoRA tab lays its settings out: Parameters > Advanced in sections (``schema.ADVANCED_SECTIONS``) with a
filter box, a "Full help" expander under each group of fields (the whole help on screen, for touch), and the LoRA
type field (Kohya_ss's names, ``config.lora_types``) kept in step with Network module and Network args.

The filter runs in the browser (a small function on the box's input event): it hides the fields, rows and sections
that do not match with a style sheet of its own, which Gradio's updates never touch, and opens a closed section that
holds a match (and closes it again when the box is cleared).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import gradio as gr

from ..config.lora_types import apply_lora_type, describe_lora_type, lora_type_of
from ..config.schema import BY_NAME
from ..config.values import parse_value
from ..errors import ConfigError
from .widgets import TAB_LABELS, WidgetSpec, advanced_sections, by_family, from_widget, search_text, to_widget

_WIDE = ("path on this computer", "key=value key=value")  # placeholders of fields whose values are long


def section_id(title: str) -> str:
    return "section-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def full_help(specs: list[WidgetSpec]) -> str:
    """Markdown: each field's label, its name in a config file and its whole help."""
    return "\n".join(f"- **{spec.kwargs['label']}** (`{spec.name}`): {spec.help}" for spec in specs)


def place_help(specs: list[WidgetSpec]) -> None:
    if specs:
        with gr.Accordion("Full help of these settings", open=False, elem_classes=["ls-help"]):
            gr.Markdown(full_help(specs))


def _rows(specs: list[WidgetSpec], fields: dict, make: Callable[[WidgetSpec], Any], row_id: str) -> list[list[str]]:
    """Fields in the given order, three a row; one with a long value (a path, key=value arguments) gets a row of its
    own, and a row holds fields of one model-family group (``by_family``: the rows of another family's fields hide
    whole). Returns the names in each row (the filter hides a row with no match)."""
    rows = []
    for run in by_family(specs):
        row = []
        for spec in run:
            if spec.kwargs.get("placeholder") in _WIDE:
                rows += [row, [spec]] if row else [[spec]]
                row = []
                continue
            row.append(spec)
            if len(row) == 3:
                rows.append(row)
                row = []
        rows += [row] if row else []
    for i, group in enumerate(rows):
        with gr.Row(equal_height=True, elem_id=f"{row_id}-{i}"):
            for spec in group:
                fields[spec.name] = make(spec)
    return [[spec.name for spec in group] for group in rows]


def filter_js(sections: dict[str, dict[str, list[str]]], elsewhere: dict[str, str]) -> str:
    """The filter box's function. ``sections``: section id -> row id -> the names in that row; ``elsewhere``: the
    other tabs' fields, name -> where they are (named in the note, not filtered)."""
    text = {name: search_text(BY_NAME[name]) for rows in sections.values() for names in rows.values()
            for name in names}
    other = {name: [where, BY_NAME[name].label, search_text(BY_NAME[name])] for name, where in elsewhere.items()}
    return """(query) => {
  const S = %s, T = %s, O = %s;
  const words = (query || '').toLowerCase().split(/\\s+/).filter(w => w);
  const hit = (text) => words.every(w => text.includes(w));
  const hidden = [];
  let count = 0;
  window.lsFilterOpened = window.lsFilterOpened || new Set();
  for (const [sec, rows] of Object.entries(S)) {
    let found = 0;
    for (const [row, names] of Object.entries(rows)) {
      const shown = names.filter(n => hit(T[n]));
      names.filter(n => !shown.includes(n)).forEach(n => hidden.push('#setting-' + n));
      if (!shown.length) hidden.push('#' + row);
      found += shown.length;
    }
    count += found;
    const header = document.querySelector('#' + sec + ' button.label-wrap');
    if (!found) hidden.push('#' + sec);
    if (words.length && found && header && !header.classList.contains('open')) {
      header.click(); window.lsFilterOpened.add(sec);
    }
    if (!words.length && window.lsFilterOpened.has(sec)) {
      if (header && header.classList.contains('open')) header.click();
      window.lsFilterOpened.delete(sec);
    }
  }
  let style = document.getElementById('ls-filter-style');
  if (!style) {
    style = document.createElement('style'); style.id = 'ls-filter-style'; document.head.appendChild(style);
  }
  style.textContent = words.length && hidden.length ? hidden.join(',') + '{display:none !important}' : '';
  const also = words.length ? Object.values(O).filter(o => hit(o[2])).map(o => o[1] + ' (' + o[0] + ')') : [];
  const note = document.getElementById('ls-filter-note');
  if (note) {
    note.textContent = !words.length ? '' : (count ? count + ' setting(s) here match.' :
      'No Advanced setting matches "' + query.trim() + '".') + (also.length ? ' Also: ' + also.join(', ') + '.' : '');
  }
  return [];
}""" % (json.dumps(sections), json.dumps(text), json.dumps(other))


def build_advanced(specs: list[WidgetSpec], fields: dict, make: Callable[[WidgetSpec], Any]) -> dict[str, Any]:
    """Parameters > Advanced: the filter box, then one folded section per group of ``schema.ADVANCED_SECTIONS`` (a
    page of headings; the filter and a field Check settings marks open the sections they need). Returns the
    sections by title (a section whose every field is another family's hides with them)."""
    query = gr.Textbox(label="Filter settings", placeholder="e.g. gradient checkpointing, caption, noise offset",
                       info="Shows only the settings whose label, name or help holds every word; clear it to see "
                            "them all.", elem_id="advanced-filter")
    gr.HTML('<p id="ls-filter-note" aria-live="polite"></p>', elem_id="advanced-filter-note", padding=False)
    layout: dict[str, dict[str, list[str]]] = {}
    sections = {}
    for title, group in advanced_sections(specs):
        sid = section_id(title)
        with gr.Accordion(title, open=False, elem_id=sid, elem_classes=["ls-section"]) as sections[title]:
            rows = _rows(group, fields, make, f"{sid}-row")
            place_help(group)
        layout[sid] = {f"{sid}-row-{i}": names for i, names in enumerate(rows)}
    elsewhere = {spec.name: _where(spec.tab) for spec in specs if spec.tab != "advanced" and spec.name in BY_NAME}
    query.change(None, [query], None, js=filter_js(layout, elsewhere))  # typing, pasting, clearing
    return sections


def _where(tab: str) -> str:
    return f"Parameters > {TAB_LABELS[tab]}" if tab in ("basic", "samples") else TAB_LABELS[tab]


# ---------------------------------------------------------------- the LoRA type field
def _network_args(text: str | None) -> list[str]:
    setting = BY_NAME["network_args"]
    try:
        return parse_value(setting, from_widget(setting, text)) or []
    except ConfigError:  # not parsed yet (the form says so at Check): its words as they are
        return (text or "").split()


def choose_lora_type(name: str, args_text: str, network_dim, network_alpha):
    """The user picked a LoRA type: Network module and Network args as it needs them."""
    if not name:
        return gr.skip(), gr.skip(), gr.skip()
    module, args = apply_lora_type(name, _network_args(args_text), network_dim, network_alpha)
    return module, to_widget(BY_NAME["network_args"], args), gr.update(info=describe_lora_type(name))


def show_lora_type(module: str, args_text: str):
    """Network module or Network args changed (a loaded config, a preset, typing): the LoRA type they make."""
    name = lora_type_of(module, _network_args(args_text))
    return gr.update(value=name, info=describe_lora_type(name))


def wire_lora_type(lora_type, fields: dict) -> None:
    module, args = fields["network_module"], fields["network_args"]
    lora_type.input(choose_lora_type, [lora_type, args, fields["network_dim"], fields["network_alpha"]],
                    [module, args, lora_type], show_progress="hidden")
    for source in (module, args):
        source.change(show_lora_type, [module, args], [lora_type], show_progress="hidden")
