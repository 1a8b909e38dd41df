"""Where a run is (step, epoch, position in the epoch) and when something is due (save, sample, state, read-back)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config

SNAPSHOT_EVERY = 25  # steps between in-memory copies of the weights (nan_policy = "rollback") and forced read-backs


@dataclass
class Progress:
    step: int = 0  # optimizer steps done, over the whole run (a resumed run counts on)
    epoch: int = 1  # the epoch being trained
    batch: int = 0  # this process's batches of the epoch done (the next one to train)
    epoch_done: bool = False  # every batch of the epoch is trained
    stopped: bool = False  # a stop was requested and agreed


def _every(every: int | None, count: int) -> bool:
    return bool(every) and count % every == 0


class Cadence:
    """The run's timetable, from its settings."""

    def __init__(self, cfg: Config, total_steps: int):
        self.cfg, self.total_steps = cfg, total_steps

    def finished(self, step: int) -> bool:
        return step >= self.total_steps

    def read_back(self, step: int, pending: int, last_batch: bool) -> bool:
        """Bring losses and checks to the host now (always before anything is written or sampled)."""
        return pending >= self.cfg.sync_every_n_steps or self.must_read_all(step, last_batch)

    def must_read_all(self, step: int, last_batch: bool) -> bool:
        """Every check up to this step must be on the host now, this step's included: something is written, sampled
        or copied, or the epoch or the run ends."""
        return (last_batch or step % SNAPSHOT_EVERY == 0 or self.finished(step) or self.save_at_step(step)
                or self.sample_at_step(step))

    def snapshot(self, step: int) -> bool:
        return step % SNAPSHOT_EVERY == 0

    def save_at_step(self, step: int) -> bool:
        return _every(self.cfg.save_every_n_steps, step) and not self.finished(step)

    def sample_at_step(self, step: int) -> bool:
        return _every(self.cfg.sample_every_n_steps, step)

    def save_at_epoch_end(self, epoch: int, step: int) -> bool:
        return _every(self.cfg.save_every_n_epochs, epoch) and not self.finished(step)

    def sample_at_epoch_end(self, epoch: int, step: int) -> bool:
        wants = self.cfg.sample_every_n_epochs or self.cfg.sample_every_n_steps
        return _every(self.cfg.sample_every_n_epochs, epoch) or (self.finished(step) and bool(wants))

    @property
    def state_with_saves(self) -> bool:
        return self.cfg.save_state

    @property
    def state_at_end(self) -> bool:
        return self.cfg.save_state or self.cfg.save_state_on_train_end
