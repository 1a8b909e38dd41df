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
    follow it (``started``)."""

    def __init__(self, events, device: torch.device, enabled: bool = True):
        self.events = events
        self.device = device
        self.enabled = enabled
        self._waiting: list[dict] | None = []

    def phase(self, name: str) -> None:
        if not self.enabled:
            return
        rss, peak, gpu = rss_bytes(), peak_rss_bytes(), gpu_peak_bytes(self.device)
        log.info("memory after %s: RAM %.2f GiB (peak %.2f GiB)%s", name, rss / GIB, peak / GIB,
                 f", GPU peak {gpu / GIB:.2f} GiB" if gpu is not None else "")
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
        return {"peak_ram": peak_rss_bytes(), "peak_gpu": gpu_peak_bytes(self.device)}
