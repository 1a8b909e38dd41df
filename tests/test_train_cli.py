"""The engine end to end through the real CLI and accelerate launch, on tiny models on the CPU."""

import pytest
import torch
from conftest import accelerate_launch, base_settings, run_cli, write_config
from safetensors.torch import load_file

from lora_studio.config import load_config
from lora_studio.training.events import read_events


def test_cli_run_writes_everything(trained_run):
    out, proc = trained_run["out"], trained_run["proc"]
    assert (out / "test_lora.safetensors").is_file()
    assert (out / "test_lora-000001.safetensors").is_file()  # per-epoch file; the last epoch is the final file
    assert not (out / "test_lora-000002.safetensors").exists()
    assert not list(out.glob(".*.tmp"))  # no temp file left behind
    saved = load_config(out / "test_lora_config.toml")
    assert saved.as_dict() == load_config(trained_run["config"]).as_dict()

    events = read_events(out / "test_lora_events.jsonl")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and events[-1]["status"] == "completed"
    assert events[0]["total_steps"] == 12 and events[0]["total_epochs"] == 2
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert all(e["loss"] > 0 and e["lr"] == 1e-3 and e["samples_per_s"] > 0 and e["eta_s"] is not None
               for e in steps)
    assert [e["path"].rsplit("/", 1)[1] for e in events if e["type"] == "save"] == \
        ["test_lora-000001.safetensors", "test_lora.safetensors"]
    samples = sorted(p.name for p in (out / "sample").iterdir())
    assert samples == ["test_lora_e000001_s00000006_00.png", "test_lora_e000001_s00000006_01.png",
                       "test_lora_e000002_s00000012_00.png", "test_lora_e000002_s00000012_01.png"]
    assert len([e for e in events if e["type"] == "sample"]) == 4
    assert list((trained_run["root"] / "log").rglob("events.out.tfevents.*"))  # TensorBoard scalars
    assert "steps: 100%" in proc.stderr and "loss=" in proc.stderr  # the tqdm bar


def _weights(path):
    return load_file(str(path))


def test_same_seed_same_weights_and_single_file_loads_as_the_folder(tiny_models, dataset, tmp_path):
    """Two runs with the same seed end with the same bits, from the folder and from the single file; the single file
    loads into the very weights and buffers the folder does. (The two trained files are not compared bit for bit:
    diffusers leaves a folder's U-Net weights 8 bytes past a 64-byte boundary, our reader aligns them, and with one
    CPU thread a 1x1 convolution rounds differently on the two.)"""
    from lora_studio.models.loading import load_components

    files = []
    models = [tiny_models["folder"], tiny_models["folder"], tiny_models["single"], tiny_models["single"]]
    for i, model in enumerate(models):
        cfg = write_config(tmp_path / f"run{i}.toml", base_settings(model, dataset, tmp_path / f"out{i}",
                                                                    max_train_steps=4, cache_latents=False))
        run_cli("train", "--config", str(cfg))
        files.append(_weights(tmp_path / f"out{i}" / "test_lora.safetensors"))
    assert files[0].keys() == files[1].keys() == files[2].keys() == files[3].keys()
    for key in files[0]:
        assert torch.equal(files[0][key], files[1][key]), key
        assert torch.equal(files[2][key], files[3][key]), key
        assert files[0][key].shape == files[2][key].shape, key
    assert any(files[0][k].abs().sum() > 0 for k in files[0] if "lora_up" in k)
    folder, single = (load_components(str(tiny_models[k]), None, False) for k in ("folder", "single"))
    for a, b in ((folder.denoiser, single.denoiser), (folder.vae, single.vae),
                 (folder.text_encoders[0], single.text_encoders[0])):
        ours, theirs = dict(a.named_parameters()), dict(b.named_parameters())
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
        ours, theirs = dict(a.named_buffers()), dict(b.named_buffers())
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_accelerate_launch_one_process(tiny_models, dataset, tmp_path):
    cfg = write_config(tmp_path / "run.toml", base_settings(tiny_models["single"], dataset, tmp_path / "out",
                                                            max_train_steps=3))
    accelerate_launch(cfg, 1)
    assert (tmp_path / "out" / "test_lora.safetensors").is_file()


