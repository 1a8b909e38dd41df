"""``train --allow-dir``: every path a run reads or writes, wherever it is named (the config, a dataset TOML, an
in_json, a conditioning folder, a link), must resolve inside an allowed folder, or the run stops before it reads or
writes anything; a confined run imports callables only from the trusted list; the GUI's check uses the same rule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from conftest import base_settings, run_cli, write_config
from lora_studio.confinement import Confinement
from lora_studio.errors import UserError


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def place(tmp_path, tiny_models, dataset):
    """``allowed/`` (the dataset, the config and the outputs) and ``outside/`` (an image folder nobody allowed)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    (outside / "secret").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (200, 10 * i, 0)).save(outside / "secret" / f"{i}.png")
    os.rename(dataset.parent, allowed / "data")
    settings = base_settings(tiny_models["single"], allowed / "data" / "img", allowed / "out", max_train_steps=2)
    return {"allowed": allowed, "outside": outside, "settings": settings,
            "dirs": ["--allow-dir", str(allowed), "--allow-dir", str(tiny_models["single"].parent)]}


def _refused(place, *, match: str, path_outside: bool = True, **changes) -> str:
    config = write_config(place["allowed"] / "run.toml", {**place["settings"], **changes})
    before_allowed, before_outside = _tree(place["allowed"]), _tree(place["outside"])
    proc = run_cli("train", "--config", str(config), *place["dirs"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    if path_outside:
        assert "outside the folders allowed" in message and "nothing was read or written" in message, message
    assert match in message, message
    assert _tree(place["allowed"]) == before_allowed  # no output folder, no cache, no log
    assert _tree(place["outside"]) == before_outside
    return message


def test_a_dataset_toml_pointing_outside_is_refused_naming_the_subset_and_path(place):
    toml = place["allowed"] / "dataset.toml"
    toml.write_text(f"[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = "
                    f"{json.dumps(str(place['outside'] / 'secret'))}\nnum_repeats = 1\n", encoding="utf-8")
    message = _refused(place, match=str(place["outside"] / "secret"), dataset_config=str(toml), train_data_dir=None)
    assert "image_dir" in message


def test_in_json_images_outside_are_refused(place):
    meta = place["allowed"] / "meta.json"
    meta.write_text(json.dumps({str(place["outside"] / "secret" / "0.png"): {"caption": "a secret"}}), encoding="utf-8")
    message = _refused(place, match=str(place["outside"] / "secret" / "0.png"), in_json=str(meta),
                       train_data_dir=str(place["allowed"] / "data" / "img" / "2_lsdemo shape"))
    assert "meta.json names" in message


def test_a_conditioning_folder_outside_is_refused(place):
    _refused(place, match="conditioning_data_dir", masked_loss=True,
             conditioning_data_dir=str(place["outside"] / "secret"))


def test_an_output_folder_outside_is_refused(place):
    _refused(place, match="output_dir", output_dir=str(place["outside"] / "out"))
    assert not (place["outside"] / "out").exists()


def test_a_link_inside_that_leads_outside_is_refused(place):
    images = place["allowed"] / "data" / "img" / "2_lsdemo shape"
    (images / "linked.png").symlink_to(place["outside"] / "secret" / "0.png")
    message = _refused(place, match="linked.png")
    assert f"which leads to {place['outside'] / 'secret' / '0.png'}" in message
    # a linked folder too: the allowed name resolves outside
    (images / "linked.png").unlink()
    (place["allowed"] / "data" / "more").symlink_to(place["outside"] / "secret", target_is_directory=True)
    _refused(place, match="reg_data_dir", reg_data_dir=str(place["allowed"] / "data" / "more"))
    # and a cache folder in the output folder that leads outside (latents of a read-only image folder go there)
    (place["allowed"] / "out").mkdir()
    (place["allowed"] / "out" / "latent_cache").symlink_to(place["outside"], target_is_directory=True)
    _refused(place, match="latent_cache")


def test_sample_prompts_resume_and_network_weights_outside_are_refused(place):
    prompts = place["outside"] / "prompts.txt"
    prompts.write_text("a prompt\n", encoding="utf-8")
    _refused(place, match="sample_prompts", sample_prompts=str(prompts), sample_every_n_steps=1)
    _refused(place, match="network_weights", network_weights=str(place["outside"] / "lora.safetensors"))
    _refused(place, match="resume", resume=str(place["outside"]))


def test_a_confined_run_names_no_arbitrary_callable(place):
    message = _refused(place, match="optimizer_type", path_outside=False, optimizer_type="os.system")
    assert "'os.system' is not among the names this confined run may import" in message
    _refused(place, match="lr_scheduler_type", path_outside=False, lr_scheduler_type="subprocess.Popen")


def test_a_confined_run_inside_its_folders_trains_and_imports_trusted_names(place):
    config = write_config(place["allowed"] / "run.toml",
                          {**place["settings"], "optimizer_type": "torch.optim.SGD",
                           "lr_scheduler_type": "torch.optim.lr_scheduler.ConstantLR"})
    run_cli("train", "--config", str(config), *place["dirs"])
    assert (place["allowed"] / "out" / "test_lora.safetensors").is_file()


def test_unconfined_a_dotted_callable_is_imported_and_named_in_the_log(caplog):
    from lora_studio.training.optim import optimizer_class

    caplog.set_level("INFO")
    assert optimizer_class("torch.optim.SGD").__name__ == "SGD"
    assert "optimizer_type: importing torch.optim.SGD" in caplog.text
    with pytest.raises(UserError, match="optimizer_type: .*'os.system' is not among"):
        Confinement.of(["/nowhere"]).import_callable("os.system", "optimizer_type")


def test_the_gui_check_uses_the_engines_rule(place):
    from lora_studio.gui.form import check_form, form_values

    meta = place["allowed"] / "meta.json"
    meta.write_text(json.dumps({str(place["outside"] / "secret" / "1.png"): {"caption": "x"}}), encoding="utf-8")
    values = form_values({**place["settings"], "in_json": str(meta)})
    roots = [place["allowed"], place["settings"]["pretrained_model_name_or_path"] and
             Path(place["settings"]["pretrained_model_name_or_path"]).parent]
    check = check_form(values, roots=roots)
    assert any("1.png" in m and "outside the folders allowed" in m for m in check.problems.values()), check.problems
    values = form_values({**place["settings"], "optimizer_type": "os.system"})
    assert "not among the names" in check_form(values, scan_dataset=False, roots=roots).problems["optimizer_type"]
