"""One LoRA training run, from a validated Config to ``<output_dir>/<output_name>.safetensors``.

Runs the same in one process and under ``accelerate launch`` with several processes on one or more machines:
accelerate synchronises the gradients (through the prepared ``TrainingStep``), accumulates them and reduces what
the processes must agree on; every process trains its share of each epoch's batches; only the main process of the
main machine writes files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from pathlib import Path

import torch

from ..config import Config, save_config
from ..config.network_args import parse_network_args
from ..config.rules import check_settings
from ..confinement import Confinement, confined_to
from ..data.dataset import TrainingData
from ..data.loader import EpochBatches, worker_started
from ..data.sources import datasets_from_config
from ..errors import UserError
from ..io_utils import atomic_write
from ..models.ldm_build import load_dtypes
from ..models.loading import load_components
from ..saving import save_lora
from . import faults, pruning
from .build import (Trained, build_network, build_optimization, cache_latents, cache_text_encoder_outputs,
                    describe_network, low_ram_loading, place_denoiser, place_encoders, release_unneeded,
                    restore_released)
from .estimate import GPU, memory_tips, resource_estimate
from .events import EventLog, reported
from .memory import GIB, MemoryLog
from .guard import Diverged, StepGuard
from .hub_upload import HubUploads, download_state
from .metadata import RunMetadata, describe_optimizer
from .optim import is_schedule_free
from .outputs import best_file, epoch_file, output_paths, step_file
from .precision import precision_for, unscale_fp16_gradients
from .progress import Cadence, Progress
from .report import Reporter
from .resolve import family_of_config, resolve
from .run_paths import check_run_paths
from .sampling import generate, make_scheduler, read_prompt_file
from .state import ResumeState, latest_state, rng_state, save_state
from .step import BatchLoss, TrainingStep
from .pause import TestStudio, wait_while_paused
from .validation import BestTracker, Validation
from .stop import StopRequest
from .trackers import Trackers, tracker_dir

log = logging.getLogger("lora_studio")


class Trainer:
    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list

        self.cfg = cfg
        cuda = torch.cuda.is_available()
        self.precision = precision_for(cfg, cuda)
        self.trained = Trained.from_config(cfg)
        # Text-encoder adapters past the layer a prompt is read from (clip_skip, SDXL's penultimate layer) get no
        # gradient: DDP must look for such unused parameters when text encoders train, or adapters may sit a step out.
        self.net_args = parse_network_args(cfg.network_args, cfg.network_module)
        # so must module dropout (an adapter sits a step out) and DyLoRA (the ranks not drawn this step)
        skips = self.net_args.module_dropout > 0 or self.net_args.module == "networks.dylora"
        ddp = DistributedDataParallelKwargs(find_unused_parameters=self.trained.text_encoder or skips,
                                            broadcast_buffers=False)
        self.accelerator = Accelerator(mixed_precision=self.precision.mode, cpu=not cuda, kwargs_handlers=[ddp],
                                       gradient_accumulation_steps=cfg.gradient_accumulation_steps)
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        seed = [cfg.seed if cfg.seed is not None else random.randint(0, 2**32 - 1)]
        if self.world > 1:
            broadcast_object_list(seed)
        self.seed = seed[0]
        self.paths = output_paths(cfg)
        self.device = self.accelerator.device
        self.overflow_steps = faults.overflow_steps()
        self._sampled_at: int | None = None
        self.estimated_ram: float | None = None  # GiB, from the resource estimate
        self.estimate_bytes: dict | None = None  # {ram, vram}: the estimate, for the start event

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from accelerate.utils import set_seed

        set_seed(self.seed)
        if self.is_main:
            Path(self.cfg.output_dir).mkdir(parents=True, exist_ok=True)
        self.resume = self._read_resume_state()
        if self.resume is not None:
            self.seed = self.resume.seed  # the same data order and noise as the interrupted run
            set_seed(self.seed)
        self._setup_data()
        self._setup_model()
        self._setup_training()
        set_seed(self.seed + self.rank)  # different noise in each process from here on
        self.progress = self._start_position()
        self._first_step = self.progress.step
        self.memory.phase("setting up the optimizer")
        self.guard.take_snapshot(self.progress.step)
        if is_schedule_free(self.optimizer):
            self.optimizer.train()  # between steps; eval() while weights are saved or sampled

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.data = TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, self.seed)
        family = family_of_config(cfg)  # from the model's header (None for a pickle file: loading tells)
        resolved = resolve(cfg, self.data, self.world, self.device.type == "cuda", family)
        self.cfg = cfg = resolved.cfg  # save_n_epoch_ratio, dim_from_weights: what the run trains with
        self.net_args = parse_network_args(cfg.network_args, cfg.network_module)  # with the file's conv rank
        if self.is_main:
            log.info("dataset:\n  %s", self.data.summary().replace("\n", "\n  "))
            resolved.log()
            self._log_estimate(resolved.plan)
        # as sd-scripts: the prompt file is read only when sample images are due at some point
        wants_samples = cfg.sample_every_n_epochs or cfg.sample_every_n_steps or cfg.sample_at_first
        multiple, steps = (family.pixel_multiple, family.sample_steps) if family is not None else (8, 30)
        self.prompts = read_prompt_file(cfg.sample_prompts, self.data.datasets[0].resolution[0], multiple, steps) \
            if cfg.sample_prompts and wants_samples else []
        if self.prompts and self.is_main:
            self.paths["samples"].mkdir(exist_ok=True)
        if family is None or family.samplers() != ("euler",):  # flow models sample with Euler whatever is asked
            for prompt in self.prompts:  # an unknown sampler is an error now, not after an hour of training
                make_scheduler(prompt.sampler or cfg.sample_sampler, {})
        plan = resolved.plan
        self.updates_per_epoch, self.total_steps, self.total_epochs = (plan.steps_per_epoch, plan.total_steps,
                                                                       plan.total_epochs)
        self.cadence = Cadence(cfg, self.total_steps)

    def _setup_model(self) -> None:
        cfg = self.cfg
        dtype = self.precision.weight_dtype  # frozen weights in the training dtype as they are read (VAE: later)
        with low_ram_loading(cfg, self.device, self.is_main), load_dtypes(unet=dtype, text_encoder=dtype):
            c = self.components = load_components(cfg.pretrained_model_name_or_path, cfg.vae, cfg.v2,
                                                  cfg.allow_pickle, options=cfg)
        self.memory.phase("loading the model")
        self.objective = c.family.objective(c, cfg)
        place_encoders(c, cfg, self.precision, self.device, self.trained)
        self.latents = None
        self.stop_reason: str | None = None  # why the run ends early (early stop), for the log and the GUI
        self._validations = 0
        self._said_no_pause = False
        self._batches = self._loader = None  # the data loader (one for the run with persistent workers)
        # the caches first: the text encoders and the VAE have the GPU to themselves (a 12 B transformer would
        # share it with a 5 B T5 otherwise), and are freed before the denoiser comes in
        redrawn = self.data.redrawn_folders()  # no latent cache for them (resolve says so)
        if (cfg.cache_latents or cfg.cache_latents_to_disk) and not redrawn:
            self.latents = cache_latents(c, self.data, cfg, self.device, self.seed, self.accelerator)
            self.memory.phase("caching latents")
        te_cache = None
        if cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk:
            te_cache = cache_text_encoder_outputs(c, self.data, cfg, self.trained, self.device, self.precision,
                                                  self.accelerator)
            self.memory.phase("caching text encoder outputs")
        release_unneeded(c, self.latents is not None, te_cache is not None, self.trained, bool(self.prompts))
        attention = place_denoiser(c, cfg, self.precision, self.device)
        self.memory.phase("placing the model")
        if self.is_main:
            log.info("%s model, attention: %s", c.family.title, attention)
        self.network = build_network(c, cfg, self.net_args, self.trained, self.seed, self.device, self.precision,
                                     len(self.data.bucket_counts()))
        if self.is_main:
            describe_network(self.network, cfg, self.net_args)
        self.memory.phase("building the network")
        self.batch_loss = BatchLoss(c, self.objective, cfg, self.device, self.precision, self.trained.text_encoder,
                                    te_cache)
        self.validation = Validation(cfg, self.data, self.latents, self.batch_loss, self.seed, self.total_steps)
        self.best = BestTracker(cfg.early_stop_patience, cfg.early_stop_min_delta)

    def _setup_training(self) -> None:
        """The optimizer and schedule, and the trained module and optimizer handed to accelerate."""
        cfg = self.cfg
        groups, optimizer, self.lr_scheduler = build_optimization(self.network, cfg, self.total_steps)
        self.group_names = [g["name"] for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        self.model = self.accelerator.prepare(TrainingStep(self.network, self.batch_loss))
        if self.precision.cpu_loss_scaling:
            faults.install_cpu_grad_scaler(self.accelerator)
        self.optimizer = self.accelerator.prepare(optimizer)
        if self.precision.full_fp16:
            unscale_fp16_gradients(self.accelerator)
            eps = optimizer.defaults.get("eps")
            if self.is_main and isinstance(eps, float) and eps < 6e-8:  # below fp16's smallest number
                log.warning("full_fp16 with %s: its eps (%g) is 0 in fp16 and its second moments underflow, so a "
                            "step can turn the weights to NaN (the step guard then stops the run); Lion, an 8-bit "
                            "optimizer, Adafactor or full_bf16 train safely", type(optimizer).__name__, eps)
        self.guard = StepGuard(self.accelerator, self.optimizer, self.lr_scheduler, self.params, self.network, cfg)
        self.meta = RunMetadata(cfg, self.data, self.components, random.randint(0, 2**31 - 1), time.time(),
                                self.total_steps, self.total_epochs, self.seed, self.world,
                                describe_optimizer(optimizer, cfg.optimizer_args))

    def _start_position(self) -> Progress:
        if self.resume is None:
            return Progress()
        self.resume.check_matches(self.cfg, self.network, self.data, self.world)
        self.resume.restore(self.network, self.optimizer, self.lr_scheduler, self.accelerator.scaler)
        self.resume.restore_rng(self.rank)
        progress = Progress(self.resume.step, self.resume.epoch, self.resume.next_batch)
        self.best.restore(self.resume.validation)
        if self.is_main:
            log.info("resuming from %s: step %d, epoch %d, batch %d of the epoch", self.resume.folder,
                     progress.step, progress.epoch, progress.batch)
        return progress

    def _log_estimate(self, plan) -> None:
        gpu = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(self.device)
            gpu = GPU(props.name, props.total_memory / 2**30)
        found = resource_estimate(self.cfg, self.data, plan.steps_per_epoch, gpu)
        if found is not None:
            self.estimated_ram = found.ram_gb
            self.estimate_bytes = {"ram": int(found.ram_gb * GIB), "vram": int(found.vram_gb * GIB),
                                   "vram_phases": {k: int(v * GIB) for k, v in found.phases.items()}}
            log.info("resources: %s", found.describe())
            for warning in found.warnings:
                log.warning("%s", warning)

    def _read_resume_state(self) -> ResumeState | None:
        cfg = self.cfg
        if not cfg.resume:
            return None
        if cfg.resume_from_huggingface:  # sd-scripts: resume names a state on the Hub
            return ResumeState(download_state(cfg))
        if cfg.resume.strip().lower() == "latest":
            folder = latest_state(cfg.output_dir, cfg.output_name)
            if folder is None:
                raise UserError(f"resume = \"latest\": no saved state of '{cfg.output_name}' in {cfg.output_dir} "
                                "(states are written when save_state = true)")
        else:
            folder = Path(cfg.resume).expanduser()
            if not folder.is_dir():
                raise UserError(f"resume: state folder not found: {folder}")
        return ResumeState(folder)

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        cfg = self.cfg
        trackers = Trackers(cfg, tracker_dir(cfg)) if self.is_main else None
        self.events = EventLog(self.paths["events"], trackers, enabled=self.is_main)
        self.memory = MemoryLog(self.events, self.device, self.is_main)
        stop = StopRequest(self.paths["stop"])
        stop.install()
        translated = ((Diverged, "diverged", str),
                      (torch.cuda.OutOfMemoryError, "out_of_memory", lambda exc: _oom_advice(cfg)))
        with reported(self.events, {"status": "killed"}, translated):
            self._setup()
            if self.is_main:
                save_config(self.cfg, self.paths["config"])  # with the ranks dim_from_weights read
            return self._loop(stop)

    def _loop(self, stop: StopRequest) -> Path:
        p = self.progress
        self.events.emit("start", total_steps=self.total_steps, total_epochs=self.total_epochs,
                         steps_per_epoch=self.updates_per_epoch, num_images=len(self.data.items),
                         skipped=[str(path) for path, _ in self.data.skipped], output=str(self.paths["final"]),
                         seed=self.seed, estimate=self.estimate_bytes)
        self.memory.started()
        if self.is_main:
            log.info("training %d steps (%d epochs of %d steps), batch %d x %d process(es) x %d accumulation",
                     self.total_steps, self.total_epochs, self.updates_per_epoch, self.data.datasets[0].batch_size,
                     self.world, self.cfg.gradient_accumulation_steps)
        if self.cfg.sample_at_first:
            self._make_samples(0, 0)
        samples_per_step = self.data.datasets[0].batch_size * self.world * self.cfg.gradient_accumulation_steps
        self.reporter = Reporter(self.events, self.lr_scheduler, self.group_names, self.total_steps, p.step,
                                 samples_per_step, enabled=self.is_main)
        for epoch in range(p.epoch, self.total_epochs + 1):
            p.epoch = epoch
            self._train_epoch(stop)
            if p.stopped:
                break
            self._end_epoch()
            if self.cadence.finished(p.step) or p.stopped:
                break
            p.batch = 0
        self.reporter.close()
        return self._finish()

    def _train_epoch(self, stop: StopRequest) -> None:
        """Train this process's batches of ``progress.epoch`` from ``progress.batch`` on."""
        p, accelerator = self.progress, self.accelerator
        loader = self._epoch_loader()
        epoch_batches = len(self._batches.batches())  # the epoch's plan, made once (the loader's dataset keeps it)
        pending, loss_sum, micro, stop_wanted = [], None, 0, False
        p.epoch_done = False
        for batch in loader:
            with accelerator.accumulate(self.model):
                loss = self.model(batch)
                accelerator.backward(loss)
                p.batch += 1
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                p.step += 1
                if p.step in self.overflow_steps:
                    faults.overflow_gradients(self.params)
                stop_wanted = stop.poll()
                pending.append(self.guard.optimizer_step(p.step, loss_sum / micro, stop_wanted))
                if self.cfg.scale_weight_norms:
                    self._scale_weight_norms(p.step)
            loss_sum, micro = None, 0
            last = p.batch == epoch_batches
            if self.cadence.read_back(p.step, len(pending), last):
                # the step just queued stays on the device unless everything must be known now: the host reads the
                # one before it, which is done, while the GPU works on this one
                lag = self.guard.skips_on_device and not self.cadence.must_read_all(p.step, last) \
                    and not (stop_wanted and self.world == 1)  # one process: it stops after this very step
                self._read_back(pending, keep=1 if lag else 0)
            self._after_step()
            if not p.stopped and self._pause_requested():
                self._read_back(pending)
                self._pause(stop)
            if p.stopped or self.cadence.finished(p.step):
                self._read_back(pending)
                return
        self._read_back(pending)
        p.epoch_done = True

    def _scale_weight_norms(self, step: int) -> None:
        scaled, mean_norm, max_norm = self.network.apply_max_norm(self.cfg.scale_weight_norms)
        self.events.scalars(step, {"max_norm/keys_scaled": scaled, "norm/avg_key_norm": mean_norm,
                                   "max_norm/max_key_norm": max_norm})

    def _epoch_loader(self):
        """The epoch's batches in accelerate's DataLoaderShard, so ``accumulate`` knows where the epoch ends. With
        persistent_data_loader_workers one loader (and its workers) serves every epoch, as in sd-scripts."""
        from accelerate.data_loader import DataLoaderShard

        p, workers = self.progress, self.cfg.max_data_loader_n_workers
        if self._batches is None:
            self._batches = EpochBatches(self.data, self.rank, self.world, self.latents, self.updates_per_epoch,
                                         self.cfg.gradient_accumulation_steps, self.total_steps)
        self._batches.use_epoch(p.epoch, p.batch)
        persistent = bool(self.cfg.persistent_data_loader_workers and workers)
        if self._loader is None or not persistent:
            self._loader = DataLoaderShard(self._batches, batch_size=None, shuffle=False, num_workers=workers,
                                           persistent_workers=persistent, pin_memory=self.device.type == "cuda",
                                           worker_init_fn=worker_started if workers else None,
                                           generator=torch.Generator().manual_seed(p.epoch))  # global RNG untouched
        return self._loader

    def _read_back(self, pending: list, keep: int = 0) -> None:
        """Judge and report the pending steps but the last ``keep``."""
        done = pending[:len(pending) - keep]
        del pending[:len(done)]
        for verdict in self.guard.judge(done):
            self.reporter.step(verdict, self.progress.epoch)
            self.progress.stopped |= verdict.stop and not self.cadence.finished(verdict.step)

    @contextlib.contextmanager
    def _weights_in_use(self):
        """A schedule-free optimizer's averaged weights, in every process, while they are saved or sampled."""
        schedule_free = is_schedule_free(self.optimizer)
        if schedule_free:
            self.optimizer.eval()
        try:
            yield
        finally:
            if schedule_free:
                self.optimizer.train()

    def _after_step(self) -> None:
        p = self.progress
        if p.step == self._first_step + 1:
            self.memory.phase("the first step")
        if self.cadence.snapshot(p.step):
            self.guard.take_snapshot(p.step)
        if self.cadence.save_at_step(p.step) or self.cadence.sample_at_step(p.step):
            with self._weights_in_use():
                self._save_and_sample_at_step()
        if self.validation.due_at_step(p.step) and not p.stopped:
            with self._weights_in_use():
                self._validate(p.epoch, p.step)

    # ------------------------------------------------------------------ pause in place
    def _pause_requested(self) -> bool:
        if not self.paths["pause"].exists():
            return False
        if self.world > 1:  # the other processes would wait in a collective call, which times out
            if not self._said_no_pause and self.is_main:
                log.warning("pause works with one process; this run has %d (use Stop, then resume from its state)",
                            self.world)
            self._said_no_pause = True
            return False
        return True

    def _pause(self, stop: StopRequest) -> None:
        p = self.progress
        state = self.paths["final"].with_name(f"{self.cfg.output_name}-paused.safetensors")
        with self._weights_in_use():
            self._save_state(state, p.epoch, p.step, p.batch)
            studio = TestStudio(self.components, self.network, self.precision, self.device, self.cfg, self.events,
                                prepare=lambda: restore_released(self.components, self.cfg, self.precision,
                                                                 self.device))
            p.stopped = wait_while_paused(self.paths, stop, studio, p.epoch, p.step,
                                          state.with_name(state.stem + "-state"), self.events)

    def _validate(self, epoch: int, step: int) -> None:
        """Measure the validation loss; keep the best weights (save_best); stop when they no longer improve."""
        self.network.eval()
        try:
            loss = self.validation.measure()
        finally:
            self.network.train()
        if self.world > 1:  # every process measured the same; the main process's number decides for all
            from accelerate.utils import broadcast_object_list

            loss = broadcast_object_list([loss])[0]
        scripted = faults.scripted_validation_loss(self._validations)
        loss = loss if scripted is None else scripted
        self._validations += 1
        improved = self.best.update(loss, epoch, step)
        self.events.emit("validation", step=step, epoch=epoch, loss=loss, best=self.best.best, improved=improved)
        self.events.scalars(step, {"loss/validation": loss})
        if self.is_main:
            log.info("validation loss %.6g at epoch %d, step %d%s", loss, epoch, step,
                     " (the best so far)" if improved else f" (best {self.best.best:.6g} at epoch "
                                                           f"{self.best.best_epoch}, step {self.best.best_step})")
        if improved and self.cfg.save_best and self.is_main:
            self._save(best_file(self.cfg), epoch, step, {
                "lora_studio_best": f"the lowest validation loss, {loss:.6g}, at epoch {epoch}, step {step}",
                "ss_validation_loss": loss})
        if self.best.should_stop:
            self.progress.stopped = True
            self.stop_reason = self.best.stop_reason()
            if self.is_main:
                log.info("%s", self.stop_reason)

    def _save_and_sample_at_step(self) -> None:
        p, cfg = self.progress, self.cfg
        if self.cadence.save_at_step(p.step):
            if self.is_main:
                self._save(step_file(cfg, p.step), p.epoch, p.step)
            if self.cadence.state_with_saves:
                self._save_state(step_file(cfg, p.step), p.epoch, p.step, p.batch)
            if self.is_main:
                pruning.after_step_save(cfg, p.step)
        if self.cadence.sample_at_step(p.step):
            self._make_samples(p.epoch, p.step)

    def _end_epoch(self) -> None:
        with self._weights_in_use():
            self._save_and_sample_at_epoch_end()

    def _save_and_sample_at_epoch_end(self) -> None:
        p, cfg = self.progress, self.cfg
        if self.cadence.save_at_epoch_end(p.epoch, p.step):
            if self.is_main:
                self._save(epoch_file(cfg, p.epoch), p.epoch, p.step)
            if self.cadence.state_with_saves:
                self._save_state(epoch_file(cfg, p.epoch), p.epoch + 1, p.step, 0)
            if self.is_main:
                pruning.after_epoch_save(cfg, p.epoch)
        if self.cadence.sample_at_epoch_end(p.epoch, p.step):
            self._make_samples(p.epoch, p.step)
        if self.validation.due_at_epoch_end(p.epoch) and not self.validation.due_at_step(p.step):
            self._validate(p.epoch, p.step)

    def _finish(self) -> Path:
        p = self.progress
        self._check_processes_agree()
        final = self.paths["final"]
        with self._weights_in_use():
            if self.is_main:
                self._save(final, p.epoch, p.step)
            if self.cadence.state_at_end:
                next_epoch, next_batch = (p.epoch + 1, 0) if p.epoch_done else (p.epoch, p.batch)
                self._save_state(final, next_epoch, p.step, next_batch)
        if self.is_main:
            self.hub.finish()  # the process must not end in the middle of a background upload
            status = "stopped" if p.stopped else "completed"
            reason = self.stop_reason or ("stopped by request" if p.stopped else "all steps done")
            best = self.best.as_dict() if self.validation.enabled else None
            peaks = self.memory.peaks()
            self.events.emit("end", status=status, step=p.step, epoch=p.epoch, output=str(final),
                             seconds=round(self.reporter.elapsed, 2), reason=reason, best=best,
                             best_file=str(best_file(self.cfg)) if best and self.cfg.save_best else None, **peaks)
            log.info("%s after %d steps (%s): %s", status, p.step, reason, final)
            estimated = f" (estimated {self.estimated_ram:.2f} GiB)" if self.estimated_ram else ""
            log.info("peak memory: RAM %.2f GiB%s%s", peaks["peak_ram"] / GIB, estimated,
                     f", GPU {peaks['peak_gpu'] / GIB:.2f} GiB (training {peaks['peak_gpu_training'] / GIB:.2f} "
                     "GiB)" if peaks["peak_gpu"] is not None else "")
        self.accelerator.wait_for_everyone()
        return final

    def _check_processes_agree(self) -> None:
        """Every process must end at the same step, or the final file would mix different trainings."""
        if self.world == 1:
            return
        from accelerate.utils import gather_object

        ended = gather_object([(self.progress.step, self.progress.stopped)])
        if len(set(ended)) > 1:
            raise RuntimeError(f"the processes ended at different steps {ended}; no final file was written")
        if self.is_main:
            log.info("all %d processes ended at step %d", self.world, self.progress.step)

    # ------------------------------------------------------------------ files
    def _save(self, path: Path, epoch: int, step: int, extra_metadata: dict | None = None) -> Path:
        meta, spec = self.meta.for_save(epoch, step, time.time(), path.stem, extra_metadata)
        save_lora(path, self.network.state_dict(), self.cfg.save_precision, meta, spec)
        self.events.emit("save", step=step, epoch=epoch, path=str(path))
        log.info("saved %s", path)
        self.hub.file(path, wait=path == self.paths["final"])  # the final file before the run ends, as sd-scripts
        return path

    def _save_state(self, checkpoint: Path, epoch: int, step: int, next_batch: int) -> None:
        """The state beside ``checkpoint`` (``<stem>-state``); every process takes part (RNG states are gathered)."""
        rngs = [rng_state()]
        if self.world > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)
        if self.is_main:
            folder = checkpoint.with_name(checkpoint.stem + "-state")
            save_state(folder, network=self.network, optimizer=self.optimizer, scheduler=self.lr_scheduler,
                       scaler=self.accelerator.scaler, step=step, epoch=epoch, next_batch=next_batch, cfg=self.cfg,
                       data=self.data, seed=self.seed, world=self.world, rngs=rngs,
                       validation=self.best.as_dict() if self.validation.enabled else None)
            log.info("saved state %s", folder)
            self.hub.state(folder)
        self.accelerator.wait_for_everyone()

    @functools.cached_property
    def hub(self) -> HubUploads:
        """Uploads to the Hugging Face Hub (huggingface_repo_id), made on the main process's first save."""
        return HubUploads(self.cfg)

    def _make_samples(self, epoch: int, step: int) -> None:
        """Sample images on the main process, with the training random state set aside (a resumed run draws the
        same noise)."""
        if not self.prompts or self._sampled_at == step:
            return
        self._sampled_at = step
        if self.is_main:
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices):
                self._sample_images(epoch, step)
        self.accelerator.wait_for_everyone()

    def _sample_images(self, epoch: int, step: int) -> None:
        c, cfg = self.components, self.cfg
        c.vae.to(self.device)
        self.network.eval()
        for i, prompt in enumerate(self.prompts):
            with self.precision.autocast(self.device):
                image = generate(c, prompt, cfg.sample_sampler, c.family.prompt_options(cfg), self.device,
                                 self.precision.weight_dtype, self.seed + i)
            path = self.paths["samples"] / f"{cfg.output_name}_e{epoch:06d}_s{step:08d}_{i:02d}.png"
            atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
            self.events.emit("sample", step=step, epoch=epoch, path=str(path), prompt=prompt.prompt, index=i)
        self.network.train()

def _oom_advice(cfg: Config) -> str:
    return "the GPU ran out of memory. Try: " + "; ".join(memory_tips(cfg))


def train(cfg: Config, confinement: Confinement | None = None) -> Path:
    """Train ``cfg``. ``confinement`` (``--allow-dir``): every path the run reads or writes, and every callable a
    setting names, is checked before anything is read or written."""
    confinement = confinement or Confinement()
    check_settings(cfg, confinement)
    check_run_paths(cfg, confinement)
    with confined_to(confinement):
        return Trainer(cfg).run()
