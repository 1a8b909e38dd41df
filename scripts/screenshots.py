#!/usr/bin/env python3
"""Screenshots of the LoRA Studio GUI, for comparing the page before and after a round of GUI changes.

    python scripts/screenshots.py --repo DIR --out FOLDER

It starts ``lora-studio gui`` from the checkout ``DIR`` (put first on PYTHONPATH, so that checkout's ``lora_studio``
runs, the GUI's training and comparison processes included) with a temporary state folder, drives Debian's chromium
with Playwright (1400x1000 viewport) and writes full-page PNGs into FOLDER:

    landing.png    the page as it opens (nothing loaded yet)
    advanced.png   LoRA > Parameters > Advanced, with the demo's config loaded
    runs.png       the Runs tab after the demo run ("Try the demo", "Start training") finished, with its comparison
                   grid when the GUI makes one
    test_tab.png   the Test tab after "Test this file" on the run's file
    runs_reloaded.png  the Runs tab again after reloading the page (the same run, loaded with the page)
    counts.json    per screenshot, the visible text fields, checkboxes, buttons and images, and the page height

The demo run is started from the page (not trained beforehand with ``lora-studio train``): the Runs tab lists only the
runs the GUI itself started. It takes a few minutes on a 2-core CPU. Each screenshot is tried on its own: a missing
element logs a warning and the script goes on; the exit status is 1 when a screenshot could not be written at all.

Elements are found by their elem_id first (those of the GUI as of issue 24), then by role and label text, so later
versions of the page with slightly different labels still work. The PNGs are reduced to a palette and optimised with
Pillow (and scaled down when they are still large), so they stay small enough to commit.

On a shared machine, run the whole script under one lock (it trains and runs a browser):
    flock /tmp/lora_heavy.lock python scripts/screenshots.py --repo . --out docs/screenshots/after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
FINISHED = ("completed", "stopped", "failed", "killed", "cancelled")
SHOTS = ("landing", "advanced", "runs", "test_tab", "runs_reloaded")


def log(message: str) -> None:
    print(f"[screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


def warn(message: str) -> None:
    log(f"WARNING: {message}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(repo: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def start_gui(python: str, repo: Path, state: Path, log_path: Path, timeout: float):
    port = free_port()
    argv = [python, "-m", "lora_studio.cli", "gui", "--no-browser", "--port", str(port), "--state-dir", str(state)]
    with open(log_path, "wb") as out:
        # cwd = the checkout: ``python -m`` puts the working folder first on sys.path
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(repo), cwd=repo)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return url, proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                stop_process(proc)
                raise RuntimeError("the GUI did not start:\n" + log_path.read_text(errors="replace")[-3000:])
            time.sleep(0.5)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---- finding things on the page: elem_id first, then role and text ----

def first_visible(candidates, timeout_ms: int = 10_000):
    """The first of several locators to be visible, polled until the timeout; None when none shows."""
    deadline = time.time() + timeout_ms / 1000
    while True:
        for loc in candidates:
            try:
                if loc.count() and loc.first.is_visible():
                    return loc.first
            except Exception:  # a locator that cannot be evaluated now: try the next
                pass
        if time.time() > deadline:
            return None
        time.sleep(0.25)


def button(page, elem_id: str | None, *names: str, timeout_ms: int = 10_000):
    candidates = []
    if elem_id:
        candidates.append(page.locator(f"#{elem_id}"))
    for name in names:
        candidates.append(page.get_by_role("button", name=name, exact=True))
    for name in names:
        candidates.append(page.get_by_role("button", name=re.compile(re.escape(name), re.I)))
    return first_visible(candidates, timeout_ms)


def open_tab(page, *names: str, timeout_ms: int = 10_000) -> bool:
    """Click tabs in order (each a name, or several alternatives separated by '|'), then let the tab settle: its fields
    mount on first showing and take their values a moment later."""
    for name in names:
        alternatives = name.split("|")
        candidates = [page.get_by_role("tab", name=alt, exact=True) for alt in alternatives]
        candidates += [page.get_by_role("tab", name=re.compile(re.escape(alt), re.I)) for alt in alternatives]
        tab = first_visible(candidates, timeout_ms)
        if tab is None:
            # Gradio puts tabs that do not fit into an overflow menu
            more = first_visible([page.locator(".overflow-menu button, button.overflow-menu")], 1000)
            if more is not None:
                more.click()
                tab = first_visible(candidates + [page.get_by_role("button", name=alt, exact=True)
                                                  for alt in alternatives], 2000)
        if tab is None:
            warn(f"no tab named {name!r} (path {' > '.join(names)})")
            return False
        tab.click()
        page.wait_for_timeout(400)
    page.wait_for_timeout(800)
    return True


def wait_text(locator, pattern: str, timeout_ms: int) -> bool:
    deadline = time.time() + timeout_ms / 1000
    rx = re.compile(pattern, re.I)
    while time.time() < deadline:
        try:
            if locator.count() and rx.search(locator.first.inner_text(timeout=2000) or ""):
                return True
        except Exception:
            pass
        time.sleep(0.5)
    return False


def input_value(page, elem_id: str) -> str:
    box = page.locator(f"#{elem_id}").locator("textarea, input:not([type=checkbox])")
    try:
        return box.first.input_value(timeout=2000) if box.count() else ""
    except Exception:
        return ""


# ---- the state folder: the GUI's run records ----

def run_records(state: Path) -> list[dict]:
    records = []
    for path in sorted((state / "runs").glob("*/run.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # being written
            pass
    return records


def wait_for_run(page, state: Path, timeout: float) -> None:
    """Until the demo run and the comparison job it queues (if any) have ended, or the grid shows on the page."""
    deadline = time.time() + timeout
    seen_train = time.time() + 90
    last = ""
    while time.time() < deadline:
        records = run_records(state)
        trains = [r for r in records if r.get("kind", "train") == "train"]
        busy = [r for r in records if r.get("status") not in FINISHED]
        summary = ", ".join(f"{r.get('kind', 'train')}:{r.get('status')}" for r in records)
        if summary != last:
            log(f"jobs: {summary or 'none yet'}")
            last = summary
        if trains and not busy:
            if trains[-1].get("status") != "completed":
                warn(f"the demo run ended {trains[-1].get('status')}: {trains[-1].get('message', '')}")
            return
        if not trains and time.time() > seen_train:
            warn("no training run appeared in the state folder")
            return
        try:
            if page.locator("#compare-grid img").count() and not busy:
                return
        except Exception:
            pass
        time.sleep(3)
    warn(f"the demo run and its comparison grid did not finish within {timeout:.0f} s")


def stop_jobs(state: Path) -> None:
    """End the GUI's jobs still running (each in its own session, so the GUI's end does not end them)."""
    import signal

    for rec in run_records(state):
        pid = rec.get("pid")
        if rec.get("status") not in FINISHED and pid:
            try:
                os.killpg(pid, signal.SIGTERM)
                warn(f"ended the unfinished {rec.get('kind', 'train')} job (process group {pid})")
            except (OSError, ProcessLookupError):
                pass


# ---- saving ----

COUNT_JS = """() => {
  const shown = el => el.offsetParent !== null && el.getBoundingClientRect().width > 0;
  const all = sel => [...document.querySelectorAll(sel)].filter(shown).length;
  return {
    text_fields: all('input:not([type=checkbox]):not([type=radio]):not([type=file]):not([type=hidden]):not([type=range]), textarea'),
    checkboxes: all('input[type=checkbox]'),
    settings: all('[id^="setting-"]'),
    buttons: all('button:not([role=tab]):not(.icon-button)'),
    images: all('img'),
    page_height: document.documentElement.scrollHeight,
  };
}"""


def page_counts(page) -> dict:
    """What the page shows, counted: a rough measure to compare before and after."""
    try:
        return page.evaluate(COUNT_JS)
    except Exception as exc:
        return {"error": str(exc)}


def save_png(page, path: Path, max_width: int, max_bytes: int) -> None:
    from PIL import Image

    raw = path.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=True)
    with Image.open(raw) as img:
        img = img.convert("RGB")
        if img.width > max_width:
            img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
        while True:
            small = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            small.save(path, optimize=True)
            if path.stat().st_size <= max_bytes or img.width <= 700:
                break
            img = img.resize((int(img.width * 0.85), int(img.height * 0.85)), Image.LANCZOS)
    raw.unlink()
    with Image.open(path) as done:
        log(f"wrote {path} ({done.width}x{done.height}, {path.stat().st_size // 1024} KB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout whose lora_studio runs (first on PYTHONPATH); default: this script's")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the GUI (default: this one)")
    parser.add_argument("--run-timeout", type=float, default=900,
                        help="seconds to wait for the demo run and its comparison grid (default 900)")
    parser.add_argument("--max-width", type=int, default=1400, help="scale PNGs down to this width (default 1400)")
    parser.add_argument("--max-kb", type=int, default=400, help="scale a PNG down further above this size (KB)")
    parser.add_argument("--keep-state", action="store_true", help="keep the temporary state folder (and the GUI log)")
    parser.add_argument("--only", nargs="+", choices=SHOTS, help="take only these screenshots (the run is skipped "
                        "unless runs or test_tab is asked for)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    repo = args.repo.expanduser().resolve()
    out = args.out.expanduser().resolve()
    if not (repo / "lora_studio").is_dir():
        parser.error(f"{repo} has no lora_studio package")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        parser.error("chromium is needed: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or SHOTS)
    which = subprocess.run([args.python, "-c", "import lora_studio; print(lora_studio.__file__)"], cwd=repo,
                           env=child_env(repo), capture_output=True, text=True)
    log(f"lora_studio from {which.stdout.strip() or which.stderr.strip()[-300:]}")

    root = Path(tempfile.mkdtemp(prefix="lora-studio-shots-"))
    state = root / "state"
    made: dict[str, bool] = {name: False for name in wanted}
    started = time.time()
    proc = None
    try:
        url, proc = start_gui(args.python, repo, state, root / "gui.log", timeout=120)
        log(f"GUI at {url} (state {state})")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto(url, timeout=120_000)
            if button(page, "start-training", "Start training", timeout_ms=90_000) is None:
                warn("the page shows no Start training button after 90 s")
            page.wait_for_timeout(2000)  # the first tick of the live view, fonts

            counts: dict[str, dict] = {}

            def shot(name: str, settle_ms: int = 0) -> None:
                """Let the page settle (images load, charts draw), move the pointer off it, save the screenshot."""
                if settle_ms:
                    page.wait_for_timeout(settle_ms)
                page.mouse.move(0, 0)
                try:
                    counts[name] = page_counts(page)
                    log(f"{name}: {counts[name]}")
                    save_png(page, out / f"{name}.png", args.max_width, args.max_kb * 1024)
                    made[name] = True
                except Exception as exc:
                    warn(f"{name}.png: {exc}")

            if "landing" in wanted:
                shot("landing")

            # the demo's config (it fills the fields the Advanced screenshot shows, and is the run's config)
            demo_loaded = False
            try:
                if open_tab(page, "LoRA", "Configuration"):
                    demo = button(page, "try-demo", "Try the demo", "demo")
                    if demo is None:
                        warn("no 'Try the demo' button")
                    else:
                        demo.click()
                        demo_loaded = wait_text(page.locator("#config-status"), r"demo loaded", 180_000) or \
                            (state / "demo" / "config.toml").is_file()
                        if not demo_loaded:
                            warn("the demo did not report it was loaded")
                        page.wait_for_timeout(1500)
            except Exception as exc:
                warn(f"loading the demo: {exc}")

            if "advanced" in wanted:
                try:
                    if open_tab(page, "LoRA", "Parameters", "Advanced") or open_tab(page, "Advanced"):
                        shot("advanced")
                except Exception as exc:
                    warn(f"advanced: {exc}")

            run_started = False
            if wanted & {"runs", "test_tab"}:
                try:
                    start = button(page, "start-training", "Start training")
                    if start is None:
                        warn("no Start training button")
                    elif not demo_loaded:
                        warn("the demo is not loaded: no run started")
                    else:
                        start.click()
                        log("Start training pressed; waiting for the run and its comparison grid")
                        run_started = True
                        wait_for_run(page, state, args.run_timeout)
                except Exception as exc:
                    warn(f"the demo run: {exc}")

            if "runs" in wanted:
                try:
                    if open_tab(page, "Runs"):
                        if run_started:
                            wait_text(page.locator("#run-progress"), r"finished|completed", 60_000) or \
                                warn("the Runs tab does not say the run finished")
                            grid = first_visible([page.locator("#compare-grid img")], 60_000)
                            if grid is None:
                                warn("no comparison grid image on the Runs tab")
                        shot("runs", 2500)
                except Exception as exc:
                    warn(f"runs: {exc}")

            if "test_tab" in wanted:
                try:
                    open_tab(page, "Runs")
                    test_btn = button(page, "test-this-file", "Test this file")
                    if test_btn is None:
                        warn("no 'Test this file' button on the Runs tab")
                    else:
                        test_btn.click()
                        deadline = time.time() + 20
                        while not input_value(page, "test-files") and time.time() < deadline:
                            time.sleep(0.5)
                        if not input_value(page, "test-files"):
                            warn("the Test tab's file box stayed empty after 'Test this file'")
                    # 'Test this file' switches to the Test tab; open it anyway (a later GUI may not)
                    selected = page.locator("[role=tab][aria-selected=true]")
                    if not any(re.fullmatch(r"\s*test\s*", t, re.I) for t in selected.all_inner_texts()):
                        open_tab(page, "Test")
                    shot("test_tab", 2000)
                except Exception as exc:
                    warn(f"test_tab: {exc}")
            if "runs_reloaded" in wanted:
                # the same Runs tab in a freshly loaded page: what a user sees after a reload (a run's grid made
                # while the page was open may show differently from one the page loads with)
                try:
                    page.reload(timeout=120_000)
                    button(page, "start-training", "Start training", timeout_ms=90_000)
                    page.wait_for_timeout(2000)
                    if open_tab(page, "Runs"):
                        if run_started and first_visible([page.locator("#compare-grid img")], 30_000) is None:
                            warn("no comparison grid image on the reloaded Runs tab")
                        shot("runs_reloaded", 2500)
                except Exception as exc:
                    warn(f"runs_reloaded: {exc}")
            (out / "counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
            context.close()
            browser.close()
    except Exception as exc:
        warn(f"{type(exc).__name__}: {exc}")
    finally:
        if proc is not None:
            stop_process(proc)
        stop_jobs(state)
        if args.keep_state:
            log(f"state kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    missing = [name for name, ok in made.items() if not ok]
    log(f"done in {time.time() - started:.0f} s; " + (f"missing: {', '.join(missing)}" if missing else "all made"))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