def test_sd_scripts_configs_run_unchanged(tiny_models, tmp_path):
    import random

    from lora_studio.demo import draw_concept

    rng = random.Random(1)
    for sub, n in (("chars", 3), ("extra", 2)):
        folder = tmp_path / sub
        folder.mkdir()
        for i in range(n):
            draw_concept(rng).save(folder / f"{i}.png")
            (folder / f"{i}.caption").write_text("lsdemo shape, disc", encoding="utf-8")
    (tmp_path / "chars" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "dataset.toml").write_text(
        "[general]\nshuffle_caption = true\ncaption_extension = '.caption'\nkeep_tokens = 1\n\n"
        "[[datasets]]\nresolution = 64\nbatch_size = 2\n\n"
        f"  [[datasets.subsets]]\n  image_dir = '{tmp_path / 'chars'}'\n  class_tokens = 'lsdemo shape'\n"
        "  num_repeats = 2\n\n"
        f"  [[datasets.subsets]]\n  image_dir = '{tmp_path / 'extra'}'\n  num_repeats = 1\n", encoding="utf-8")
    # As the Kohya_ss GUI writes it: sections, sd-scripts names, options at their defaults.
    (tmp_path / "config.toml").write_text(f"""
[model_arguments]
pretrained_model_name_or_path = "{tiny_models['single']}"
v2 = false
v_parameterization = false

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 8
network_alpha = 4
network_train_unet_only = false
unet_lr = 0.001
text_encoder_lr = 0.0005

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 0.001
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 2
lr_warmup_steps = 0.25
max_grad_norm = 1.0

[dataset_arguments]
dataset_config = "{tmp_path / 'dataset.toml'}"
cache_latents = true
debug_dataset = false

[training_arguments]
output_dir = "{tmp_path / 'out'}"
output_name = "kohya_style"
save_precision = "fp16"
save_every_n_steps = 2
max_train_steps = 5
mixed_precision = "bf16"
gradient_checkpointing = true
gradient_accumulation_steps = 2
seed = 7
noise_offset = 0.05
min_snr_gamma = 5
clip_skip = 2
max_token_length = 150
lowram = false
mem_eff_attn = false
xformers = false
sdpa = true
persistent_data_loader_workers = false
max_data_loader_n_workers = 1
epoch = 1
""", encoding="utf-8")
    proc = run_cli("train", "--config", str(tmp_path / "config.toml"))
    out = tmp_path / "out"
    assert "broken.png" in proc.stderr  # the unreadable image is named
    events = read_events(out / "kohya_style_events.jsonl")
    assert events[0]["skipped"] == [str(tmp_path / "chars" / "broken.png")]
    assert events[0]["total_steps"] == 5 and events[-1]["status"] == "completed"
    lrs = [e["lr"] for e in events if e["type"] == "step"]
    assert lrs[0] < 1e-3 and max(lrs) <= 1e-3  # warm-up then cosine
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "kohya_style-step00000002.safetensors", "kohya_style-step00000004.safetensors", "kohya_style.safetensors"]
    sd = load_file(str(out / "kohya_style.safetensors"))
    assert sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape[0] == 8


@pytest.mark.parametrize("case", ["missing_folder", "no_numbered_folder", "typo", "wrong_type", "no_model"])
def test_bad_input_gives_a_clear_message(case, tiny_models, dataset, tmp_path):
    settings = base_settings(tiny_models["single"], dataset, tmp_path / "out", max_train_steps=1)
    if case == "missing_folder":
        settings["train_data_dir"] = str(tmp_path / "nope")
        expected = "train_data_dir: folder not found"
    elif case == "no_numbered_folder":
        settings["train_data_dir"] = str(dataset / "2_lsdemo shape")
        expected = "no '<repeats>_<name>' subfolder"
    elif case == "no_model":
        settings["pretrained_model_name_or_path"] = str(tmp_path / "model.safetensors")
        expected = "pretrained_model_name_or_path: not found"
    cfg = write_config(tmp_path / "run.toml", settings)
    if case == "typo":
        cfg.write_text(cfg.read_text() + "\n[extra]\nlearning_rat = 0.1\n")
        expected = "unknown setting 'learning_rat'. Did you mean 'learning_rate'?"
    elif case == "wrong_type":
        cfg.write_text(cfg.read_text() + '\n[more]\nnetwork_dim = "four"\n')
        expected = "setting 'network_dim' must be a whole number, got 'four'"
    proc = run_cli("train", "--config", str(cfg), check=False)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "test_lora.safetensors").exists()


