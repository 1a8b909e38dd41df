"""save_last_n_steps / save_last_n_steps_state / save_last_n_epochs / save_last_n_epochs_state keep the last N
files and states, as sd-scripts does; the final file and state stay."""

from __future__ import annotations

from conftest import base_settings, run_cli, write_config


def test_only_the_last_steps_and_epochs_are_kept(tiny_models, dataset, tmp_path):
    out = tmp_path / "out"
    # 8 images x 2 repeats, batch 2: 8 steps an epoch, 32 in 4 epochs
    settings = base_settings(tiny_models["folder"], dataset, out, output_name="run", max_train_steps=None,
                             max_train_epochs=4, save_every_n_steps=5, save_last_n_steps=10,
                             save_last_n_steps_state=5, save_every_n_epochs=1, save_last_n_epochs=2,
                             save_last_n_epochs_state=1, save_state=True)
    settings.pop("max_train_steps")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("run") and p.suffix in (".safetensors", "")
                   and p.name != "run_events.jsonl")
    assert names == ["run-000002.safetensors", "run-000003-state", "run-000003.safetensors",
                     "run-state", "run-step00000020.safetensors", "run-step00000025-state",
                     "run-step00000025.safetensors", "run-step00000030-state", "run-step00000030.safetensors",
                     "run.safetensors"]
    assert "removed run-step00000015.safetensors (save_last_n_steps = 10)" in proc.stderr
    assert "removed run-000001-state (save_last_n_epochs_state = 1)" in proc.stderr


def test_save_n_epoch_ratio_saves_about_that_many_epoch_files(tiny_models, tmp_path):
    """sd-scripts: save_every_n_epochs = floor(epochs / save_n_epoch_ratio) or 1; 6 epochs, ratio 3: every 2."""
    from lora_studio.demo import write_dataset

    data = write_dataset(tmp_path / "data", count=2, repeats=1)  # one step an epoch
    settings = base_settings(tiny_models["folder"], data, tmp_path / "out", max_train_steps=None, max_train_epochs=6,
                             save_n_epoch_ratio=3)
    settings.pop("max_train_steps")
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert "save_n_epoch_ratio: a LoRA file every 2 epoch(s) of 6 (about 3 over the run)" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == [
        "test_lora-000002.safetensors", "test_lora-000004.safetensors", "test_lora.safetensors"]


def test_output_config_writes_the_given_settings_to_a_new_file(tmp_path):
    target = tmp_path / "new.toml"
    run_cli("train", "--config", str(target), "--output_config", "--network_dim", "16", "--loss_type", "huber")
    from lora_studio.config import load_config

    cfg = load_config(target)
    assert cfg.network_dim == 16 and cfg.loss_type == "huber" and not cfg.output_config
    again = run_cli("train", "--config", str(target), "--output_config", "--network_dim", "8", check=False)
    assert again.returncode != 0 and "already exists; it is not overwritten" in again.stderr
    assert load_config(target).network_dim == 16
