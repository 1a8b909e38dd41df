"""A graceful stop: asked for by Ctrl+C / SIGTERM or by a ``<output_name>.stop`` file (the GUI's Stop button).

The run finishes its step, saves and exits; a second request ends it at once. With several processes the request is
one of the values the step guard reduces, so every process stops at the same step.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

log = logging.getLogger("lora_studio")


class StopRequest:
    """Set by SIGINT/SIGTERM or by a ``<output_name>.stop`` file: finish the step, save, exit."""

    def __init__(self, stop_file: Path):
        self.stop_file = stop_file
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested:  # second request: stop at once
                raise KeyboardInterrupt
            self.requested = True
            log.warning("stop requested: saving after this step (press again to stop at once)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def poll(self) -> bool:
        if not self.requested and self.stop_file.exists():
            self.requested = True
            try:
                self.stop_file.unlink()
            except OSError:
                pass
        return self.requested
