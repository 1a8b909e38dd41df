"""Network targets and learning-rate groups; optimizers and schedules by name; precision choice."""

import logging

import pytest
import torch

from lora_studio.config import build_config
from lora_studio.errors import UserError
from lora_studio.models.loading import load_components
from lora_studio.network.lora import LoRANetwork
from lora_studio.training.optim import build_optimizer, build_scheduler, warmup_steps
from lora_studio.training.precision import choose_precision


@pytest.fixture(scope="module")
def components(tiny_models):
    return load_components(str(tiny_models["single"]), None, False)


def test_targets_and_groups(components):
    both = LoRANetwork(components, 4, 1.0)
    assert len(both.unet_stems) == 192 and len(both.te_stems[0]) == 18
    groups = both.param_groups(1e-4, [5e-5])
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("unet", 1e-4, 384), ("text_encoder", 5e-5, 36)]
    assert both.param_groups(1e-4, [0.0])[0]["name"] == "unet" and len(both.param_groups(1e-4, [0.0])) == 1
    unet_only = LoRANetwork(components, 4, 1.0, train_text_encoder=False)
    te_only = LoRANetwork(components, 4, 1.0, train_unet=False)
    assert not unet_only.te_stems[0] and len(unet_only.unet_stems) == 192
    assert not te_only.unet_stems and len(te_only.te_stems[0]) == 18
    assert both.adapters()[0].scale == 0.25
    assert LoRANetwork(components, 4, 0.0).adapters()[0].scale == 1.0  # alpha 0 means alpha = rank


def test_attached_adapter_adds_scaled_low_rank_update(components):
    net = LoRANetwork(components, 4, 2.0, train_text_encoder=False)
    lora = net.adapters()[0]
    base = lora._base[0]
    x = torch.randn(3, base.in_channels if isinstance(base, torch.nn.Conv2d) else base.in_features, 4, 4) \
        if isinstance(base, torch.nn.Conv2d) else torch.randn(3, base.in_features)
    before = base(x)
    torch.nn.init.normal_(lora.lora_up.weight)
    net.attach()
    try:
        expected = before + 0.5 * lora.lora_up(lora.lora_down(x))
        assert torch.allclose(base(x), expected, atol=1e-5)
    finally:
        net.detach_from_base()
    assert torch.allclose(base(x), before)


@pytest.mark.parametrize("name,cls", [("AdamW", "AdamW"), ("Lion", "Lion"), ("Prodigy", "Prodigy"),
                                      ("Adafactor", "Adafactor"), ("SGD", "SGD"), ("torch.optim.RMSprop", "RMSprop")])
def test_optimizers_by_name(name, cls):
    p = torch.nn.Parameter(torch.zeros(3))
    args = ["weight_decay=0.01"] if cls != "Lion" else []
    cfg = build_config({"optimizer_type": name, "optimizer_args": args + (["relative_step=False"] if
                                                                          cls == "Adafactor" else [])})
    opt = build_optimizer(cfg, [{"params": [p], "lr": 1e-3, "name": "unet"}])
    assert type(opt).__name__ == cls and opt.param_groups[0]["lr"] == 1e-3


def test_adafactor_finds_its_own_step_size_with_the_adafactor_schedule_as_sd_scripts_sets_it_up(caplog):
    """sd-scripts: Adafactor defaults to relative_step=True; the part learning rates are dropped and the adafactor
    scheduler reports Adafactor's step: min(1e-2, 1/sqrt(step)) x max(1e-3, RMS(weights))."""
    from transformers.optimization import AdafactorSchedule

    from lora_studio.training.optim import build_scheduler

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 8) * 0.5)
    cfg = build_config({"optimizer_type": "Adafactor", "learning_rate": 1e-4, "unet_lr": 5e-4})
    opt = build_optimizer(cfg, [{"params": [p], "lr": 5e-4, "name": "unet"}])
    sched = build_scheduler(cfg, opt, 10)
    assert isinstance(sched, AdafactorSchedule) and opt.defaults["relative_step"] and opt.defaults["lr"] is None
    rms = float(p.detach().pow(2).mean().sqrt())
    p.grad = torch.randn(8, 8)
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(1e-2 * rms, rel=1e-5)
    for cfg_values, message in (({"optimizer_type": "AdamW", "lr_scheduler": "adafactor"}, "needs optimizer_type"),
                                ({"optimizer_type": "Adafactor", "lr_scheduler": "adafactor",
                                  "optimizer_args": ["relative_step=False"]}, "needs Adafactor's relative_step"),
                                ({"optimizer_type": "Adafactor", "lr_warmup_steps": 5}, "takes no warm-up")):
        cfg = build_config(cfg_values)
        with pytest.raises(UserError, match=message):
            build_scheduler(cfg, build_optimizer(cfg, [{"params": [p], "lr": 1e-3, "name": "unet"}]), 10)


def test_optimizer_errors():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(UserError, match="unknown optimizer 'Adamm'"):
        build_optimizer(build_config({"optimizer_type": "Adamm"}), [{"params": [p], "lr": 1e-3}])
    with pytest.raises(UserError, match="does not accept"):
        build_optimizer(build_config({"optimizer_args": ["colour=3"]}), [{"params": [p], "lr": 1e-3}])


