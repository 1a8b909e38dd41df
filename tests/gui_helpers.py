"""Start the real GUI (``lora-studio gui``) on a free loopback port and drive it with Playwright + Debian chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("LORA_STUDIO_TEST_OUTPUT", REPO / "test-output"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("chromium is needed for the browser tests: apt-get install -y chromium (test.sh does this)")
    return path


@contextmanager
def running_gui(cli: str, state_dir: Path, log_path: Path, allow: list[Path] = (), env: dict | None = None):
    """``env``: more environment variables for the GUI (and the jobs it starts)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        argv = [cli, "gui", "--no-browser", "--port", str(port), "--state-dir", str(state_dir)]
        for folder in allow:
            argv += ["--allow-dir", str(folder)]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the GUI did not start:\n" + log_path.read_text(errors="replace")[-3000:])
                time.sleep(0.3)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def field(page, name: str):
    """The input element of a schema setting's widget."""
    return page.locator(f"#setting-{name}").locator("input:not([type=checkbox]), textarea").first


def set_field(page, name: str, value) -> None:
    box = field(page, name)
    box.fill(str(value))
    box.press("Tab")


def open_tab(page, *names: str) -> None:
    """Click tabs in order. A tab's fields mount on its first showing and take their loaded values a moment later;
    a robot typing within that moment would be overwritten (a person never is), so let the tab settle."""
    for name in names:
        page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(300)
    if names and names[-1] == "Advanced":  # its sections start folded: unfold them all, as a user looking would
        folded = page.locator(".ls-section > button.label-wrap:not(.open)")
        for _ in range(folded.count()):
            folded.first.click()
        page.wait_for_timeout(200)


def tick(workbench, choice: str = "latest", job: dict | None = None) -> dict:
    """One tick of a page's live view (``RunsTab.refresh`` from a fresh page), by output name."""
    from lora_studio.gui.runs_tab import TICK_KEYS

    *values, _seen = workbench.runs.refresh({}, choice, job or {})
    return dict(zip(TICK_KEYS, values))


def finished_copy_of(trained_run: dict, root: Path, prompts: str | None = None) -> tuple[Path, Path]:
    """The trained run's outputs in ``root/out`` (its grid is made there), with ``prompts`` as its sample prompts
    when given, and the run record a GUI with the state folder ``root/state`` wrote while it trained: the GUI was
    away when it ended, and finds it completed. Returns the output folder and the run's config."""
    import json

    from lora_studio.config import load_config, save_config

    out = root / "out"
    shutil.copytree(trained_run["out"], out, ignore=shutil.ignore_patterns("compare", "sample"))
    cfg = load_config(trained_run["config"]).replace(output_dir=str(out))
    if prompts is not None:
        (root / "prompts.txt").write_text(prompts, encoding="utf-8")
        cfg = cfg.replace(sample_prompts=str(root / "prompts.txt"))
    folder = root / "state" / "runs" / "20250101-000000-abcdef"
    folder.mkdir(parents=True)
    config = save_config(cfg, folder / "config.toml")
    record = {"id": folder.name, "output_name": cfg.output_name, "output_dir": str(out), "config": str(config),
              "status": "running", "started": time.time() - 60, "pid": None,
              "events": str(out / "test_lora_events.jsonl"), "log": str(folder / "engine.log"),
              "output": str(out / "test_lora.safetensors")}
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    return out, config


def contains(text: str):
    """A pattern for ``expect(...).to_have_value`` / ``to_have_css``: the value holds ``text``."""
    import re

    return re.compile(".*" + re.escape(text) + ".*", re.S)


@contextmanager
def gui_page(cli: str, root: Path, viewport: tuple[int, int] = (1400, 1000)):
    """One GUI (confined to ``root``, its state in ``root/state``) and one page on it, loaded: a module's tests that
    share one page (one GUI process and one page load for the module). Yields (page, GUI process)."""
    from playwright.sync_api import expect, sync_playwright

    with running_gui(cli, root / "state", root / "gui.log", allow=[root]) as (url, proc):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}).new_page()
            page.goto(url)
            expect(page.get_by_role("button", name="Start training")).to_be_visible(timeout=30_000)
            yield page, proc
            browser.close()
        assert proc.poll() is None, "the GUI process died during the tests"