def test_stop_file_stops_gracefully_and_saves(tiny_models, dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "test_lora.stop").write_text("")  # present from the start: stop after the first step
    cfg = write_config(tmp_path / "run.toml", base_settings(tiny_models["single"], dataset, out,
                                                            max_train_steps=50))
    run_cli("train", "--config", str(cfg))
    events = read_events(out / "test_lora_events.jsonl")
    assert events[-1]["status"] == "stopped" and events[-1]["step"] == 1
    assert (out / "test_lora.safetensors").is_file() and not (out / "test_lora.stop").exists()


def test_channels_last_trains(tiny_models, dataset, tmp_path):
    settings = base_settings(tiny_models["folder"], dataset, tmp_path / "out", max_train_steps=3, channels_last=True)
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    weights = load_file(str(tmp_path / "out" / "test_lora.safetensors"))
    assert len(weights) == 3 * 210 and all(bool(v.float().isfinite().all()) for v in weights.values())


def test_torch_compile_compiles_the_denoiser_with_its_lora_in_place(tiny_models):
    """build_network compiles the denoiser after the adapters are attached, with the settings' options (the compiled
    step itself, captured as one graph with no recompilation, is tests/test_bench.py's)."""
    import torch

    from lora_studio.config import build_config
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.models.loading import load_components
    from lora_studio.training.build import Trained, build_network
    from lora_studio.training.precision import precision_for

    cfg = build_config({**base_settings(tiny_models["single"], tiny_models["single"], tiny_models["single"]),
                        "torch_compile": True, "dynamo_backend": "aot_eager", "dynamo_use_fullgraph": True,
                        "network_train_unet_only": True})
    c = load_components(str(tiny_models["single"]), None, False)
    network = build_network(c, cfg, parse_network_args(cfg.network_args, cfg.network_module), Trained.from_config(cfg),
                            1, torch.device("cpu"), precision_for(cfg, False), shapes=12)
    assert c.denoiser._compiled_call_impl is not None  # compiled in place: the same module object everywhere
    assert torch._dynamo.config.recompile_limit >= 2 * 12 + 2  # a graph for each bucket shape, trained and not
    assert all(m.compute_dtype == torch.float32 for m in network.adapters())


def test_a_toml_as_the_kohya_ss_gui_writes_it_trains(tiny_models, dataset, tmp_path):
    """The flat TOML the Kohya_ss GUI saves with its defaults (its own keys epoch and noise_offset_type, max_timestep
    = 1000, empty lists, wandb_run_name, a prompt file path with no sampling due, AdamW8bit, fp16) trains here."""
    out = tmp_path / "out"
    (tmp_path / "config.toml").write_text(f"""bucket_no_upscale = true
bucket_reso_steps = 64
cache_latents = true
caption_extension = ".txt"
clip_skip = 1
dynamo_backend = "no"
enable_bucket = true
epoch = 1
gradient_accumulation_steps = 1
huber_c = 0.1
huber_scale = 1.0
huber_schedule = "snr"
learning_rate = 0.0001
logging_dir = "{tmp_path / 'log'}"
loss_type = "l2"
lr_scheduler = "cosine"
lr_scheduler_args = []
lr_scheduler_num_cycles = 1
lr_scheduler_power = 1.0
lr_warmup_steps = 0.1
max_bucket_reso = 2048
max_data_loader_n_workers = 0
max_grad_norm = 1.0
max_timestep = 1000
max_token_length = 75
max_train_steps = 3
min_bucket_reso = 256
mixed_precision = "fp16"
network_alpha = 1
network_args = []
network_dim = 8
network_module = "networks.lora"
noise_offset_type = "Original"
optimizer_args = []
optimizer_type = "AdamW8bit"
output_dir = "{out}"
output_name = "kohya_gui"
pretrained_model_name_or_path = "{tiny_models['single']}"
prior_loss_weight = 1.0
resolution = "64,64"
sample_prompts = "{out / 'sample' / 'prompt.txt'}"
sample_sampler = "euler_a"
save_every_n_epochs = 1
save_model_as = "safetensors"
save_precision = "fp16"
text_encoder_lr = [ 0.0001, 0.0001,]
train_batch_size = 1
train_data_dir = "{dataset}"
unet_lr = 0.0001
wandb_run_name = "kohya_gui"
xformers = true
""", encoding="utf-8")
    proc = run_cli("train", "--config", str(tmp_path / "config.toml"))
    assert (out / "kohya_gui.safetensors").is_file()
    for said in ("'epoch'", "'noise_offset_type'"):
        assert said in proc.stderr  # named as ignored, not fatal
    assert "training with PyTorch SDPA" in proc.stderr and "32-bit AdamW" in proc.stderr


