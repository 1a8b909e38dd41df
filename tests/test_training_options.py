"""sd-scripts' noise, timestep, loss-weighting, max-norm, dropout and scheduler options, each shown by a number:
what it does to the noise, the timesteps, the weights or the learning rate, as sd-scripts defines it."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_studio.config import build_config
from lora_studio.config.rules import setting_problems
from lora_studio.models import noise as N


def test_timesteps_are_drawn_from_min_up_to_below_max():
    torch.manual_seed(0)
    t = N.timesteps_in_range(1000, 20000, "cpu", N.NoiseRecipe(min_timestep=200, max_timestep=300))
    assert int(t.min()) == 200 and int(t.max()) == 299
    everything = N.timesteps_in_range(1000, 20000, "cpu", N.NoiseRecipe())
    assert int(everything.min()) == 0 and int(everything.max()) == 999
    fixed = N.timesteps_in_range(1000, 8, "cpu", N.NoiseRecipe(min_timestep=400, max_timestep=400))
    assert fixed.tolist() == [400] * 8


def test_offset_noise_with_random_strength_and_the_adaptive_scale():
    latents = torch.zeros(2, 4, 8, 8)
    latents[:, 1] = 3.0  # channel 1 has mean 3
    base = torch.zeros_like(latents)
    recipe = N.NoiseRecipe(offset=0.1, adaptive_scale=0.5)
    torch.manual_seed(1)
    out = N.offset_noise(latents, base, recipe)
    torch.manual_seed(1)
    draw = torch.randn(2, 4, 1, 1)
    offset = torch.tensor([0.1, 0.1 + 0.5 * 3.0, 0.1, 0.1]).view(1, 4, 1, 1)
    assert torch.allclose(out, (offset * draw).expand_as(out))  # the same offset over each channel's pixels
    torch.manual_seed(2)
    strength, draw = torch.rand(1), torch.randn(2, 4, 1, 1)
    torch.manual_seed(2)
    random = N.offset_noise(torch.zeros_like(latents), base, N.NoiseRecipe(offset=0.1, offset_random_strength=True))
    assert torch.allclose(random, (0.1 * strength * draw).expand_as(random)) and 0 < float(strength) < 1


def test_multires_noise_has_unit_variance_and_far_more_low_frequency_power():
    import random

    random.seed(3)  # the levels' sizes are drawn with Python's random, as in sd-scripts
    torch.manual_seed(3)
    white = torch.randn(64, 4, 32, 32)
    pyramid = N.pyramid_noise(white.clone(), iterations=6, discount=0.4)
    assert pyramid.std().item() == pytest.approx(1.0, abs=1e-4)
    # 8x8 block means (low frequencies) vary more than white noise lets them, at the same overall variance
    blocks = torch.nn.functional.avg_pool2d
    assert blocks(pyramid, 8).std() > 1.3 * blocks(white, 8).std()


def test_ip_noise_gamma_perturbs_the_input_and_leaves_the_target(tiny_models):
    from lora_studio.models.ddpm import DDPMObjective
    from lora_studio.models.loading import load_components
    from lora_studio.models.noise import NoiseRecipe

    c = load_components(str(tiny_models["folder"]), None, False)
    schedule = DDPMObjective.for_model(c, False, False).schedule
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 600])
    cond = {"encoder_hidden_states": torch.randn(2, 77, 64)}
    with torch.no_grad():
        plain_pred, plain_target = DDPMObjective(schedule, NoiseRecipe()).prediction_and_target(c, latents, noise, t,
                                                                                                cond)
        torch.manual_seed(4)
        pred, target = DDPMObjective(schedule, NoiseRecipe(ip_gamma=0.1)).prediction_and_target(c, latents, noise, t,
                                                                                                cond)
        torch.manual_seed(4)
        perturbed = noise + 0.1 * torch.randn_like(noise)
        expected = c.denoiser(schedule.add_noise(latents, perturbed, t), t, encoder_hidden_states=cond[
            "encoder_hidden_states"]).sample
    assert torch.equal(target, plain_target) and torch.equal(target, noise)
    assert torch.allclose(pred, expected, atol=1e-5) and not torch.allclose(pred, plain_pred)


def test_debiased_estimation_weights():
    from diffusers import DDPMScheduler

    from lora_studio.models.ddpm import DDPMObjective
    from lora_studio.models.stable_diffusion import SD_SCHEDULER

    t = torch.tensor([0, 10, 500, 999])
    for prediction in ("epsilon", "v_prediction"):
        schedule = DDPMScheduler.from_config({**SD_SCHEDULER, "prediction_type": prediction})
        a = schedule.alphas_cumprod[t].double()
        snr = torch.clamp(a / (1 - a), max=1000)
        expected = 1 / (snr + 1) if prediction == "v_prediction" else 1 / snr.sqrt()
        assert torch.allclose(DDPMObjective(schedule).debiased_weights(t).double(), expected, rtol=1e-5)
    assert float(DDPMObjective(DDPMScheduler.from_config(SD_SCHEDULER)).debiased_weights(t)[0]) == pytest.approx(
        1 / math.sqrt(1000), rel=1e-5)  # timestep 0's infinite-ish SNR is capped at 1000


@pytest.fixture(scope="module")
def components(tiny_models):
    from lora_studio.models.loading import load_components

    return load_components(str(tiny_models["single"]), None, False)


def test_scale_weight_norms_caps_each_adapters_change_at_the_max_norm(components):
    from lora_studio.network.lora import LoRANetwork

    net = LoRANetwork(components, 4, 2.0, train_text_encoder=False)
    modules = net.adapters()
    for i, m in enumerate(modules):
        torch.nn.init.normal_(m.lora_up.weight, std=0.2 if i % 2 else 0.0005)  # half large, half small
    before = [m.delta_weight().norm().item() for m in modules]
    scaled, mean_norm, max_norm = net.apply_max_norm(0.05)
    after = [m.delta_weight().norm().item() for m in modules]
    assert scaled == sum(b > 0.05 for b in before) and 0 < scaled < len(modules)
    for b, a in zip(before, after):
        assert a == pytest.approx(min(b, 0.05), rel=1e-4)  # large ones capped, small ones untouched
    assert max_norm == pytest.approx(max(after), rel=1e-4) and mean_norm == pytest.approx(sum(after) / len(after),
                                                                                       rel=1e-4)


def test_rank_and_module_dropout_as_sd_scripts(components):
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.network.lora import LoRANetwork

    args = parse_network_args(["rank_dropout=0.5"], "networks.lora")
    net = LoRANetwork(components, 4, 4.0, train_text_encoder=False, args=args)
    lora = next(m for m in net.adapters() if isinstance(m._base[0], torch.nn.Linear))
    torch.nn.init.normal_(lora.lora_up.weight)
    base = lora._base[0]
    x = torch.randn(3, base.in_features)
    plain = base(x)
    net.attach().train()
    try:
        torch.manual_seed(5)
        out = base(x)
        torch.manual_seed(5)
        keep = (torch.rand(3, 4) > 0.5).float()
        expected = plain + lora.lora_up(lora.lora_down(x) * keep) * (1.0 / 0.5)  # scale 4/4, kept ranks x 1/(1-p)
        assert torch.allclose(out, expected, atol=1e-5)
        net.eval()
        assert torch.allclose(base(x), plain + lora.lora_up(lora.lora_down(x)), atol=1e-5)  # no dropout in eval
    finally:
        net.detach_from_base()
    skip = LoRANetwork(components, 4, 4.0, train_text_encoder=False,
                       args=parse_network_args(["module_dropout=0.999999"], "networks.lora"))
    torch.nn.init.normal_(skip._modules[lora.stem].lora_up.weight)
    skip.attach().train()
    try:
        assert torch.equal(base(x), plain)  # the adapter sat the step out
        skip.eval()
        assert not torch.allclose(base(x), plain)  # and is back in eval
    finally:
        skip.detach_from_base()
    with pytest.raises(Exception, match="rank_dropout must be a number from 0 to below 1"):
        parse_network_args(["rank_dropout=1.5"], "networks.lora")


def test_lr_scheduler_type_with_its_arguments():
    from lora_studio.training.optim import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    cfg = build_config({"lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": ["T_max=10", "eta_min=0.1"]})
    scheduler = build_scheduler(cfg, opt, 100)
    for _ in range(5):
        opt.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 5 / 10)) / 2)
    dotted = build_scheduler(build_config({"lr_scheduler_type": "torch.optim.lr_scheduler.StepLR",
                                           "lr_scheduler_args": ["step_size=2", "gamma=0.5"]}), opt, 100)
    assert type(dotted).__name__ == "StepLR"


def test_noise_option_rules_name_the_setting():
    problems = setting_problems(build_config({"adaptive_noise_scale": 0.01, "noise_offset_random_strength": True,
                                              "ip_noise_gamma_random_strength": True, "min_timestep": 500,
                                              "max_timestep": 400}))
    assert problems["adaptive_noise_scale"] == "needs Noise offset (it is added to it)"
    assert problems["noise_offset_random_strength"] == "needs Noise offset"
    assert problems["ip_noise_gamma_random_strength"] == "needs IP noise gamma"
    assert "must be above Min timestep (500)" in problems["max_timestep"]
    noise_keys = {"multires_noise_iterations", "noise_offset", "min_timestep", "max_timestep"}
    assert not noise_keys & set(setting_problems(build_config({"noise_offset": 0.05, "multires_noise_iterations": 6,
                                                                "min_timestep": 500, "max_timestep": 500})))
    # offset and multires both apply (offset first), as sd-scripts does since 2023; min = max is one fixed timestep


def test_a_run_with_these_options_keeps_every_adapter_within_the_max_norm(tiny_models, dataset, tmp_path):
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, learning_rate=0.05, max_train_steps=8,
                             network_train_unet_only=True, scale_weight_norms=0.02, multires_noise_iterations=4,
                             multires_noise_discount=0.2, ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True,
                             min_timestep=100, max_timestep=900, debiased_estimation_loss=True,
                             network_args=["rank_dropout=0.1", "module_dropout=0.1"], logging_dir=str(tmp_path / "tb"))
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    path = out / "test_lora.safetensors"
    sd = load_file(str(path))
    norms = []
    for key in sd:
        if key.endswith(".lora_down.weight"):
            stem = key[: -len(".lora_down.weight")]
            down, up = sd[key].float(), sd[stem + ".lora_up.weight"].float()
            delta = (up.flatten(1) @ down.flatten(1)) * float(sd[stem + ".alpha"]) / down.shape[0]
            norms.append(delta.norm().item())
    assert max(norms) <= 0.02 * 1.002 and max(norms) > 0.015  # trained up to the cap, never past it
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert (meta["ss_scale_weight_norms"], meta["ss_multires_noise_iterations"], meta["ss_ip_noise_gamma"],
            meta["ss_debiased_estimation"]) == ("0.02", "4", "0.1", "True")


def test_vae_batch_size_encodes_images_in_chunks_of_that_many(components):
    from lora_studio.training.precision import Precision
    from lora_studio.training.step import BatchLoss

    calls = []
    encode = components.vae.encode
    components.vae.encode = lambda pixels: calls.append(len(pixels)) or encode(pixels)
    try:
        cfg = build_config({"vae_batch_size": 3})
        loss = BatchLoss(components, None, cfg, torch.device("cpu"), Precision("no", torch.float32), False, None)
        latents = loss.latents({"pixels": torch.rand(7, 3, 64, 64) * 2 - 1})
    finally:
        components.vae.encode = encode
    assert calls == [3, 3, 1] and latents.shape == (7, 4, 8, 8)


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_full_fp16_and_full_bf16_train_the_adapters_and_their_optimizer_state_in_half_precision(
        tiny_models, dataset, tmp_path, monkeypatch, mode):
    """sd-scripts casts the network to the mixed precision with full_fp16 / full_bf16; fp16 gradients are unscaled
    by the GradScaler (reached on the CPU through the test GradScaler)."""
    if mode == "fp16":
        monkeypatch.setenv("LORA_STUDIO_TEST_CPU_GRAD_SCALER", "1")
    out = tmp_path / "out"
    settings = base_settings(tiny_models["folder"], dataset, out, mixed_precision=mode, max_train_steps=3,
                             save_state_on_train_end=True, optimizer_type="Lion", learning_rate=1e-4,
                             **{f"full_{mode}": True})
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    state = load_file(str(out / "test_lora-state" / "state.safetensors"))
    adapters = {k: v for k, v in state.items() if k.startswith("network.") and k.endswith("weight")}
    moments = {k: v for k, v in state.items() if k.startswith("optimizer.") and v.ndim >= 2}  # Lion's exp_avg
    assert adapters and moments
    assert {v.dtype for v in adapters.values()} == {dtype} and {v.dtype for v in moments.values()} == {dtype}
    assert sum(v.numel() * v.element_size() for v in moments.values()) == \
        sum(v.numel() * 4 for v in moments.values()) // 2  # half the optimizer memory of float32
    final = load_file(str(out / "test_lora.safetensors"))
    assert any(v.any() for k, v in final.items() if k.endswith("lora_up.weight"))  # it trained: no error, no skip
    assert all(bool(torch.isfinite(v.float()).all()) for v in final.values())
    assert "diverged" not in proc.stderr and "overflowed" not in proc.stderr
    problems = setting_problems(build_config({**settings, "mixed_precision": "no"}))
    assert problems[f"full_{mode}"] == f"needs Mixed precision {mode}, as in sd-scripts"


def test_persistent_data_loader_workers_start_once_and_train_the_same_batches(tiny_models, tmp_path):
    """sd-scripts' persistent_data_loader_workers: the loader's worker processes serve every epoch instead of being
    started again each epoch; the batches (and so the weights) are the same."""
    from lora_studio.demo import write_dataset

    dataset = write_dataset(tmp_path / "data", count=4, repeats=1)  # 2 steps an epoch
    runs = {}
    for persistent in (False, True):
        out = tmp_path / f"out{int(persistent)}"
        settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=None, max_train_epochs=2,
                                 max_data_loader_n_workers=1, persistent_data_loader_workers=persistent)
        settings.pop("max_train_steps")
        proc = run_cli("train", "--config", str(write_config(tmp_path / f"run{int(persistent)}.toml", settings)),
                       subprocess_=True)  # the workers' log lines reach the process's stderr, not a capture
        runs[persistent] = (proc.stderr.count("data loader worker 0 started"),
                            load_file(str(out / "test_lora.safetensors")))
    assert runs[False][0] == 2 and runs[True][0] == 1  # one start per epoch, or one for the run
    assert runs[False][1].keys() == runs[True][1].keys()
    assert all(torch.equal(runs[False][1][k], runs[True][1][k]) for k in runs[True][1])


def test_log_with_wandb_records_the_run_offline_and_says_what_to_install_without_it(tiny_models, dataset, tmp_path,
                                                                                    monkeypatch):
    """sd-scripts' log_with = "wandb" (an offline run here: WANDB_MODE=offline): the run's scalars and settings go
    to Weights & Biases under logging_dir, the API key never into a file; without the package, a clear message."""
    import sys

    from lora_studio.errors import UserError
    from lora_studio.training.trackers import import_wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, logs = tmp_path / "out", tmp_path / "logs"
    settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=3, log_with="all",
                             logging_dir=str(logs), log_prefix="emi-", wandb_run_name="emi v1",
                             log_tracker_name="lora-studio-test", log_config=True)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    assert "logging to Weights & Biases: project lora-studio-test, run emi v1 (offline)" in proc.stderr
    (run_dir,) = logs.glob("emi-*")  # sd-scripts' <logging_dir>/<log_prefix><time>, shared by both trackers
    (record,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = record.read_bytes()
    for written in (b"loss/current", b"lr/unet", b"emi v1", b"lora-studio-test", b"network_dim"):
        assert written in data, written
    assert str(dataset).encode() not in data  # log_config leaves out where the user's files are, as sd-scripts
    assert list(run_dir.glob("events.out.tfevents.*"))  # and TensorBoard's, with log_with = "all"
    key_run = base_settings(tiny_models["folder"], dataset, tmp_path / "out2", max_train_steps=1, log_with="wandb",
                            logging_dir=str(tmp_path / "logs2"), wandb_api_key="local-0123456789abcdef")
    monkeypatch.setenv("WANDB_API_KEY", "")
    run_cli("train", "--config", str(write_config(tmp_path / "key.toml", key_run)))
    assert (tmp_path / "out2" / "test_lora.safetensors").is_file()
    (quiet,) = (tmp_path / "logs2").glob("*/wandb/offline-run-*/run-*.wandb")
    assert b"network_dim" not in quiet.read_bytes()  # no settings sent without log_config
    for written in [*(tmp_path / "out2").rglob("*"), *(tmp_path / "logs2").rglob("*")]:
        if written.is_file():
            assert b"0123456789abcdef" not in written.read_bytes(), written
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(UserError, match="needs the wandb package, which is not installed: run .venv/bin/pip"):
        import_wandb()
