"""Check settings reads the base model before a start: its type, its family, that it is complete; what is wrong is
said next to the model field (``pretrained_model_name_or_path``), not 24 s after Start in the Runs tab."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from lora_studio.gui.form import check_form, form_values

FIELD = "pretrained_model_name_or_path"


def _problem(model, dataset, tmp_path, **extra) -> str | None:
    values = form_values({FIELD: str(model), "train_data_dir": str(dataset), "output_dir": str(tmp_path / "out"),
                          "resolution": "64", **extra})
    return check_form(values, scan_dataset=False).problems.get(FIELD)


def test_a_sound_checkpoint_and_folder_pass(tiny_models, dataset, tmp_path):
    assert _problem(tiny_models["single"], dataset, tmp_path) is None
    assert _problem(tiny_models["folder"], dataset, tmp_path) is None


def test_a_text_file_given_as_the_model_is_named_at_check_settings(dataset, tmp_path):
    notes = tmp_path / "model.txt"
    notes.write_text("https://civitai.com/models/4384 (download this one)\n", encoding="utf-8")
    problem = _problem(notes, dataset, tmp_path)
    assert problem and str(notes) in problem and "cannot read" in problem and "diffusers model folder" in problem


def test_a_cut_short_download_is_named(tiny_models, dataset, tmp_path):
    cut = tmp_path / "model.safetensors"
    data = tiny_models["single"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    problem = _problem(cut, dataset, tmp_path)
    assert problem and "is the download complete?" in problem


def test_a_checkpoint_without_its_vae_needs_a_vae_file(tiny_models, dataset, tmp_path):
    weights = load_file(str(tiny_models["single"]))
    no_vae = tmp_path / "no-vae.safetensors"
    save_file({k: v for k, v in weights.items() if not k.startswith("first_stage_model.")}, str(no_vae))
    problem = _problem(no_vae, dataset, tmp_path)
    assert problem and "incomplete SD" in problem and "no VAE weights" in problem and "vae" in problem
    vae = tmp_path / "vae.safetensors"
    save_file({k: v for k, v in weights.items() if k.startswith("first_stage_model.")}, str(vae))
    assert _problem(no_vae, dataset, tmp_path, vae=str(vae)) is None


def test_a_pickle_checkpoint_needs_consent(tiny_models, dataset, tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not opened at check time")
    assert "is a pickle file (.ckpt)" in _problem(ckpt, dataset, tmp_path)
    assert _problem(ckpt, dataset, tmp_path, allow_pickle=True) is None  # only the engine opens it


@pytest.mark.parametrize("part", ["vae", "unet"])
def test_a_diffusers_folder_missing_a_part_is_named(tiny_models, dataset, tmp_path, part):
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["folder"], folder)
    for weights in (folder / part).glob("*.safetensors"):
        weights.unlink()
    problem = _problem(folder, dataset, tmp_path)
    assert problem and f"{part}/ has no weights file" in problem
