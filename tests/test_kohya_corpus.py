"""Every LoRA type the Kohya_ss GUI offers, as its "Save config" JSON: imported with the values Kohya_ss passes to
sd-scripts, and trained 3 steps on the tiny models with only the model, the folders, the resolution and the step
count changed (sample images at the training size)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, write_config
from kohya_shapes import CORPUS, SDXL_CORPUS
from lora_studio.config.kohya_import import convert

ALL = {**CORPUS, **SDXL_CORPUS}


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_lora_type_imports_with_the_values_kohya_passes(name):
    data, expected = ALL[name]
    result = convert(data)
    for key, value in expected.items():
        assert result.settings.get(key) == value, key
    assert not [n for n in result.unsupported if "LoRA type" in n]  # every type of the dropdown is trained
    assert "LoRA_type" in result.carried


def _as_run(data: dict, model: Path, images: Path, out: Path) -> dict:
    settings = convert(data).settings
    prompts = out.parent / f"{out.name}-prompts.txt"
    text = convert(data).sample_prompt_text
    prompts.write_text(re.sub(r"--(w|h) \d+", r"--\1 64", re.sub(r"--s \d+", "--s 2", text)), encoding="utf-8")
    settings.update(pretrained_model_name_or_path=str(model), train_data_dir=str(images), output_dir=str(out),
                    logging_dir=str(out / "log"), resolution="64", max_train_steps=3, sample_prompts=str(prompts))
    settings.pop("max_train_epochs", None)
    return settings


def _kohya_gui_toml(root: Path, model: Path) -> Path:
    """The flat TOML the Kohya_ss GUI saves for a LyCORIS/LoKr preset (its own keys, its network_args list, a
    full-matrix rank), with sd-scripts' dataset TOML: [general], [[datasets]], [[datasets.subsets]] and an image_dir
    relative to the working folder, as sd-scripts reads it."""
    out = root / "gui-toml-with-dataset-toml"
    (root / "dataset.toml").write_text("""[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 64
batch_size = 2
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "data/img/1_lsdemo shape"
  num_repeats = 2
  class_tokens = "lsdemo shape"
""", encoding="utf-8")
    path = root / "config_lora-20261122.toml"
    path.write_text(f"""bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
caption_extension = ".txt"
clip_skip = 1
dataset_config = "{root / 'dataset.toml'}"
dynamo_backend = "no"
epoch = 1
gradient_accumulation_steps = 1
gradient_checkpointing = true
huber_c = 0.1
huber_scale = 1.0
huber_schedule = "snr"
learning_rate = 0.0001
loss_type = "l2"
lr_scheduler = "constant"
lr_scheduler_args = []
lr_scheduler_num_cycles = 1
lr_scheduler_power = 1.0
max_data_loader_n_workers = 0
max_grad_norm = 1.0
max_timestep = 1000
max_token_length = 75
max_train_steps = 3
mixed_precision = "bf16"
multires_noise_discount = 0.3
multires_noise_iterations = 10
network_alpha = 1
network_args = [ "preset=full", "conv_dim=100000", "conv_alpha=1", "use_tucker=False", "rank_dropout=0", "bypass_mode=False", "dora_wd=False", "module_dropout=0", "factor=4", "use_cp=True", "use_scalar=False", "decompose_both=True", "rank_dropout_scale=True", "train_norm=True", "algo=lokr",]
network_dim = 100000
network_module = "lycoris.kohya"
noise_offset_type = "Multires"
optimizer_args = [ "weight_decay=0.1", "betas=0.9,0.99",]
optimizer_type = "AdamW"
output_dir = "{out}"
output_name = "kohya_lokr"
pretrained_model_name_or_path = "{model}"
prior_loss_weight = 1.0
save_every_n_steps = 29
save_model_as = "safetensors"
save_precision = "fp16"
scale_weight_norms = 1
seed = 1234
text_encoder_lr = [ 0.0001,]
unet_lr = 0.0001
wandb_run_name = "kohya_lokr"
xformers = true
""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus_runs(tiny_models, tmp_path_factory):
    from lora_studio.demo import write_dataset
    from lora_studio.models.tiny import build_tiny_sdxl, save_single_file

    root = tmp_path_factory.mktemp("kohya_corpus")
    images = write_dataset(root / "data", count=4, repeats=1)
    unet, vae, tes, _ = build_tiny_sdxl(seed=0)
    sdxl = save_single_file(root / "tiny-sdxl.safetensors", unet, vae, tes)
    configs = {}
    for name, (data, _) in ALL.items():
        model = sdxl if name in SDXL_CORPUS else tiny_models["single"]
        configs[name] = write_config(root / f"{name}.toml", _as_run(data, model, images, root / name))
    configs["gui-toml-with-dataset-toml"] = _kohya_gui_toml(root, tiny_models["single"])
    results = {}
    for name, path in configs.items():  # in this process: one start-up of torch for every run
        proc = run_cli("train", "--config", str(path), cwd=root, check=False)
        results[name] = ("ok" if proc.returncode == 0 else proc.stderr[-3000:]), proc.stderr
    return {name: (status, root / name, log) for name, (status, log) in results.items()}


@pytest.mark.parametrize("name", sorted(ALL) + ["gui-toml-with-dataset-toml"])
def test_each_kohya_config_trains_three_steps_as_imported(corpus_runs, name):
    status, out, log = corpus_runs[name]
    assert status == "ok", status
    sd = load_file(str(next(out.glob("*.safetensors"))))
    assert sd and all(bool(torch.isfinite(v.float()).all()) for v in sd.values())
    events = [json.loads(line) for line in next(out.glob("*_events.jsonl")).read_text("utf-8").splitlines()]
    assert events[-1]["type"] == "end" and events[-1]["step"] == 3
    if name in ALL:
        assert any(e["type"] == "sample" for e in events)  # the preset's sample prompt, at the training size
    else:  # the full-matrix LoKr: whole Kronecker factors; its alpha of 100000 kept in float32 (fp16 cannot hold it)
        keys = {k.split(".", 1)[1] for k in sd if "attn1_to_q" in k}
        assert keys == {"lokr_w1", "lokr_w2", "alpha"} and any(k.endswith("w_norm") for k in sd)
        assert {float(v) for k, v in sd.items() if k.endswith("alpha")} >= {100000.0}
