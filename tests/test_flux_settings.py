"""A Flux config's settings as Check settings and the start of a run see them: SD-era options are named (never
silently ignored), the family's requirements are refused by setting, its pixel multiple applies, its recommended
values fill what is left empty."""

import pytest
from conftest import flux_settings, run_cli, write_config

from lora_studio.config import build_config
from lora_studio.data.dataset import TrainingData
from lora_studio.data.sources import datasets_from_config
from lora_studio.errors import UserError
from lora_studio.gui.form import check_form
from lora_studio.training.resolve import resolve


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lora_studio.demo import write_dataset
    from lora_studio.models.tiny_flux import write_tiny_flux

    root = tmp_path_factory.mktemp("flux-settings")
    models = {v: write_tiny_flux(root / v, v) for v in ("dev", "chroma")}
    return root, models, write_dataset(root / "data", count=4, repeats=1)


def _resolved(settings):
    cfg = build_config(settings)
    return resolve(cfg, TrainingData(datasets_from_config(cfg), 1.0, 0))


SD_ERA = {"min_snr_gamma": 5.0, "noise_offset": 0.1, "multires_noise_iterations": 6, "debiased_estimation_loss": True,
          "scale_v_pred_loss_like_noise_pred": True, "clip_skip": 2, "zero_terminal_snr": True}


def test_sd_era_options_are_named_at_check_settings_and_at_the_start(tiny, tmp_path):
    root, models, data = tiny
    settings = flux_settings(models, "dev", data, tmp_path / "out", max_train_steps=1, validation_split=0.0,
                             **SD_ERA)
    named = {name for name, _ in _resolved(settings).warnings}
    assert set(SD_ERA) <= named
    form = check_form(settings)
    assert not form.problems, form.problems
    shown = "\n".join(form.warnings)
    assert "min_snr_gamma: has no effect with Flux.1 dev (a DDPM-noise option" in shown
    assert "clip_skip: has no effect with Flux.1 dev" in shown
    proc = run_cli("train", "--config", str(write_config(tmp_path / "c.toml", settings)))
    for name in SD_ERA:
        assert f"{name}: has no effect with Flux.1 dev" in proc.stderr


def test_family_requirements_are_refused_by_setting(tiny, tmp_path):
    root, models, data = tiny
    base = flux_settings(models, "dev", data, tmp_path / "out")
    problems = check_form({**base, "ae": None}).problems
    assert "set ae (the autoencoder" in problems["ae"]
    problems = check_form({**base, "t5xxl": models["dev"]["ae"]}).problems  # a swapped file
    assert "is not a T5" in problems["t5xxl"]
    with pytest.raises(UserError, match="huber_schedule"):
        _resolved({**base, "loss_type": "huber"})  # sd-scripts' default schedule "snr" needs DDPM's SNR
    assert _resolved({**base, "loss_type": "huber", "huber_schedule": "exponential"}).cfg.loss_type == "huber"
    with pytest.raises(UserError, match="multiple of 16"):
        _resolved({**base, "resolution": "72"})
    with pytest.raises(UserError, match="bucket_reso_steps must be a multiple of 16"):
        _resolved({**base, "enable_bucket": True, "bucket_reso_steps": 8})
    with pytest.raises(UserError, match="model_type"):
        _resolved({**base, "model_type": "chroma"})
    with pytest.raises(UserError, match="blocks_to_swap and cpu_offload_checkpointing"):
        _resolved({**base, "blocks_to_swap": 4, "cpu_offload_checkpointing": True})
    with pytest.raises(UserError, match="replays CUDA graphs at fixed memory addresses"):
        _resolved({**base, "blocks_to_swap": 4, "torch_compile": True, "dynamo_mode": "reduce-overhead"})
    chroma = flux_settings(models, "chroma", data, tmp_path / "out")
    with pytest.raises(UserError, match="apply_t5_attn_mask"):
        _resolved({**chroma, "apply_t5_attn_mask": False})
    said = dict(_resolved({**chroma, "guidance_scale": 3.5}).warnings)
    assert "sd-scripts requires 0" in said["guidance_scale"]
    said = dict(_resolved({**base, "guidance_scale": 3.5, "model_prediction_type": "sigma_scaled"}).warnings)
    assert "1.0" in said["guidance_scale"] and "raw" in said["model_prediction_type"]


def test_recommended_values_fill_what_is_left_empty(tiny):
    from lora_studio.models.flux import Chroma, FluxFamily, FluxSchnell

    cfg = build_config({"pretrained_model_name_or_path": "x"})
    dev, schnell, chroma = FluxFamily(), FluxSchnell(), Chroma()
    assert (dev.flow_recipe(cfg).timestep_sampling, dev.flow_recipe(cfg).discrete_flow_shift) == ("shift", 3.1582)
    assert dev.flow_recipe(cfg).model_prediction_type == "raw" and dev.guidance(cfg) == 1.0
    assert (chroma.flow_recipe(cfg).timestep_sampling, chroma.guidance(cfg)) == ("sigmoid", 0.0)
    assert dev.prompt_options(cfg) == {"t5xxl_max_token_length": 512, "apply_t5_attn_mask": False}
    assert schnell.prompt_options(cfg) == {"t5xxl_max_token_length": 256, "apply_t5_attn_mask": False}
    assert chroma.prompt_options(cfg) == {"t5xxl_max_token_length": 512, "apply_t5_attn_mask": True}
    explicit = build_config({"timestep_sampling": "flux_shift", "guidance_scale": 3.5, "t5xxl_max_token_length": 128})
    assert dev.flow_recipe(explicit).timestep_sampling == "flux_shift" and dev.guidance(explicit) == 3.5
    assert schnell.prompt_options(explicit)["t5xxl_max_token_length"] == 128


def test_the_dataset_check_applies_the_family_pixel_multiple(tiny, tmp_path):
    """``lora-studio dataset check --config`` of a Flux run: 16-pixel sides, as the run itself."""
    root, models, data = tiny
    config = write_config(tmp_path / "c.toml", flux_settings(models, "dev", data, tmp_path / "out", resolution="72"))
    proc = run_cli("dataset", "check", "--config", str(config), check=False)
    assert proc.returncode == 2 and "resolution must be a multiple of 16 for Flux.1 dev" in proc.stderr
    config = write_config(tmp_path / "ok.toml", flux_settings(models, "dev", data, tmp_path / "out"))
    proc = run_cli("dataset", "check", "--config", str(config), check=False)
    assert proc.returncode in (0, 1) and "multiple of" not in proc.stderr  # a report (1: it has findings)
