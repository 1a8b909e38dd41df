"""``resolve``: the settings a run trains with and every warning about them, computed once and shown the same by
**Check settings** (before a start) and by the engine (at the start); W&B without a key is one of them."""

from __future__ import annotations

import pytest

from conftest import base_settings, run_cli, write_config
from lora_studio.config import build_config
from lora_studio.data.dataset import TrainingData
from lora_studio.data.sources import datasets_from_config
from lora_studio.gui.form import check_form, form_values
from lora_studio.training.resolve import resolve

# setting changes -> (the setting a warning is about, words of its message)
CASES = {
    "persistent workers": ({"persistent_data_loader_workers": True}, "persistent_data_loader_workers",
                           "no effect with max_data_loader_n_workers = 0"),
    "constant warm-up": ({"lr_warmup_steps": 3, "lr_scheduler": "constant"}, "lr_warmup_steps",
                         "ignored by lr_scheduler \"constant\""),
    "scheduler type warm-up": ({"lr_warmup_steps": 3, "lr_scheduler_type": "ConstantLR"}, "lr_warmup_steps",
                               "ignored with lr_scheduler_type ConstantLR"),
    "schedule-free warm-up": ({"lr_warmup_steps": 3, "optimizer_type": "AdamWScheduleFree"}, "lr_warmup_steps",
                              "optimizer_args warmup_steps=N instead"),
    "adafactor part rates": ({"optimizer_type": "Adafactor", "unet_lr": 1e-4}, "unet_lr",
                             "unet_lr and text_encoder_lr are ignored"),
    "save_best without validation": ({"save_best": True}, "validation_split", "they do nothing now"),
    "latent cache with color_aug": ({"color_aug": True}, "cache_latents", "latent caching is off"),
    "lycoris not read": ({"network_module": "lycoris.kohya", "network_args": ["algo=locon", "train_on_input=true"]},
                         "network_args", "lycoris.kohya does not read train_on_input"),
    "fp16 on a CPU": ({"mixed_precision": "fp16"}, "mixed_precision", "fp16 needs an NVIDIA GPU"),
}


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_OFFLINE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("machine example.org login me password x\n", encoding="utf-8")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def _resolved(settings: dict):
    cfg = build_config(settings)
    return resolve(cfg, TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, 0))


@pytest.mark.parametrize("case", list(CASES))
def test_check_settings_shows_each_warning_the_engine_gives(case, tiny_models, dataset, tmp_path):
    changes, setting, words = CASES[case]
    settings = base_settings(tiny_models["single"], dataset, tmp_path / "out", **changes)
    found = [m for name, m in _resolved(settings).warnings if name == setting and words in m]
    assert found, _resolved(settings).warnings
    shown = check_form(form_values(settings)).warnings
    assert f"{setting}: {found[0]}" in shown, shown
    assert not [m for _, m in _resolved(base_settings(tiny_models["single"], dataset, tmp_path / "out")).warnings]


def test_save_n_epoch_ratio_becomes_save_every_n_epochs_before_the_start(tiny_models, dataset, tmp_path):
    settings = base_settings(tiny_models["single"], dataset, tmp_path / "out", max_train_steps=None,
                             max_train_epochs=6, save_n_epoch_ratio=3)
    resolved = _resolved(settings)
    assert resolved.cfg.save_every_n_epochs == 2 and resolved.plan.total_epochs == 6
    note = "a LoRA file every 2 epoch(s) of 6 (about 3 over the run)"
    assert ("save_n_epoch_ratio", note) in resolved.notes
    assert f"save_n_epoch_ratio: {note}" in check_form(form_values(settings)).warnings


def test_wandb_without_a_key_is_named_at_check_and_at_the_start_and_the_run_trains_offline(
        tiny_models, dataset, tmp_path, no_wandb_key):
    settings = base_settings(tiny_models["single"], dataset, tmp_path / "out", max_train_steps=2, log_with="wandb",
                             logging_dir=str(tmp_path / "logs"), persistent_data_loader_workers=True)
    (shown,) = [w for w in check_form(form_values(settings)).warnings if w.startswith("log_with:")]
    for way_out in ("wandb_api_key", "`wandb login`", "WANDB_MODE=offline", "log_with = \"tensorboard\""):
        assert way_out in shown
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert "Traceback" not in proc.stderr
    for warning in check_form(form_values(settings)).warnings:  # every warning Check settings showed, at the start
        if warning.split(":")[0] in ("log_with", "persistent_data_loader_workers"):
            assert warning in proc.stderr, warning
    assert "(offline)" in proc.stderr and (tmp_path / "out" / "test_lora.safetensors").is_file()
    assert list((tmp_path / "logs").glob("*/wandb/offline-run-*"))


def test_a_wandb_key_in_the_environment_or_netrc_is_enough(tiny_models, dataset, tmp_path, no_wandb_key,
                                                           monkeypatch):
    from lora_studio.training.trackers import wandb_key_missing

    cfg = build_config({"log_with": "wandb"})
    assert wandb_key_missing(cfg)
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123\n", encoding="utf-8")
    assert wandb_key_missing(cfg) is None
    (tmp_path / "netrc").write_text("", encoding="utf-8")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_key_missing(cfg) is None
    assert wandb_key_missing(build_config({"log_with": "tensorboard", "logging_dir": "x"})) is None
