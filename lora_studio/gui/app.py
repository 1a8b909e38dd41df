"""The LoRA Studio page: LoRA tab (Configuration, Model, Folders, Parameters, Dataset preparation), Runs, Test,
Dataset (tagging, captions, health report) and Tools.

Each tab is a room of its own (``lora_tab``, ``runs_tab``, ``tester_tab``, ``dataset_tab``, ``tools_tab``) that builds
its layout and wires its own events; the job queue they share is the job service (``lora_studio.jobs``). This module
builds the page and wires what crosses between the tabs: Start training shows the Runs tab, Test this file fills the
Test tab, both Stop buttons, and the one live view (``RunsTab.refresh``) that updates every tab's live outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from ..config.schema import SETTINGS
from ..jobs.runs import RunManager
from .browse import PathPicker
from .carry import FORM_KEYS, FORM_PLACES
from .dataset_tab import DatasetTab
from .lora_tab import LoraTab
from .runs_tab import RunsTab
from .tester_tab import TestTab
from .tools_tab import ToolsTab

CSS = """
.ls-invalid { outline: 2px solid #d33 !important; border-radius: 8px; }
.ls-invalid .info, .ls-invalid [data-testid='block-info'] + div, .ls-invalid span { color: #c22 !important; }
.ls-progress { padding: 8px 4px; }
.ls-bar { height: 18px; background: #e4e4e7; border-radius: 9px; overflow: hidden; margin: 6px 0; }
.ls-fill { height: 100%; background: linear-gradient(90deg, #6366f1, #22c55e); transition: width .5s; }
.ls-failed .ls-fill { background: #dc2626; }
.ls-mono textarea, .ls-mono .prose, .ls-mono .prose p, .ls-mono .prose li, .ls-mono pre, .ls-mono code {
  font-family: 'DejaVu Sans Mono', ui-monospace, Menlo, Consolas, monospace !important; }
.ls-mono .prose p, .ls-mono .prose li { white-space: pre-wrap; }
.ls-picker { position: fixed !important; z-index: 1000; top: 8vh; left: 50%; transform: translateX(-50%);
  width: min(760px, 94vw); max-height: 84vh; overflow: auto; padding: 14px !important;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary); border-radius: 10px;
  box-shadow: 0 12px 40px rgba(0, 0, 0, .35); }
.ls-browse { align-self: end; }
"""


def _help_script() -> str:
    """Help text on hover: each setting's block gets its schema help as a tooltip (title attribute); a folded
    Advanced section that holds a field Check settings marked (``ls-invalid``) opens, so no problem stays hidden."""
    helps = {f"setting-{s.name}": s.help for s in SETTINGS}
    return ("<script>(function(){const H=" + json.dumps(helps) + ";"
            "function apply(){for(const id in H){const el=document.getElementById(id);"
            "if(el&&el.title!==H[id]){el.title=H[id];}}"
            "document.querySelectorAll('.ls-section').forEach(sec=>{"
            "const h=sec.querySelector(':scope > button.label-wrap');"
            "if(h&&!h.classList.contains('open')&&sec.querySelector('.ls-invalid')){h.click();}});}"
            "new MutationObserver(apply).observe(document.documentElement,{childList:true,subtree:true,"
            "attributes:true,attributeFilter:['class']});"
            "document.addEventListener('DOMContentLoaded',apply);})();</script>")


class Workbench:
    def __init__(self, state_dir: Path, manager: RunManager | None = None, allowed_roots: list[Path] | None = None):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # With allowed_roots, every path typed in the page must lie inside one of them or the state folder (resolved,
        # links followed); None: any path this user can reach (the GUI on this computer only).
        self.roots = None if allowed_roots is None else \
            [Path(r).expanduser().resolve() for r in allowed_roots] + [self.state_dir]
        self.manager = manager or RunManager(self.state_dir, allowed_dirs=self.roots)
        self.lora = LoraTab(self.state_dir, self.manager, self.roots)
        self.test = TestTab(self.state_dir, self.manager, self.roots)
        self.runs = RunsTab(self.manager, self.test.parts)
        self.picker = PathPicker(self.roots, self._latest_output)

    def _latest_output(self) -> list[tuple[str, str]]:
        """The latest training run's output folder, a place for the picker."""
        rec = self.manager.latest("train")
        return [(f"Latest run's output ({rec.output_name})", rec.output_dir)] if rec else []

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="LoRA Studio") as page:
            gr.Markdown("# LoRA Studio\nTrain LoRA adapters for Stable Diffusion, Flux, SD3, Anima and Lumina 2 on your "
                        "own images.")
            with gr.Tabs(selected="lora", elem_id="main-tabs") as main_tabs, self.picker.collecting():
                with gr.Tab("LoRA", id="lora"):
                    lora = self.lora.build()
                with gr.Tab("Runs", id="runs"):
                    runs = self.runs.build()
                with gr.Tab("Test", id="test", elem_id="test") as test_tab:
                    test = self.test.build()
                with gr.Tab("Dataset", id="dataset-tools", elem_id="dataset-tools") as dataset_tab:
                    dataset = DatasetTab(self.manager, self.roots).build()
                with gr.Tab("Tools", id="tools", elem_id="tools") as tools_tab:
                    tools = ToolsTab(self.manager, self.roots).build()
            # the path fields' Browse picker, and what the Dataset and Tools tabs take from the form when opened
            self.picker.build([(label, lora["fields"][name]) for label, name in FORM_PLACES])
            form = [lora["fields"][name] for name in FORM_KEYS]
            dataset_tab.select(dataset["opened"], form + dataset["carried"], dataset["carried"],
                               show_progress="hidden")
            tools_tab.select(tools["opened"], [form[0], form[1]] + tools["carried"], tools["carried"],
                             show_progress="hidden")
            started = lora["start"].click(self.lora.start, lora["inputs"],
                                          lora["inputs"] + [lora["check_md"], main_tabs])
            actions = [started] + runs["actions"] + [button.click(self.runs.stop, [], [runs["stop_message"]])
                                                     for button in (lora["stop"], runs["stop"])]
            runs["test_btn"].click(self.test.test_this_file, [runs["file"], runs["choice"]] + test["inputs"],
                                   test["inputs"] + [main_tabs, runs["stop_message"]])
            test_tab.select(self.test.test_tab_opened, [lora["fields"]["pretrained_model_name_or_path"],
                                                        test["model"]], [test["model"], test["add"]])
            page.load(self.test.test_defaults, [], test["inputs"] + [test["job"], test["add"]])
            page.load(self.lora.restore_form, [], lora["restore"], show_progress="hidden")  # the form as last edited
            # the live view: one tick updates the Runs tab, the LoRA tab's progress and Stop, and the Test tab
            seen = gr.State({})
            timer = gr.Timer(1.0)  # each tick sets the next one's interval: every second while a job runs, else 5 s
            tick_outputs = [runs["progress"], lora["mini_progress"], runs["status"], runs["plot"], runs["gallery"],
                            runs["saved"], runs["log"], runs["queue"], runs["history"], lora["stop"], runs["stop"],
                            runs["pause"], runs["resume"], runs["remove"], timer, runs["choice"], runs["file"],
                            runs["compare"], runs["grid"],
                            test["status"], test["progress"], test["gallery"], test["grids"], seen]
            tick_inputs = [seen, runs["choice"], test["job"]]
            timer.tick(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            page.load(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            runs["choice"].input(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            test["job"].change(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            for event in actions:  # Start, Stop, Pause, Resume, Remove: the view follows at once
                event.then(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
        return page


def _calm_queue(page: gr.Blocks) -> None:
    """Gradio's event queue looks for work every millisecond while it has none (every 50 ms on Windows), and for
    progress to send every 10 ms: a few percent of a core for an idle GUI. Every 20 ms and 100 ms cost next to
    nothing and are not felt (a tick, a click, waits at most 20 ms to start)."""
    queue = getattr(page, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = max(queue.sleep_when_free, 0.02)
        queue.progress_update_sleep_when_free = max(getattr(queue, "progress_update_sleep_when_free", 0), 0.1)


def serve(host: str, port: int, open_browser: bool, state_dir: Path, auth: tuple[str, str] | None,
          allowed_roots: list[Path] | None = None) -> None:
    page = Workbench(state_dir, allowed_roots=allowed_roots).build()
    page.queue(default_concurrency_limit=4)
    _calm_queue(page)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=open_browser, auth=auth,
                max_file_size="20mb", strict_cors=True, ssr_mode=False, mcp_server=False, show_error=True,
                css=CSS, head=_help_script(), footer_links=[])
