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
"""


def _help_script() -> str:
    """Help text on hover: each setting's block gets its schema help as a tooltip (title attribute)."""
    helps = {f"setting-{s.name}": s.help for s in SETTINGS}
    return ("<script>(function(){const H=" + json.dumps(helps) + ";"
            "function apply(){for(const id in H){const el=document.getElementById(id);"
            "if(el&&el.title!==H[id]){el.title=H[id];}}}"
            "new MutationObserver(apply).observe(document.documentElement,{childList:true,subtree:true});"
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

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="LoRA Studio") as page:
            gr.Markdown("# LoRA Studio\nTrain LoRA adapters for Stable Diffusion on your own images.")
            with gr.Tabs(selected="lora", elem_id="main-tabs") as main_tabs:
                with gr.Tab("LoRA", id="lora"):
                    lora = self.lora.build()
                with gr.Tab("Runs", id="runs"):
                    runs = self.runs.build()
                with gr.Tab("Test", id="test", elem_id="test") as test_tab:
                    test = self.test.build()
                with gr.Tab("Dataset", id="dataset-tools", elem_id="dataset-tools"):
                    DatasetTab(self.manager, self.roots).build()
                with gr.Tab("Tools", id="tools", elem_id="tools"):
                    ToolsTab(self.manager, self.roots).build()
            lora["start"].click(self.lora.start, lora["inputs"], lora["inputs"] + [lora["check_md"], main_tabs])
            for button in (lora["stop"], runs["stop"]):
                button.click(self.runs.stop, [], [runs["stop_message"]])
            runs["test_btn"].click(self.test.test_this_file, [runs["file"], runs["choice"]] + test["inputs"],
                                   test["inputs"] + [main_tabs, runs["stop_message"]])
            test_tab.select(self.test.test_tab_opened, [lora["fields"]["pretrained_model_name_or_path"],
                                                        test["model"]], [test["model"], test["add"]])
            page.load(self.test.test_defaults, [], test["inputs"] + [test["job"], test["add"]])
            page.load(self.lora.restore_form, [], lora["restore"], show_progress="hidden")  # the form as last edited
            # the live view: one tick updates the Runs tab, the LoRA tab's progress and Stop, and the Test tab
            seen = gr.State({})
            timer = gr.Timer(1.0)
            tick_outputs = [runs["progress"], lora["mini_progress"], runs["status"], runs["plot"], runs["gallery"],
                            runs["saved"], runs["log"], runs["queue"], runs["history"], lora["stop"], runs["stop"],
                            runs["pause"], runs["choice"], runs["file"], runs["compare"], runs["grid"],
                            test["status"], test["progress"], test["gallery"], test["grids"], seen]
            tick_inputs = [seen, runs["choice"], test["job"]]
            timer.tick(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            page.load(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            runs["choice"].input(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            test["job"].change(self.runs.refresh, tick_inputs, tick_outputs, show_progress="hidden")
        return page


def serve(host: str, port: int, open_browser: bool, state_dir: Path, auth: tuple[str, str] | None,
          allowed_roots: list[Path] | None = None) -> None:
    page = Workbench(state_dir, allowed_roots=allowed_roots).build()
    page.queue(default_concurrency_limit=4)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=open_browser, auth=auth,
                max_file_size="20mb", strict_cors=True, ssr_mode=False, mcp_server=False, show_error=True,
                css=CSS, head=_help_script(), footer_links=[])
