"""How much memory the run holds: host RAM (resident set, and its peak as the kernel counts it) and, on CUDA, GPU
memory, after each phase of the set-up and the first steps, in the log and the events file (``memory`` events), and
the run's peaks in its ``end`` event."""

from __future__ import annotations

import logging
import sys

import torch

log = logging.getLogger("lora_studio")
GIB = 2**30


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The most host RAM this process has held so far. On Linux the kernel's high-water mark of this process's own
    memory (``VmHWM``): ``getrusage``'s ``ru_maxrss`` starts at the size of the process that started this one (it
    keeps the parent's mark across fork and exec), so an engine started by a large process would report that."""
    if sys.platform == "win32":
        import psutil

        return psutil.Process().memory_info().peak_wset
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024  # kB; never less than the resident set now
        except (OSError, ValueError, IndexError):
            pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak if sys.platform == "darwin" else peak * 1024, rss_bytes())  # Linux counts KiB, macOS bytes


def gpu_peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


class MemoryLog:
    """Logs each phase at once; its events wait for the run's ``start`` event (the events file begins with it) and
    follow it (``started``). On CUDA each phase's ``gpu_peak`` is the most it allocated itself (the peak is reset
    after each phase), so a peak of caching latents is told apart from one of training."""

    def __init__(self, events, device: torch.device, enabled: bool = True):
        self.events = events
        self.device = device
        self.enabled = enabled
        self._waiting: list[dict] | None = []
        self._gpu_max = 0  # the run's peak so far, over the phases already logged
        self._training_max = 0  # the same, over the phases since the training loop started

    def _phase_peak(self) -> int | None:
        """The GPU peak since the last phase; the counter starts again from what is allocated now."""
        peak = gpu_peak_bytes(self.device)
        if peak is not None:
            self._gpu_max = max(self._gpu_max, peak)
            if self._waiting is None:
                self._training_max = max(self._training_max, peak)
            torch.cuda.reset_peak_memory_stats(self.device)
        return peak

    def phase(self, name: str) -> None:
        if not self.enabled:
            return
        rss, peak, gpu = rss_bytes(), peak_rss_bytes(), self._phase_peak()
        log.info("memory after %s: RAM %.2f GiB (peak %.2f GiB)%s", name, rss / GIB, peak / GIB,
                 f", GPU peak of the phase {gpu / GIB:.2f} GiB" if gpu is not None else "")
        fields = {"phase": name, "rss": rss, "peak": peak, "gpu_peak": gpu}
        if self._waiting is not None:
            self._waiting.append(fields)
        else:
            self.events.emit("memory", **fields)

    def started(self) -> None:
        """The start event is written: the set-up's phases follow it, later ones are written as they come."""
        for fields in self._waiting or []:
            self.events.emit("memory", **fields)
        self._waiting = None

    def peaks(self) -> dict:
        """The run's peaks: RAM, the GPU's over the whole run and over training alone (from the first step on)."""
        last = self._phase_peak() if self.device.type == "cuda" else None
        if last is None:
            return {"peak_ram": peak_rss_bytes(), "peak_gpu": None, "peak_gpu_training": None}
        return {"peak_ram": peak_rss_bytes(), "peak_gpu": self._gpu_max, "peak_gpu_training": self._training_max}
