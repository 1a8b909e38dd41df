"""Pause in place: the run waits after a step with the model in memory, makes test images on its current weights
when asked, and goes on exactly where it was.

The GUI (or anyone) asks through files beside the run's outputs (``outputs.output_paths``), so no port is opened:
  ``<output_name>.pause``              exists: pause after this step; removed: resume
  ``<output_name>.tests/<id>.json``    a test request: {"prompts": [...], "negative": "", "seeds": [1],
                                       "strengths": [1.0], "sampler": "euler_a", "steps": 20, "width": 512,
                                       "height": 512, "cfg_scale": 7.0}
  ``<output_name>.tests/<id>.done.json``  its answer: {"images": [{"path", "prompt", "seed", "strength"}], "error"}
While paused the run writes a state (``<output_name>-paused-state``), so it can also be resumed after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..io_utils import atomic_write
from .render_requests import POLL_SECONDS, RenderRequest, answer, pending_tests
from .sampling import SamplePrompt, generate

log = logging.getLogger("lora_studio")



def wait_while_paused(paths: dict[str, Path], stop, studio: TestStudio, epoch: int, step: int, state: Path,
                      events) -> bool:
    """Wait, answering test requests, until the pause file is removed (resume) or a stop is asked for (True)."""
    events.emit("paused", step=step, epoch=epoch, state=str(state))
    log.info("paused after step %d: remove %s to go on; test requests in %s are answered meanwhile", step,
             paths["pause"], paths["tests"])
    stopping = False
    while True:
        for request in pending_tests(paths["tests"]):
            studio.answer(request, epoch, step)
        if stop.poll():
            stopping = True
            break
        if not paths["pause"].exists():
            break
        time.sleep(POLL_SECONDS)
    events.emit("resumed", step=step, epoch=epoch, stopping=stopping)
    log.info("%s at step %d", "stopping" if stopping else "resumed", step)
    return stopping


class TestStudio:
    """Renders requests with the network as it is now, at each asked strength, with the training's random state
    set aside (so the run goes on as if it never paused)."""

    __test__ = False  # not a pytest class

    def __init__(self, components, network, precision, device, cfg, events, prepare=None):
        self.components, self.network, self.precision = components, network, precision
        self.device, self.cfg, self.events = device, cfg, events
        self.prepare = prepare  # loads back what the run freed (VAE, text encoders) before the first image

    def answer(self, request_path: Path, epoch: int, step: int) -> None:
        images: list[dict] = []
        error = None
        try:
            request = RenderRequest.read(request_path)
            folder = request_path.with_name(request_path.stem)
            folder.mkdir(exist_ok=True)
            devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            self.network.eval()
            with torch.random.fork_rng(devices=devices):
                if self.prepare is not None:
                    self.prepare()
                with self._generation_models():
                    for k, text in enumerate(request.prompts):
                        for seed in request.seeds:
                            for strength in request.strengths:
                                images.append(self._render(request, folder, k, text, seed, strength))
        except UserError as exc:
            error = str(exc)
        finally:
            self.network.set_multiplier(1.0)
            self.network.train()
        answer(request_path, images, error)
        self.events.emit("test", id=request_path.stem, step=step, epoch=epoch, images=images, error=error)
        log.info("test %s: %s", request_path.stem, error or f"{len(images)} image(s) in {request_path.parent}")

    def _render(self, request: RenderRequest, folder: Path, k: int, text: str, seed: int, strength: float) -> dict:
        cfg = self.cfg
        self.network.set_multiplier(strength)
        prompt = SamplePrompt(text, request.negative, request.width, request.height, seed, request.steps,
                              request.cfg_scale, request.sampler)
        with self.precision.autocast(self.device):
            image = generate(self.components, prompt, request.sampler, self.components.family.prompt_options(cfg),
                             self.device, self.precision.weight_dtype, seed)
        path = folder / f"{k:02d}_seed{seed}_x{strength:g}.png"
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
        return {"path": str(path), "prompt": text, "seed": seed, "strength": strength}

    @contextlib.contextmanager
    def _generation_models(self):
        """The VAE and text encoders on the training device while images are made (cached runs park them on the
        CPU), back where they were afterwards."""
        c = self.components
        parts = [c.vae, *c.text_encoders]
        places = [next(m.parameters()).device for m in parts]
        for m in parts:
            m.to(self.device)
        try:
            yield
        finally:
            for m, place in zip(parts, places):
                m.to(place)
