"""sd-scripts sample-prompt syntax."""

import pytest

from lora_studio.errors import UserError
from lora_studio.training.sampling import make_scheduler, parse_prompt_line, read_prompt_file


def test_prompt_options():
    p = parse_prompt_line("1girl, red hair --n lowres, bad hands --w 768 --h 516 --d 42 --s 28 --l 6.5 --ss euler_a",
                          512)
    assert (p.prompt, p.negative, p.width, p.height, p.seed, p.steps, p.cfg_scale, p.sampler) == \
        ("1girl, red hair", "lowres, bad hands", 768, 512, 42, 28, 6.5, "euler_a")
    assert parse_prompt_line("# comment", 512) is None and parse_prompt_line("   ", 512) is None
    plain = parse_prompt_line("just a prompt", 640)
    assert (plain.width, plain.height, plain.seed, plain.negative) == (640, 640, None, "")
    assert (plain.flow_shift, plain.cfg_trunc_ratio, plain.renorm_cfg) == (None, None, None)
    # the flow-matching transformers' options (sd-scripts' --fs, --ctr, --rcfg), and sizes at their 16-pixel multiple
    dit = parse_prompt_line("a fox --fs 3.5 --ctr 0.3 --rcfg 0 --w 1000 --l 4", 1024, 16, default_steps=36)
    assert (dit.flow_shift, dit.cfg_trunc_ratio, dit.renorm_cfg, dit.width, dit.cfg_scale) == (3.5, 0.3, 0.0, 992,
                                                                                               4.0)
    assert dit.steps == 36 and parse_prompt_line("a fox --s 12", 1024, 16, 36).steps == 12  # the family's default


def test_prompt_file_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        read_prompt_file(tmp_path / "none.txt", 512)
    (tmp_path / "p.txt").write_text("cat --w big\n")
    with pytest.raises(UserError, match="--w needs a number"):
        read_prompt_file(tmp_path / "p.txt", 512)


def test_samplers_exist():
    from lora_studio.models.stable_diffusion import SD_SCHEDULER

    for name in ["ddim", "pndm", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
                 "dpmsingle", "k_euler_a"]:
        assert make_scheduler(name, SD_SCHEDULER).config.num_train_timesteps == 1000


def test_unknown_sampler_in_a_prompt_stops_the_run_before_training(tiny_models, dataset, tmp_path):
    from conftest import base_settings, run_cli, write_config

    (tmp_path / "p.txt").write_text("a cat --ss warp_drive\n")
    cfg = write_config(tmp_path / "run.toml", base_settings(tiny_models["single"], dataset, tmp_path / "out",
                                                            sample_prompts=str(tmp_path / "p.txt"),
                                                            sample_every_n_steps=1))
    proc = run_cli("train", "--config", str(cfg), check=False)
    assert proc.returncode == 2 and "unknown sampler 'warp_drive'" in proc.stderr
    assert not (tmp_path / "out" / "test_lora.safetensors").exists()
