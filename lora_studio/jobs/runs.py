"""Runs launched by the GUI: a queue, the current run, and the history, kept on disk under the state folder.

Each run is an engine process started with an argv list in its own process group/session, so closing the browser
or the GUI never stops it; a restarted GUI finds it again by its pid (checked against the process start time).
Stop is graceful (the engine's ``<output_name>.stop`` file: it finishes the step, saves and exits); a second Stop
kills the process tree. One run trains at a time; queued runs start in order as soon as the previous one ends.

A job is a training run (``kind = "train"``), a comparison job (``kind = "compare"``: ``lora-studio compare``,
the grids of a finished run or the Test tab's images) or a tool (``kind = "tool"``: ``lora-studio lora ...`` from
the Tools tab, ``lora-studio caption ...`` from the Dataset tab); all wait in the same queue and one runs at a time. A training
run that completes with sample prompts queues the comparison grid of its saved files (its ``parent``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from ..compare import compare_argv, compare_folder, events_path, index_path
from ..config import Config, load_config, save_config
from ..io_utils import atomic_write_bytes
from ..training.outputs import latest_state, output_paths
from .command import engine_argv
from .live import EventsFollower, LiveState, log_tail

ACTIVE = ("running", "stopping")
JOB_WORDS = {"train": "training run", "compare": "comparison job", "tool": "tool job"}
FINISHED = ("completed", "stopped", "failed", "killed", "cancelled")
RESUMABLE = ("stopped", "failed", "killed")


@dataclass
class RunRecord:
    id: str
    output_name: str
    output_dir: str
    config: str  # the config the run was queued with (in its run folder)
    status: str = "queued"  # queued | running | stopping | completed | stopped | failed | killed | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    pid_started: float | None = None
    argv: list[str] = field(default_factory=list)
    events: str = ""
    events_offset: int = 0
    log: str = ""
    message: str = ""  # why it ended, in words
    final_step: int | None = None
    total_steps: int | None = None
    output: str | None = None  # training: the final file; comparison: its index JSON; tool: its report JSON
    kind: str = "train"  # train | compare | tool
    parent: str | None = None  # a comparison job made for a training run: that run's id


COMPARE_PREFIX = [sys.executable, "-m", "lora_studio.cli", "compare"]
TOOL_PREFIX = [sys.executable, "-m", "lora_studio.cli"]


class RunManager:
    def __init__(self, state_dir: str | Path, poll_seconds: float = 1.0, allowed_dirs: list[Path] | None = None):
        """``allowed_dirs``: the folders training runs are confined to (``train --allow-dir``); None: not confined."""
        self.root = Path(state_dir).expanduser().resolve() / "runs"
        self.allowed_dirs = allowed_dirs
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._followers: dict[str, EventsFollower] = {}
        self._kill_requested: set[str] = set()
        self.records: dict[str, RunRecord] = {}
        for path in sorted(self.root.glob("*/run.json")):
            try:
                rec = RunRecord(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue
            self.records[rec.id] = rec
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._monitor, args=(poll_seconds,), daemon=True,
                                        name="lora-studio-runs")
        self._thread.start()

    # ---------------------------------------------------------------- queries
    def ordered(self) -> list[RunRecord]:
        with self._lock:
            return sorted(self.records.values(), key=lambda r: r.created)

    def queued(self) -> list[RunRecord]:
        return [r for r in self.ordered() if r.status == "queued"]

    def active(self) -> RunRecord | None:
        return next((r for r in self.ordered() if r.status in ACTIVE), None)

    def history(self) -> list[RunRecord]:
        return [r for r in reversed(self.ordered()) if r.status in FINISHED]

    def latest(self, kind: str | None = None) -> RunRecord | None:
        """The active job (of this kind), else the last one to have started."""
        active = self.active()
        if active and kind in (None, active.kind):
            return active
        started = [r for r in self.ordered() if r.started and kind in (None, r.kind)]
        return max(started, key=lambda r: r.started) if started else None

    def get(self, run_id: str | None) -> RunRecord | None:
        with self._lock:
            return self.records.get(run_id or "")

    def compare_job(self, run_id: str) -> RunRecord | None:
        """The newest comparison job made for a training run."""
        jobs = [r for r in self.ordered() if r.kind == "compare" and r.parent == run_id and r.status != "cancelled"]
        return jobs[-1] if jobs else None

    def live(self, run: RunRecord) -> LiveState:
        if not run.events:  # not launched yet: nothing to follow
            return LiveState()
        with self._lock:
            follower = self._followers.get(run.id)
            if follower is None:
                follower = self._followers[run.id] = EventsFollower(run.events, run.events_offset)
            return follower.update()

    def log_tail(self, run: RunRecord, lines: int = 40) -> str:
        return log_tail(run.log, lines)

    # ---------------------------------------------------------------- actions
    def enqueue(self, cfg: Config) -> RunRecord:
        """Queue a checked config; it starts at once when nothing else is training."""
        run_id, folder = self._new_folder()
        config = save_config(cfg, folder / "config.toml")
        rec = RunRecord(id=run_id, output_name=cfg.output_name, output_dir=str(cfg.output_dir), config=str(config),
                        log=str(folder / "engine.log"))
        return self._add(rec)

    def enqueue_compare(self, config: str | Path | None = None, options: list[str] = (), prompts: str | None = None,
                        name: str = "test", parent: str | None = None, label: str | None = None) -> RunRecord:
        """Queue a ``lora-studio compare`` job. With ``config``: a run's grids (its saved files, base model and
        sample prompts; in ``<output_dir>/compare``). Without: ``options`` (``--files ... --model ...``) and
        ``prompts`` (text, written to the job's folder), the images in the job's folder, named ``name``. ``label``:
        what the queue and history call it."""
        run_id, folder = self._new_folder()
        if config is not None:
            cfg = load_config(config)
            out, file_name = compare_folder(cfg.output_dir), cfg.output_name
            argv = compare_argv(config, list(options))
        else:
            out, file_name = folder / "images", name
            argv = [*COMPARE_PREFIX, *options]
            if prompts is not None:
                (folder / "prompts.txt").write_text(prompts.rstrip() + "\n", encoding="utf-8")
                argv.append(f"--prompts={folder / 'prompts.txt'}")
            argv += [f"--out={out}", f"--name={name}"]
        rec = RunRecord(id=run_id, output_name=label or file_name, output_dir=str(out), config=str(config or ""),
                        log=str(folder / "engine.log"), kind="compare", parent=parent, argv=argv,
                        events=str(events_path(out, file_name)), output=str(index_path(out, file_name)))
        return self._add(rec)

    def enqueue_tool(self, tool: str, options: list[str], label: str, group: str = "lora") -> RunRecord:
        """Queue ``lora-studio <group> <tool> <options>`` (a LoRA tool, or tagging / captioning); its progress, end
        or error go to the job's events file and its result to the job's ``report.json``."""
        run_id, folder = self._new_folder()
        events, report = folder / "events.jsonl", folder / "report.json"
        argv = [*TOOL_PREFIX, group, tool, *options, f"--events={events}", f"--report={report}"]
        rec = RunRecord(id=run_id, output_name=label, output_dir=str(folder), config="", log=str(folder / "engine.log"),
                        kind="tool", argv=argv, events=str(events), output=str(report))
        return self._add(rec)

    def _new_folder(self) -> tuple[str, Path]:
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.root / run_id
        folder.mkdir(parents=True)
        return run_id, folder

    def _add(self, rec: RunRecord) -> RunRecord:
        with self._lock:
            self.records[rec.id] = rec
            self._save(rec)
            self._advance()
        return rec

    def remove_queued(self, run_id: str) -> bool:
        with self._lock:
            rec = self.records.get(run_id)
            if rec is None or rec.status != "queued":
                return False
            rec.status, rec.ended, rec.message = "cancelled", time.time(), "removed from the queue before it started"
            self._save(rec)
            return True

    def stop(self) -> str:
        """First call: graceful stop (save, then exit). Second call: end the process tree now."""
        with self._lock:
            rec = self.active()
            if rec is None:
                return "Nothing is training."
            if rec.kind != "train":  # nothing to save: end it now
                self._kill_requested.add(rec.id)
                _kill_tree(rec.pid, rec.pid_started)
                return f"Ended the {JOB_WORDS[rec.kind]} {rec.output_name}."
            if rec.status == "running":
                Path(output_paths(self._cfg(rec))["stop"]).write_text("stop requested from the GUI\n",
                                                                      encoding="utf-8")
                rec.status = "stopping"
                self._save(rec)
                return (f"Stopping {rec.output_name}: it saves after the current step. "
                        "Press Stop training again to end it at once.")
            self._kill_requested.add(rec.id)
            _kill_tree(rec.pid, rec.pid_started)
            return f"Ended {rec.output_name} at once."

    def pause(self) -> str:
        """Pause the active run in place (it finishes its step, writes a state and waits, the model in memory), or
        let a paused one go on."""
        with self._lock:
            rec = self.active()
            if rec is None:
                return "Nothing is training."
            if rec.kind != "train":
                return f"A {JOB_WORDS[rec.kind]} is running, not a training run: there is nothing to pause."
            pause = output_paths(self._cfg(rec))["pause"]
            if pause.exists():
                pause.unlink(missing_ok=True)
                return f"{rec.output_name} goes on from where it paused."
            pause.write_text("paused from the GUI\n", encoding="utf-8")
            return (f"Pausing {rec.output_name} after the current step. While it waits, the Test tab renders on its "
                    "current weights; press Resume to go on.")

    def resumable(self) -> RunRecord | None:
        """The run "Resume last run" continues: the newest training run, when it was stopped or died (not one that
        completed, nor while a newer one runs or waits)."""
        runs = [r for r in self.ordered() if r.kind == "train" and r.status != "cancelled"]
        return runs[-1] if runs and runs[-1].status in RESUMABLE else None

    def resume_last(self) -> str:
        """Queue the newest training run again when it was stopped or died, continuing from its latest saved
        state."""
        with self._lock:
            rec = self.resumable()
        if rec is None:
            return "There is no stopped or failed run to resume."
        cfg = self._cfg(rec)
        state = latest_state(cfg.output_dir, cfg.output_name)
        if state is None:
            return (f"{rec.output_name} saved no training state to resume from: turn on **Save training state** "
                    "(save_state) before starting a long run.")
        new = self.enqueue(cfg.replace(resume=str(state)))
        return f"Resuming {rec.output_name} from {state.name} (run {new.id})."

    def close(self) -> None:
        self._stop_event.set()

    # ---------------------------------------------------------------- internals
    def _cfg(self, rec: RunRecord) -> Config:
        return load_config(rec.config)

    def _save(self, rec: RunRecord) -> None:
        atomic_write_bytes(self.root / rec.id / "run.json", json.dumps(asdict(rec), indent=1).encode("utf-8"))

    def _advance(self) -> None:
        if self.active() is not None:
            return
        for rec in self.queued():
            try:
                self._launch(rec)
                return
            except Exception as exc:  # a run that cannot start must not block the queue
                rec.status, rec.ended, rec.message = "failed", time.time(), f"could not start: {exc}"
                self._save(rec)

    def _launch(self, rec: RunRecord) -> None:
        if rec.kind != "train":
            Path(rec.output_dir).mkdir(parents=True, exist_ok=True)
            events = Path(rec.events)
            rec.events_offset = events.stat().st_size if events.exists() else 0
            self._spawn(rec, rec.output_dir, {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"})
            return
        cfg = self._cfg(rec)
        paths = output_paths(cfg)
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        paths["stop"].unlink(missing_ok=True)  # a stale request from an earlier run must not stop this one
        paths["pause"].unlink(missing_ok=True)
        config_path = save_config(cfg, paths["config"])  # the config beside the output it makes
        rec.events = str(paths["events"])
        rec.events_offset = paths["events"].stat().st_size if paths["events"].exists() else 0
        rec.argv = engine_argv(cfg, config_path, self.allowed_dirs)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        if cfg.wandb_api_key:  # never written to the config file: the engine gets it the way wandb reads it
            env["WANDB_API_KEY"] = cfg.wandb_api_key
        if cfg.huggingface_token:  # the same for the Hub token: huggingface_hub reads HF_TOKEN
            env["HF_TOKEN"] = cfg.huggingface_token
        env.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        rec.output = str(paths["final"])
        self._spawn(rec, cfg.output_dir, env)

    def _spawn(self, rec: RunRecord, cwd: str, env: dict) -> None:
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # Ctrl+C in the GUI's terminal does not reach the engine
        with open(rec.log, "ab") as log:
            proc = subprocess.Popen(rec.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=cwd, env=env, **kwargs)
        self._procs[rec.id] = proc
        rec.pid, rec.started, rec.status = proc.pid, time.time(), "running"
        try:
            rec.pid_started = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            rec.pid_started = None
        self._save(rec)

    def _alive(self, rec: RunRecord) -> tuple[bool, int | None]:
        proc = self._procs.get(rec.id)
        if proc is not None:
            code = proc.poll()
            return code is None, code
        return _pid_alive(rec.pid, rec.pid_started), None

    def poll(self) -> None:
        with self._lock:
            rec = self.active()
            if rec is not None:
                alive, code = self._alive(rec)
                if not alive:
                    self._finish(rec, code)
            self._advance()

    def _finish(self, rec: RunRecord, code: int | None) -> None:
        state = self.live(rec)
        rec.ended = time.time()
        rec.final_step, rec.total_steps = state.step, state.total_steps or None
        if rec.kind == "compare" and state.end and state.end.get("status") in ("completed", "stopped"):
            rec.status = state.end["status"]
            rec.message = (f"{len(state.grids)} grid(s), {state.step} image(s) in {rec.output_dir}"
                           if rec.status == "completed" else f"stopped after {state.step} image(s)")
        elif rec.kind == "tool" and state.end and state.end.get("status") == "completed":
            rec.status = "completed"
            rec.message = f"wrote {state.end['output']}" if state.end.get("output") else "the report is below"
        elif rec.kind != "train" and rec.id in self._kill_requested:
            done = f"{state.step} image(s)" if rec.kind == "compare" else state.phase or "starting"
            rec.status, rec.message = "killed", f"ended at once ({done}; Stop pressed)"
        elif state.end and state.end.get("status") in ("completed", "stopped"):
            rec.status = state.end["status"]
            rec.message = f"{rec.status} after {state.end.get('step', state.step)} steps; saved {state.end.get('output')}"
        elif rec.id in self._kill_requested:
            rec.status, rec.message = "killed", f"ended at once at step {state.step} (Stop pressed twice)"
        elif state.error:
            rec.status, rec.message = "failed", state.error.get("message", "the engine reported an error")
        else:
            tail = log_tail(rec.log, 12)
            exit_text = f"exit code {code}" if code is not None else "the process is gone"
            rec.status = "failed"
            last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
            rec.message = f"the engine ended ({exit_text}) without finishing: {last}"
        self._procs.pop(rec.id, None)
        self._save(rec)
        if rec.kind == "train" and rec.status == "completed":
            self._queue_grid(rec)

    def _queue_grid(self, rec: RunRecord) -> None:
        """The comparison grid of a completed run's saved files, when it has sample prompts to draw them with."""
        try:
            if self._cfg(rec).sample_prompts:
                self.enqueue_compare(config=rec.config, parent=rec.id)
        except Exception:  # a grid that cannot be queued must not hide the run's own result
            pass

    def _monitor(self, seconds: float) -> None:
        while not self._stop_event.wait(seconds):
            try:
                self.poll()
            except Exception:  # the monitor must outlive any one bad record
                pass


def _pid_alive(pid: int | None, started: float | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1.0:
            return False  # the pid now belongs to another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_tree(pid: int | None, started: float | None) -> None:
    if not _pid_alive(pid, started):
        return
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
