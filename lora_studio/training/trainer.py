"""One LoRA training run, from a validated Config to ``<output_dir>/<output_name>.safetensors``.

Runs the same in one process and under ``accelerate launch --num_processes N``: every process trains its share of
each epoch's batches, gradients are averaged across processes, and only the main process writes files.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import torch

from ..config import Config, save_config
from ..config.rules import check_settings
from ..data.dataset import TrainingData, shard_batches
from ..data.loader import EpochBatches
from ..data.latent_cache import build_latent_cache, vae_fingerprint
from ..data.sources import datasets_from_config
from ..errors import UserError
from ..io_utils import atomic_write
from ..models.loading import load_components
from ..network.args import parse_network_args
from ..network.lora import LoRANetwork, ranks_in_file
from ..saving import save_lora
from .events import EventLog
from .loss import denoising_loss, sample_noise
from .metadata import RunMetadata, describe_optimizer
from .optim import build_optimizer, build_scheduler
from .outputs import epoch_file, output_paths, step_file
from .plan import plan_steps
from .estimate import GPU, memory_tips, resource_estimate
from .sampling import generate, make_scheduler, read_prompt_file
from .vae import encode_latents
from .state import ResumeState, latest_state, rng_state, save_state
from .te_cache import build_te_cache, cached_condition, check_te_cache_allowed, te_fingerprint

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


def _choose_precision(cfg: Config, cuda: bool) -> str:
    if cfg.mixed_precision == "fp16" and not cuda:
        log.warning("mixed_precision fp16 needs an NVIDIA GPU; training in fp32 on this CPU instead")
        return "no"
    if cfg.mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("mixed_precision bf16 is not supported by this GPU; use fp16")
    return cfg.mixed_precision


class Trainer:
    def __init__(self, cfg: Config):
        from accelerate import Accelerator
        from accelerate.utils import broadcast_object_list

        check_settings(cfg)
        self.cfg = cfg
        cuda = torch.cuda.is_available()
        self.precision = _choose_precision(cfg, cuda)
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=not cuda)
        self.is_main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        seed = [cfg.seed if cfg.seed is not None else random.randint(0, 2**32 - 1)]
        if self.world > 1:
            broadcast_object_list(seed)
        self.seed = seed[0]
        self.paths = output_paths(cfg)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        self.device = self.accelerator.device

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler

        cfg = self.cfg
        set_seed(self.seed)
        if self.is_main:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            if cfg.sample_prompts:
                self.paths["samples"].mkdir(exist_ok=True)
        self.resume = self._read_resume_state()
        if self.resume is not None:
            self.seed = self.resume.seed  # the same data order and noise as the interrupted run
            set_seed(self.seed)
        self.data = TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, self.seed)
        if self.is_main:
            log.info("dataset:\n  %s", self.data.summary().replace("\n", "\n  "))
            self._log_estimate()
        self.prompts = read_prompt_file(cfg.sample_prompts, self.data.datasets[0].resolution[0]) \
            if cfg.sample_prompts else []
        for prompt in self.prompts:  # an unknown sampler is an error now, not after an hour of training
            make_scheduler(prompt.sampler or cfg.sample_sampler, {})

        c = self.components = load_components(cfg.pretrained_model_name_or_path, cfg.vae, cfg.v2, cfg.allow_pickle)
        self.family = c.family
        schedule = {"prediction_type": "v_prediction" if cfg.v_parameterization else "epsilon"}
        if cfg.zero_terminal_snr:
            schedule["rescale_betas_zero_snr"] = True
        c.scheduler_config.update(schedule)  # the sample images use the same prediction and schedule
        self.noise_scheduler = DDPMScheduler.from_config(c.scheduler_config)
        self.train_unet = not cfg.network_train_text_encoder_only
        self.train_te = not cfg.network_train_unet_only
        if cfg.xformers:
            try:
                c.unet.enable_xformers_memory_efficient_attention()
            except Exception as exc:
                raise UserError(f"xformers: cannot use xformers here ({exc}); remove xformers = true "
                                "(PyTorch SDPA attention is used by default)") from None
        c.unet.to(self.device, self.weight_dtype)
        if cfg.channels_last:
            c.unet.to(memory_format=torch.channels_last)
        for te in c.text_encoders:
            te.to(self.device, self.weight_dtype)
        # The SDXL VAE overflows in fp16: keep it in float32 there (and whenever no_half_vae is set).
        vae_fp32 = self.precision == "no" or cfg.no_half_vae or (c.family.name == "sdxl" and self.precision == "fp16")
        c.vae.to(self.device, torch.float32 if vae_fp32 else self.weight_dtype)
        if cfg.gradient_checkpointing:
            c.unet.enable_gradient_checkpointing()
            c.unet.train()
            if self.train_te:
                for te in c.text_encoders:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    te.train()

        net_args = parse_network_args(cfg.network_args, cfg.network_module)
        rank, conv_dim = cfg.network_dim, net_args.conv_dim
        if cfg.dim_from_weights:  # the ranks of the file become this run's settings (metadata, saved config)
            rank, conv_dim = ranks_in_file(cfg.network_weights)
            args = [a for a in (cfg.network_args or []) if not a.replace(" ", "").startswith("conv_dim=")]
            self.cfg = cfg = cfg.replace(network_dim=rank, network_args=args + ([f"conv_dim={conv_dim}"] if conv_dim
                                                                                else []) or None)
            if self.is_main:
                log.info("dim_from_weights: rank %d%s from %s", rank, f", conv rank {conv_dim}" if conv_dim else "",
                         cfg.network_weights)
        torch.manual_seed(self.seed)  # identical initial adapters in every process
        self.network = LoRANetwork(c, rank, cfg.network_alpha, self.train_unet, self.train_te,
                                   cfg.network_dropout, conv_dim, net_args.conv_alpha, net_args)
        if cfg.network_weights:
            self.network.load_weights(cfg.network_weights)
        self.network.attach().to(self.device, torch.float32)
        if cfg.torch_compile:  # after the LoRA hooks are in place, so the compiled graph includes them
            c.unet.compile(backend=cfg.dynamo_backend)  # in place: the same module object everywhere
        self.network.train()
        if self.is_main:
            log.info("%s: %d U-Net and %d text-encoder modules, rank %d, alpha %s%s", net_args.describe(),
                     len(self.network.unet_stems), sum(len(s) for s in self.network.te_stems), rank,
                     cfg.network_alpha or rank,
                     f"; conv rank {conv_dim}, alpha {net_args.conv_alpha}" if conv_dim else "")
            if not net_args.diffusers_loads:
                log.warning("%s files load in AUTOMATIC1111, Forge and ComfyUI; diffusers cannot load them",
                            net_args.describe())

        unet_lr = cfg.unet_lr if cfg.unet_lr is not None else cfg.learning_rate
        te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
        groups = self.network.param_groups(unet_lr, te_lr if isinstance(te_lr, list) else [te_lr])
        if not groups:
            raise UserError("every learning rate is 0: nothing would be trained (check unet_lr / text_encoder_lr)")
        self.group_names = [g["name"] for g in groups]
        self.params = [p for g in groups for p in g["params"]]
        optimizer = build_optimizer(cfg, groups)

        plan = plan_steps(self.data.batches_per_epoch, cfg, self.world)
        self.updates_per_epoch, self.total_steps, self.total_epochs = (plan.steps_per_epoch, plan.total_steps,
                                                                       plan.total_epochs)
        self.lr_scheduler = build_scheduler(cfg, optimizer, self.total_steps)
        self.optimizer = self.accelerator.prepare(optimizer)
        self.meta = RunMetadata(cfg, self.data, c, random.randint(0, 2**31 - 1), time.time(), self.total_steps,
                                self.total_epochs, self.seed, self.world,
                                describe_optimizer(optimizer, cfg.optimizer_args))

        self._sampled_at = None
        self.latents = None
        if cfg.cache_latents or cfg.cache_latents_to_disk:
            self.latents = self._cache_latents()
            if not self.prompts:
                c.vae.to("cpu")  # not needed again: free the memory for training
        self.te_cache = None
        if cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk:
            self.te_cache = self._cache_text_encoder_outputs()
            if not self.prompts:
                for te in c.text_encoders:
                    te.to("cpu")
        set_seed(self.seed + self.rank)  # different noise in each process from here on
        self.start_step, self.start_epoch, self.start_batch = 0, 1, 0
        if self.resume is not None:
            self.resume.check_matches(cfg, self.network, self.data, self.world)
            self.resume.restore(self.network, self.optimizer, self.lr_scheduler, self.accelerator.scaler)
            self.resume.restore_rng(self.rank)
            self.start_step, self.start_epoch = self.resume.step, self.resume.epoch
            self.start_batch = self.resume.next_batch
            if self.is_main:
                log.info("resuming from %s: step %d, epoch %d, batch %d of the epoch", self.resume.folder,
                         self.start_step, self.start_epoch, self.start_batch)
        self._snapshot = None
        self._take_snapshot(self.start_step)

    def _encode_pixels(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        return encode_latents(self.components.vae, pixels, self.device, generator)

    def _cache_text_encoder_outputs(self):
        cfg, c = self.cfg, self.components
        check_te_cache_allowed(cfg, self.train_te, self.data)
        folders = {}
        for i, item in enumerate(self.data.items):
            folders.setdefault(self.data.caption_for(i, 0, (0,)), item.path.parent)
        fingerprint = te_fingerprint(c.text_encoders, cfg.clip_skip, cfg.max_token_length) + self.family.name

        def encode(captions):
            with self.accelerator.autocast():
                return self.family.encode_prompt(c, captions, cfg.clip_skip, cfg.max_token_length, self.device)

        to_disk = cfg.cache_text_encoder_outputs_to_disk
        if to_disk and self.world > 1:
            if self.is_main:
                build_te_cache(folders, encode, fingerprint, True)
            self.accelerator.wait_for_everyone()
        return build_te_cache(folders, encode, fingerprint, to_disk, show_progress=self.is_main)

    def _cache_latents(self):
        cfg = self.cfg
        vae_id = vae_fingerprint(self.components.vae)
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        fallback = Path(cfg.output_dir) / "latent_cache"

        def encode(pixels):
            return self._encode_pixels(pixels, generator)

        if cfg.cache_latents_to_disk and self.world > 1:
            if self.is_main:
                build_latent_cache(self.data, encode, vae_id, True, True, fallback)
            self.accelerator.wait_for_everyone()
            return build_latent_cache(self.data, encode, vae_id, True, False, fallback, show_progress=False)
        return build_latent_cache(self.data, encode, vae_id, cfg.cache_latents_to_disk, True, fallback,
                                  show_progress=self.is_main)

    # ------------------------------------------------------------------ steps
    def _batch_loss(self, batch: dict) -> torch.Tensor:
        cfg = self.cfg
        if "latents" in batch:
            latents = batch["latents"].to(self.device, non_blocking=True)
        else:
            latents = self._encode_pixels(batch["pixels"])
        latents = latents.float()
        if cfg.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        if self.te_cache is not None:
            cond = cached_condition(self.te_cache, batch["captions"], self.device)
        else:
            with torch.set_grad_enabled(self.train_te), self.accelerator.autocast():
                cond = self.family.encode_prompt(self.components, batch["captions"], cfg.clip_skip,
                                                 cfg.max_token_length, self.device)
        if self.family.size_conditioning:
            cond["time_ids"] = batch["time_ids"].to(self.device)
        noise = sample_noise(latents, cfg.noise_offset)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  device=self.device)
        with self.accelerator.autocast():
            return denoising_loss(self.components.unet, self.noise_scheduler, latents, cond,
                                  batch["loss_weights"], noise, timesteps, cfg.min_snr_gamma)

    def _average_gradients(self) -> None:
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def _optimizer_step(self) -> None:
        self._average_gradients()
        if self.cfg.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _log_estimate(self) -> None:
        cfg = self.cfg
        gpu = None
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(self.device)
            gpu = GPU(props.name, props.total_memory / 2**30)
        plan = plan_steps(self.data.batches_per_epoch, cfg, self.world)
        found = resource_estimate(cfg, self.data, plan.steps_per_epoch, gpu)
        if found is not None:
            log.info("resources: %s", found.describe())
            for warning in found.warnings:
                log.warning("%s", warning)

    # ------------------------------------------------------------------ state, resume, divergence
    def _read_resume_state(self) -> ResumeState | None:
        cfg = self.cfg
        if not cfg.resume:
            return None
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
                       data=self.data, seed=self.seed, world=self.world, rngs=rngs)
            log.info("saved state %s", folder)
        self.accelerator.wait_for_everyone()

    def _take_snapshot(self, step: int) -> None:
        """In-memory copy of the last good weights and optimizer, for nan_policy = "rollback"."""
        if self.cfg.nan_policy != "rollback":
            return
        import copy

        self._snapshot = (step, {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
                          copy.deepcopy(self.optimizer.state_dict()), copy.deepcopy(self.lr_scheduler.state_dict()))

    def _rollback(self) -> int:
        """Back to the snapshot with half the learning rate; returns the step to continue from."""
        step, weights, optim_state, sched_state = self._snapshot
        self.network.load_state_dict(weights)
        self.optimizer.load_state_dict(optim_state)
        self.lr_scheduler.load_state_dict(sched_state)
        self.lr_scheduler.base_lrs = [lr * 0.5 for lr in self.lr_scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5
            if "initial_lr" in group:
                group["initial_lr"] *= 0.5
        return step

    def _finite_on_device(self, loss: torch.Tensor) -> torch.Tensor:
        """One device boolean: the loss and every gradient are finite (no host sync)."""
        flags = [torch.isfinite(loss).all()] + [torch.isfinite(p.grad).all() for p in self.params
                                                if p.grad is not None]
        return torch.stack(flags).all()

    def _sanitize_gradients(self, ok: torch.Tensor) -> None:
        """Zero the gradients of a non-finite step on the device, so the weights stay finite without a sync.
        (With fp16 loss scaling the scaler already skips such steps and needs to see the infinities.)"""
        if self.accelerator.scaler is not None:
            return
        scale = ok.to(torch.float32)
        for p in self.params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
                p.grad.mul_(scale.to(p.grad.dtype))

    def _read_back(self, pending: list, bar, epoch: int, losses: list[float], started: float, bad_in_a_row: int,
                   rollbacks: int) -> tuple[int, int]:
        """Bring the buffered steps' losses and checks to the CPU in one transfer; report and guard them."""
        if not pending:
            return bad_in_a_row, rollbacks
        values = torch.stack([v.float() for _, v, _ in pending]).cpu().tolist()
        oks = torch.stack([o for _, _, o in pending]).cpu().tolist()
        steps = [s for s, _, _ in pending]
        pending.clear()
        for step, value, ok in zip(steps, values, oks):
            if ok:
                bad_in_a_row = 0
                losses.append(value)
                self._report(bar, step, epoch, losses, started)
                continue
            bad_in_a_row += 1
            log.warning("step %d: non-finite loss or gradients; trained on zeroed gradients (%d in a row)", step,
                        bad_in_a_row)
            if bad_in_a_row >= 3:
                if self.cfg.nan_policy == "rollback" and self._snapshot is not None and rollbacks < 3:
                    back_to = self._rollback()
                    log.warning("rolled back to the weights of step %d with half the learning rate", back_to)
                    return 0, rollbacks + 1
                raise Diverged(step - 1, value, self.cfg)
        return bad_in_a_row, rollbacks

    def _save(self, path: Path, epoch: int, step: int) -> Path:
        meta, spec = self.meta.for_save(epoch, step, time.time(), path.stem)
        save_lora(path, self.network.state_dict(), self.cfg.save_precision, meta, spec)
        self.events.emit("save", step=step, epoch=epoch, path=str(path))
        log.info("saved %s", path)
        return path

    def _prune_epoch_files(self, epoch: int) -> None:
        keep = self.cfg.save_last_n_epochs
        if not keep or not self.cfg.save_every_n_epochs:
            return
        old = epoch - keep * self.cfg.save_every_n_epochs
        if old >= 1:
            path = epoch_file(self.cfg, old)
            if path.exists():
                path.unlink()
                log.info("removed %s (save_last_n_epochs = %d)", path.name, keep)

    def _make_samples(self, epoch: int, step: int) -> None:
        """Sample images, with the training random state set aside (a resumed run draws the same noise)."""
        if not self.prompts or self._sampled_at == step:
            return
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            self._sample_images(epoch, step)

    def _sample_images(self, epoch: int, step: int) -> None:
        self._sampled_at = step
        if self.is_main:
            c = self.components
            c.vae.to(self.device)
            self.network.eval()
            for i, prompt in enumerate(self.prompts):
                with self.accelerator.autocast():
                    image = generate(c, prompt, self.cfg.sample_sampler, self.cfg.clip_skip,
                                     self.cfg.max_token_length, self.device, self.weight_dtype, self.seed + i)
                name = f"{self.cfg.output_name}_e{epoch:06d}_s{step:08d}_{i:02d}.png"
                path = self.paths["samples"] / name
                atomic_write(path, lambda tmp, img=image: img.save(tmp, format="PNG"))
                self.events.emit("sample", step=step, epoch=epoch, path=str(path), prompt=prompt.prompt)
            self.network.train()
        self.accelerator.wait_for_everyone()

    def _due(self, every: int | None, count: int) -> bool:
        return bool(every) and count % every == 0

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        cfg = self.cfg
        self.events = EventLog(self.paths["events"], _tensorboard_dir(cfg), enabled=self.is_main)
        stop = StopRequest(self.paths["stop"])
        stop.install()
        try:
            self._setup()
            if self.is_main:
                save_config(self.cfg, self.paths["config"])  # with the ranks dim_from_weights read
            return self._loop(stop)
        except Diverged as exc:
            self.events.emit("error", kind="diverged", message=str(exc))
            raise UserError(str(exc)) from None
        except UserError as exc:
            self.events.emit("error", kind="config", message=str(exc))
            raise
        except torch.cuda.OutOfMemoryError as exc:
            self.events.emit("error", kind="out_of_memory", message=_oom_advice(cfg))
            raise UserError(_oom_advice(cfg)) from exc
        except KeyboardInterrupt:
            self.events.emit("end", status="killed")
            raise
        except Exception as exc:
            self.events.emit("error", kind=type(exc).__name__, message=str(exc))
            raise
        finally:
            self.events.close()

    def _loop(self, stop: StopRequest) -> Path:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.events.emit("start", total_steps=self.total_steps, total_epochs=self.total_epochs,
                         steps_per_epoch=self.updates_per_epoch, num_images=len(self.data.items),
                         skipped=[str(p) for p, _ in self.data.skipped], output=str(self.paths["final"]),
                         seed=self.seed)
        if self.is_main:
            log.info("training %d steps (%d epochs of %d steps), batch %d x %d process(es) x %d accumulation",
                     self.total_steps, self.total_epochs, self.updates_per_epoch, self.data.datasets[0].batch_size,
                     self.world, cfg.gradient_accumulation_steps)
        if cfg.sample_at_first:
            self._make_samples(0, 0)

        bar = tqdm(total=self.total_steps, initial=self.start_step, desc="steps", disable=not self.is_main,
                   dynamic_ncols=True)
        step, epoch, loss_history = self.start_step, self.start_epoch, []
        started, self._rate_from = time.time(), self.start_step
        stopped, bad_in_a_row, rollbacks = False, 0, 0
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # steps not yet read back (sync_every_n_steps)
        state_every = cfg.save_state
        for epoch in range(self.start_epoch, self.total_epochs + 1):
            batches = shard_batches(self.data.plan_epoch(epoch), self.rank, self.world)
            skip = self.start_batch if epoch == self.start_epoch else 0
            loader = DataLoader(EpochBatches(self.data, batches, epoch, self.rank, self.latents, start=skip),
                                batch_size=None, shuffle=False, num_workers=cfg.max_data_loader_n_workers,
                                pin_memory=self.device.type == "cuda",
                                generator=torch.Generator().manual_seed(epoch))  # keeps the global RNG untouched
            accumulated = 0
            for offset, batch in enumerate(loader):
                index = skip + offset
                loss = self._batch_loss(batch) / cfg.gradient_accumulation_steps
                self.accelerator.backward(loss)
                accumulated += 1
                if accumulated < cfg.gradient_accumulation_steps and index < len(batches) - 1:
                    continue
                accumulated = 0
                if cfg.sync_every_n_steps > 1:  # no host sync this step: check and read back later
                    loss_value = loss.detach() * cfg.gradient_accumulation_steps
                    ok = self._finite_on_device(loss_value)
                    self._sanitize_gradients(ok)
                    self._optimizer_step()
                    step += 1
                    pending.append((step, loss_value, ok))
                    if (len(pending) >= cfg.sync_every_n_steps or step >= self.total_steps or step % 25 == 0
                            or self._due(cfg.save_every_n_steps, step) or self._due(cfg.sample_every_n_steps, step)
                            or index == len(batches) - 1):
                        bad_in_a_row, rollbacks = self._read_back(pending, bar, epoch, loss_history, started,
                                                                  bad_in_a_row, rollbacks)
                else:
                    loss_value = loss.detach() * cfg.gradient_accumulation_steps
                    value, ok = torch.stack([loss_value.float().reshape(()),  # one host sync for both
                                             self._finite_on_device(loss_value).float()]).tolist()
                    if not ok:
                        self.optimizer.zero_grad(set_to_none=True)  # this step is dropped: the weights stay good
                        bad_in_a_row += 1
                        log.warning("step %d: non-finite %s; step skipped (%d in a row)", step + 1,
                                    "loss" if not math.isfinite(value) else "gradients", bad_in_a_row)
                        if bad_in_a_row < 3:
                            continue
                        if cfg.nan_policy == "rollback" and self._snapshot is not None and rollbacks < 3:
                            rollbacks += 1
                            bad_in_a_row = 0
                            back_to = self._rollback()
                            log.warning("rolled back to the weights of step %d with half the learning rate (%s)",
                                        back_to, ", ".join(f"{lr:.3g}" for lr in self.lr_scheduler.get_last_lr()))
                            continue
                        raise Diverged(step, value, cfg)
                    bad_in_a_row = 0
                    self._optimizer_step()
                    step += 1
                    loss_history.append(value)
                    self._report(bar, step, epoch, loss_history, started)
                if step % 25 == 0:
                    self._take_snapshot(step)
                if self._due(cfg.save_every_n_steps, step) and step < self.total_steps:
                    if self.is_main:
                        self._save(step_file(cfg, step), epoch, step)
                    if state_every:
                        self._save_state(step_file(cfg, step), epoch, step, index + 1)
                if self._due(cfg.sample_every_n_steps, step):
                    self._make_samples(epoch, step)
                if step >= self.total_steps or self._stop_agreed(stop):
                    stopped = step < self.total_steps
                    self._end_position = (epoch, index + 1)
                    break
            else:
                self._end_position = (epoch + 1, 0)
            bad_in_a_row, rollbacks = self._read_back(pending, bar, epoch, loss_history, started, bad_in_a_row,
                                                      rollbacks)
            if stopped:
                break
            last = step >= self.total_steps
            if self._due(cfg.save_every_n_epochs, epoch) and not last:
                if self.is_main:
                    self._save(epoch_file(cfg, epoch), epoch, step)
                    self._prune_epoch_files(epoch)
                if state_every:
                    self._save_state(epoch_file(cfg, epoch), epoch + 1, step, 0)
            wants_samples = cfg.sample_every_n_epochs or cfg.sample_every_n_steps
            if self._due(cfg.sample_every_n_epochs, epoch) or (last and wants_samples):
                self._make_samples(epoch, step)
            if last:
                break
        bar.close()

        final = self.paths["final"]
        if self.is_main:
            self._save(final, epoch, step)
        if cfg.save_state or cfg.save_state_on_train_end:
            next_epoch, next_batch = getattr(self, "_end_position", (epoch + 1, 0))
            self._save_state(final, next_epoch, step, next_batch)
        if self.is_main:
            status = "stopped" if stopped else "completed"
            self.events.emit("end", status=status, step=step, epoch=epoch, output=str(final),
                             seconds=round(time.time() - started, 2))
            log.info("%s after %d steps: %s", status, step, final)
        self.accelerator.wait_for_everyone()
        return final

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Every process stops at the same step: the main process's request decides."""
        wanted = stop.poll() if self.is_main else False
        if self.world == 1:
            return wanted
        flag = torch.tensor([1.0 if wanted else 0.0], device=self.device)
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def _report(self, bar, step: int, epoch: int, losses: list[float], started: float) -> None:
        if not self.is_main:
            return
        window = losses[-50:]
        avg = sum(window) / len(window)
        elapsed = time.time() - started
        rate = (step - self._rate_from) / elapsed if elapsed > 0 else 0.0
        samples_per_s = rate * self.data.datasets[0].batch_size * self.world * self.cfg.gradient_accumulation_steps
        eta = (self.total_steps - step) / rate if rate > 0 else None
        lrs = self.lr_scheduler.get_last_lr()
        bar.set_postfix(loss=f"{losses[-1]:.4f}", avg=f"{avg:.4f}", epoch=epoch, refresh=False)
        bar.update(1)
        self.events.emit("step", step=step, epoch=epoch, loss=round(losses[-1], 6), avg_loss=round(avg, 6),
                         lr=lrs[0], samples_per_s=round(samples_per_s, 3),
                         eta_s=round(eta, 1) if eta is not None else None)
        scalars = {"loss/current": losses[-1], "loss/average": avg}
        for name, lr in zip(self.group_names, lrs):
            scalars[f"lr/{'unet' if name == 'unet' else name.replace('text_encoder', 'textencoder')}"] = lr
        self.events.scalars(step, scalars)


class Diverged(Exception):
    """Three optimizer steps in a row with a non-finite loss or gradients."""

    def __init__(self, step: int, value: float, cfg: Config):
        tips = [f"lower the learning rate (now {cfg.learning_rate:g})"]
        if cfg.mixed_precision == "fp16":
            tips.append("use mixed_precision = \"bf16\" (or \"no\") instead of fp16")
        if cfg.nan_policy != "rollback":
            tips.append("or set nan_policy = \"rollback\" to continue from the last good weights")
        super().__init__(f"training diverged at step {step + 1}: the loss or gradients stayed non-finite ({value}) "
                         f"for 3 steps, so the run stopped. The files saved so far are intact; the final file was "
                         f"not written. To fix: {'; '.join(tips)}")


def _tensorboard_dir(cfg: Config) -> str | None:
    if not cfg.logging_dir:
        return None
    return os.path.join(cfg.logging_dir, f"{cfg.output_name}-{time.strftime('%Y%m%d-%H%M%S')}")


def _oom_advice(cfg: Config) -> str:
    return "the GPU ran out of memory. Try: " + "; ".join(memory_tips(cfg))


def train(cfg: Config) -> Path:
    return Trainer(cfg).run()
