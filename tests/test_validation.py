"""Validation loss (sd-scripts' validation_split, validation_seed, validate_every_n_*), keep-best and early stop."""

from __future__ import annotations

import json
import random

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_studio.config import build_config
from lora_studio.data.dataset import TrainingData
from lora_studio.data.sources import datasets_from_config
from lora_studio.errors import UserError
from lora_studio.models.ddpm import DDPMObjective, validation_timesteps
from lora_studio.models.loading import load_components
from lora_studio.training import faults
from lora_studio.training.precision import Precision
from lora_studio.training.step import BatchLoss, noise_recipe
from lora_studio.training.validation import BestTracker, Validation


def _data(dataset, seed=0, **settings) -> TrainingData:
    cfg = build_config({"train_data_dir": str(dataset), "resolution": "64", **settings})
    return TrainingData(datasets_from_config(cfg), 1.0, seed)


def test_held_out_images_never_train_and_the_seed_chooses_them(dataset):
    data = _data(dataset, validation_split=0.25)
    held = {it.path.name for it in data.items if it.held_out}
    assert len(held) == 2 and data.num_validation_images == 2
    assert data.num_train_images == 6 * 2  # 8 images x 2 repeats, less the 2 held out
    for epoch in range(1, 4):
        trained = {data.items[i].path.name for batch in data.plan_epoch(epoch) for i, _ in batch}
        assert trained.isdisjoint(held) and len(trained) == 6
    assert {data.items[i].path.name for batch in data.validation_batches() for i, _ in batch} == held
    assert {it.path.name for it in _data(dataset, validation_split=0.25).items if it.held_out} == held  # fixed
    others = [{it.path.name for it in _data(dataset, validation_split=0.25, validation_seed=s).items if it.held_out}
              for s in range(1, 6)]
    assert any(o != held for o in others)
    lone = dataset.parent / "one" / "1_x"
    lone.mkdir(parents=True)
    first = sorted(dataset.glob("*/*.png"))[0]
    (lone / first.name).write_bytes(first.read_bytes())
    with pytest.raises(UserError, match="validation_split = 0.6 holds out every training image"):
        _data(lone.parent, validation_split=0.6)


def test_validation_is_the_same_number_twice_and_leaves_the_training_randomness(tiny_models, dataset):
    components = load_components(str(tiny_models["single"]), None, False)
    cfg = build_config({"train_data_dir": str(dataset), "resolution": "64", "validation_split": 0.25,
                        "noise_offset": 0.05})
    objective = DDPMObjective(DDPMScheduler.from_config(components.scheduler_config), noise_recipe(cfg))
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    loss = BatchLoss(components, objective, cfg, torch.device("cpu"), Precision("no", torch.float32), False, None)
    validation = Validation(cfg, data, None, loss, 0, 10)
    assert validation.timesteps == [200, 400, 600, 800] == validation_timesteps(None, None, 1000)
    torch.manual_seed(5)
    random.seed(5)
    first = validation.measure()
    after = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    expected = (torch.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1]  # the training's draws are untouched
    assert validation.measure() == first  # the same weights: the same number
    with torch.no_grad():
        components.denoiser.conv_in.weight.mul_(1.5)
    assert validation.measure() != first


def test_the_best_and_early_stop_on_a_scripted_curve():
    tracker = BestTracker(patience=2, min_delta=0.02)
    curve = [1.0, 0.8, 0.85, 0.79, 0.6]
    verdicts = []
    for n, loss in enumerate(curve, 1):
        verdicts.append(tracker.update(loss, n, n * 10))
        if tracker.should_stop:
            break
    # 0.79 is lower than 0.8 but not by 0.02: the second validation without an improvement stops the run
    assert verdicts == [True, True, False, False] and (tracker.best, tracker.best_epoch) == (0.8, 2)
    assert "2 validations without an improvement of at least 0.02 (best 0.8 at epoch 2, step 20)" in \
        tracker.stop_reason()
    again = BestTracker(2, 0.02)
    again.restore(tracker.as_dict())  # a resumed run goes on counting
    assert again.update(0.7, 5, 50) and not again.should_stop


def test_a_run_keeps_its_best_file_and_stops_early(tiny_models, dataset, tmp_path, monkeypatch):
    """A real run with a scripted validation curve: the best file is the epoch with the lowest loss, and the run
    stops gracefully (with its final file) at the expected validation, saying why."""
    monkeypatch.setenv(faults.VALIDATION_LOSSES, "1.0,0.7,0.75,0.72,0.5,0.4")
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=None, max_train_epochs=6,
                             save_every_n_epochs=1, validation_split=0.25, save_best=True, early_stop_patience=2,
                             logging_dir=str(tmp_path / "logs"))
    settings.pop("max_train_steps")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    events = [json.loads(line) for line in (out / "test_lora_events.jsonl").read_text().splitlines()]
    validations = [e for e in events if e["type"] == "validation"]
    assert [v["loss"] for v in validations] == [1.0, 0.7, 0.75, 0.72]
    assert [v["epoch"] for v in validations] == [1, 2, 3, 4]
    end = events[-1]
    assert end["type"] == "end" and end["status"] == "stopped" and end["epoch"] == 4
    assert end["reason"].startswith("early stop: 2 validations without an improvement") and end["best"]["best"] == 0.7
    assert "early stop: 2 validations" in proc.stderr
    best, second = load_file(str(out / "test_lora-best.safetensors")), load_file(str(out / "test_lora-000002.safetensors"))
    assert best.keys() == second.keys() and all(torch.equal(best[k], second[k]) for k in best)
    final = load_file(str(out / "test_lora.safetensors"))
    assert not all(torch.equal(best[k], final[k]) for k in best)  # training went on after the best epoch
    with safe_open(str(out / "test_lora-best.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["lora_studio_best"] == "the lowest validation loss, 0.7, at epoch 2, step 12"
    assert meta["ss_num_validation_images"] == "2" and meta["ss_validation_split"] == "0.25"
    assert not (out / "test_lora-000005.safetensors").exists()
    # what the GUI shows from the events: the validation loss beside the training loss, the best, why it ended
    from lora_studio.gui.views import loss_frame
    from lora_studio.jobs.live import EventsFollower

    state = EventsFollower(out / "test_lora_events.jsonl").update()
    frame = loss_frame(state)
    assert frame[frame.series == "validation"].loss.tolist() == [1.0, 0.7, 0.75, 0.72]
    assert state.best == {"loss": 0.7, "epoch": 2, "step": 12} and state.end["reason"].startswith("early stop")