@pytest.mark.parametrize("name, stand_in", [("AdamW8bit", "AdamW"), ("PagedAdamW8bit", "AdamW"), ("Lion8bit", "Lion")])
def test_an_8bit_optimizer_that_cannot_run_here_falls_back_to_32_bit_with_a_warning(name, stand_in, caplog):
    """A preset made for a GPU still trains on a machine where bitsandbytes cannot run (here: not installed)."""
    import importlib.util

    if torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes can run here: no stand-in is needed")  # pragma: no cover
    p = torch.nn.Parameter(torch.zeros(3))
    with caplog.at_level(logging.WARNING):
        opt = build_optimizer(build_config({"optimizer_type": name}), [{"params": [p], "lr": 1e-3}])
    assert type(opt).__name__ == stand_in
    assert f"optimizer_type {name}: bitsandbytes is not installed; training with the 32-bit {stand_in}" in caplog.text
    p.grad = torch.ones(3)
    opt.step()
    assert torch.all(p < 0)  # it trains


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear",
                                  "polynomial"])
def test_schedulers(name):
    p = torch.nn.Parameter(torch.zeros(3))
    cfg = build_config({"lr_scheduler": name, "lr_warmup_steps": 0.1 if name != "constant" else 0,
                        "lr_scheduler_num_cycles": 2, "lr_scheduler_power": 2.0})
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(cfg, opt, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    if name == "constant":
        assert set(lrs) == {1.0}
    else:
        assert lrs[0] == 0.0 and max(lrs) == pytest.approx(1.0)  # 10 warm-up steps from 0
    if name in ("cosine", "linear", "polynomial"):
        assert lrs[-1] < 0.05
    assert warmup_steps(cfg, 100) == (10 if name != "constant" else 0)


def test_fp16_on_cpu_falls_back():
    assert choose_precision(build_config({"mixed_precision": "fp16"}), cuda=False) == "no"  # said by resolve
    assert choose_precision(build_config({"mixed_precision": "bf16"}), cuda=False) == "bf16"


def test_the_multiplier_scales_the_adapters_delta_as_a_strength(components):
    """A strength as AUTOMATIC1111 and ComfyUI apply it: the multiplier on the LoRA's delta; 0 is the base model."""
    net = LoRANetwork(components, 4, 2.0, train_text_encoder=False)
    lora = net.adapters()[0]
    base = lora._base[0]
    x = torch.randn(3, base.in_channels, 4, 4) if isinstance(base, torch.nn.Conv2d) else torch.randn(3, base.in_features)
    before = base(x)
    torch.nn.init.normal_(lora.lora_up.weight)
    net.attach()
    try:
        full = base(x)
        net.set_multiplier(0.5)
        half = base(x)
        net.set_multiplier(0.0)
        assert torch.equal(base(x), before)
    finally:
        net.detach_from_base()
    assert not torch.allclose(full, before) and torch.allclose(half - before, 0.5 * (full - before), atol=1e-5)


@pytest.mark.parametrize("name, cls", [("DAdaptAdam", "DAdaptAdam"), ("DAdaptation", "DAdaptAdamPreprint"),
                                       ("DAdaptLion", "DAdaptLion"), ("Prodigy", "Prodigy")])
def test_learning_rate_free_optimizers_take_one_learning_rate_and_step(name, cls, caplog):
    """Different U-Net and text-encoder rates would stop D-Adaptation and Prodigy at their first step; the first
    group's rate is used for all, as sd-scripts says it is."""
    a, b = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.ones(4))
    with caplog.at_level(logging.WARNING):
        opt = build_optimizer(build_config({"optimizer_type": name, "learning_rate": 1.0}),
                              [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}])
    assert type(opt).__name__ == cls and [g["lr"] for g in opt.param_groups] == [1.0, 1.0]
    assert "takes one learning rate for every part: 1 is used for all (was 1, 0.5)" in caplog.text
    a.grad, b.grad = torch.ones(4), torch.ones(4)
    opt.step()
    assert torch.all(a < 1) and torch.all(b < 1)


def test_schedule_free_optimizers_swap_to_their_averaged_weights_for_use():
    from lora_studio.training.optim import build_scheduler, is_schedule_free

    p = torch.nn.Parameter(torch.ones(4))
    cfg = build_config({"optimizer_type": "AdamWScheduleFree", "learning_rate": 0.1, "lr_scheduler": "cosine"})
    opt = build_optimizer(cfg, [{"params": [p], "lr": 0.1}])
    assert type(opt).__name__ == "AdamWScheduleFree" and is_schedule_free(opt)
    scheduler = build_scheduler(cfg, opt, 100)  # it schedules itself: a constant scheduler, not cosine
    opt.train()
    for _ in range(3):
        p.grad = torch.ones(4)
        opt.step()
        scheduler.step()
        assert scheduler.get_last_lr() == [0.1]
    trained = p.detach().clone()
    opt.eval()  # the averaged weights a file gets
    averaged = p.detach().clone()
    opt.train()
    assert not torch.allclose(trained, averaged) and torch.allclose(p, trained)