@pytest.mark.parametrize("optimizer, extra", [("AdamWScheduleFree", {"save_every_n_steps": 2, "save_state": True}),
                                              ("DAdaptAdam", {"learning_rate": 1.0, "text_encoder_lr": 0.5})])
def test_learning_rate_free_and_schedule_free_optimizers_train_through_the_engine(tiny_models, dataset, tmp_path,
                                                                                  optimizer, extra):
    out = tmp_path / "out"
    settings = base_settings(tiny_models["single"], dataset, out, optimizer_type=optimizer, max_train_steps=4,
                             **extra)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    weights = load_file(str(out / "test_lora.safetensors"))
    assert any(v.any() for k, v in weights.items() if k.endswith("lora_up.weight"))  # it trained
    assert all(bool(torch.isfinite(v.float()).all()) for v in weights.values())
    if optimizer == "DAdaptAdam":
        assert "takes one learning rate for every part" in proc.stderr


def test_a_kohya_ss_gui_json_trains_from_the_command_line_with_the_guis_report(tiny_models, dataset, tmp_path):
    """``train --config preset.json`` imports a Kohya_ss GUI JSON as the GUI's Load does: the same report (carried
    over / changed / not supported / GUI only), its sample prompts written to a file, and the run trains."""
    import json

    from kohya_shapes import KOHYA_GUI_JSON
    from lora_studio.gui.lora_tab import ConfigurationTab

    out = tmp_path / "model"
    preset = {**KOHYA_GUI_JSON, "pretrained_model_name_or_path": str(tiny_models["single"]),
              "train_data_dir": str(dataset), "output_dir": str(out), "logging_dir": "", "max_resolution": "64,64",
              "max_train_steps": 2, "mixed_precision": "no", "sample_every_n_epochs": 0, "save_every_n_epochs": 0,
              "min_bucket_reso": 64, "sample_prompts": "emi, 1girl --w 64 --h 64 --s 2"}
    path = tmp_path / "emi.json"
    path.write_text(json.dumps(preset, indent=2), encoding="utf-8")
    proc = run_cli("train", "--config", str(path))
    gui_report = ConfigurationTab(tmp_path / "state", None).load_path(str(path))[-1]
    assert "**Carried over as they are**" in gui_report and "**Set to what Kohya_ss trains:**" in gui_report
    cli_prompts, gui_prompts = out / "emi_prompts.txt", tmp_path / "state" / "imported" / "emi_prompts.txt"
    assert proc.stdout.strip() == gui_report.replace(str(gui_prompts), str(cli_prompts))
    assert cli_prompts.read_text(encoding="utf-8") == gui_prompts.read_text(encoding="utf-8") == \
        "emi, 1girl --w 64 --h 64 --s 2\n"
    cfg = load_config(out / "emi_v1_config.toml")
    assert (cfg.sample_prompts, cfg.network_dim, cfg.optimizer_type) == (str(cli_prompts), 16, "AdamW8bit")
    assert (out / "emi_v1.safetensors").is_file()
    assert read_events(out / "emi_v1_events.jsonl")[-1]["status"] == "completed"
