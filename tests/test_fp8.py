"""Low memory: fp8_base / fp8_base_unet (frozen weights stored in float8, computed in the mixed precision), lowram and
highvram, each shown by a number read back from the tiny model or a run."""

from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch
from safetensors import safe_open
from torch.nn import functional as F

from conftest import base_settings, run_cli, write_config
from lora_studio.config import build_config
from lora_studio.models.fp8 import FP8, compute_dtype, is_fp8, store_fp8, weight_bytes

BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def placed(tiny_models):
    """The tiny SD1 model as a run places it (bf16 on the CPU), and copies with fp8_base and fp8_base_unet."""
    from lora_studio.models.loading import load_components
    from lora_studio.training.build import Trained, place_model, store_frozen_fp8
    from lora_studio.training.precision import precision_for

    cfg = build_config({"mixed_precision": "bf16"})
    plain = load_components(str(tiny_models["single"]), None, False)
    place_model(plain, cfg, precision_for(cfg, cuda=False), torch.device("cpu"), Trained(True, True))
    out = {"plain": plain}
    for name, setting in (("fp8", "fp8_base"), ("unet_only", "fp8_base_unet")):
        out[name] = copy.deepcopy(plain)
        store_frozen_fp8(out[name], precision_for(cfg.replace(**{setting: True}), cuda=False), torch.device("cpu"))
    return out


def test_fp8_base_halves_the_frozen_weight_bytes(placed):
    plain, fp8, unet_only = placed["plain"], placed["fp8"], placed["unet_only"]
    bf16_unet, bf16_te = weight_bytes(plain.denoiser), weight_bytes(plain.text_encoders[0])
    assert (bf16_unet, bf16_te) == (4_934_144, 196_608)  # the tiny model's Linear/Conv weights in bf16
    assert weight_bytes(fp8.denoiser) == bf16_unet // 2 == 2_467_072
    assert weight_bytes(fp8.text_encoders[0]) == bf16_te // 2
    assert weight_bytes(unet_only.denoiser) == bf16_unet // 2 and weight_bytes(unet_only.text_encoders[0]) == bf16_te
    layers = [m for m in fp8.denoiser.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert layers and all(m.weight.dtype == FP8 for m in layers)
    assert all(m.bias is None or m.bias.dtype == BF16 for m in layers)  # biases, norms, embeddings keep bf16
    assert {p.dtype for n, p in fp8.denoiser.named_parameters() if "norm" in n} == {BF16}
    te = fp8.text_encoders[0]
    assert te.dtype == BF16 and te.get_input_embeddings().weight.dtype == BF16
    assert compute_dtype(fp8.denoiser) == BF16 and fp8.vae.dtype == BF16  # the VAE is never stored in float8


def test_the_fp8_forward_is_the_layer_with_its_weight_rounded_to_fp8():
    torch.manual_seed(0)
    linear, conv = torch.nn.Linear(16, 8).to(BF16), torch.nn.Conv2d(4, 6, 3, padding=1).to(BF16)
    rounded = {m: m.weight.detach().to(FP8).to(BF16) for m in (linear, conv)}  # by hand
    for m in (linear, conv):
        m.requires_grad_(False)
        store_fp8(m, BF16)
        assert is_fp8(m) and m.weight.element_size() == 1
    x = torch.randn(3, 16, dtype=BF16, requires_grad=True)
    image = torch.randn(2, 4, 5, 5, requires_grad=True)  # float32: autocast computes it in bf16
    assert torch.equal(linear(x), F.linear(x, rounded[linear], linear.bias))
    with torch.autocast("cpu", dtype=BF16):
        out = conv(image)
    expected = F.conv2d(image.to(BF16), rounded[conv], conv.bias, padding=1)
    assert out.dtype == BF16 and torch.equal(out, expected)
    # the backward pass: the input's gradient as the rounded layer's, from the float8 weight
    reference = image.detach().clone().requires_grad_(True)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    ref_out = F.conv2d(reference.to(BF16), rounded[conv], conv.bias, padding=1)
    (ref_out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert torch.allclose(image.grad, reference.grad, rtol=2e-2, atol=1e-2)


def test_the_backward_pass_keeps_no_upcast_copy_of_the_weights(placed):
    """What autograd saves for the backward besides the parameters themselves: with float8 storage no more than the
    bf16 model's (the activations), so the halved weights stay halved through a training step."""
    plain, fp8 = placed["plain"], placed["fp8"]

    def saved_besides_parameters(unet):
        params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
        total = [0]

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                total[0] += t.numel() * t.element_size()
            return t
        torch.manual_seed(0)
        x = torch.randn(1, 4, 8, 8, requires_grad=True)
        cond = torch.randn(1, 77, unet.config.cross_attention_dim, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=BF16):
            unet(x, torch.tensor([500]), encoder_hidden_states=cond)
        return total[0]
    assert saved_besides_parameters(fp8.denoiser) <= saved_besides_parameters(plain.denoiser)


def test_adapters_wrap_fp8_layers_and_stay_float32(placed):
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.errors import UserError
    from lora_studio.network.lora import LoRANetwork
    from lora_studio.training.sampling import SamplePrompt, generate

    c = placed["fp8"]
    net = LoRANetwork(c, 4, 2.0).attach()
    try:
        lora = next(m for m in net.adapters() if isinstance(m._base[0], torch.nn.Linear))
        torch.nn.init.normal_(lora.lora_up.weight)
        x = torch.randn(2, lora._base[0].in_features, requires_grad=True)
        with torch.autocast("cpu", dtype=BF16):
            out = lora._base[0](x)  # the layer's forward is now the adapter's, around the float8 forward
            base = lora._base_forward(x)
        out.float().sum().backward()
        assert not torch.equal(out, base) and lora.lora_down.weight.grad is not None
        assert {p.dtype for p in net.parameters()} == {torch.float32}
        assert all(v.dtype != FP8 for v in net.state_dict().values())
        # a sample image through the diffusers pipeline: every call upcasts the float8 weights again
        prompt = SamplePrompt("lsdemo shape", width=64, height=64, steps=2, seed=1)
        with torch.autocast("cpu", dtype=BF16):
            image = generate(c, prompt, "ddim", {"clip_skip": 1, "max_token_length": 75}, torch.device("cpu"), BF16,
                             0)
        pixels = torch.tensor(list(image.getdata()), dtype=torch.float32)
        assert image.size == (64, 64) and pixels.std() > 1  # a picture, not a NaN-black square
    finally:
        net.detach_from_base()
    args = parse_network_args(["algo=loha"], "lycoris.kohya")
    loha = LoRANetwork(c, 4, 2.0, train_text_encoder=False, args=args)
    assert all(m.bypass_mode for m in loha.adapters())  # W x + dW x: the float8 weight is read by its forward only
    with pytest.raises(UserError, match="fp8_base: LyCORIS DoRA"):
        LoRANetwork(c, 4, 2.0, args=parse_network_args(["algo=locon", "dora_wd=true"], "lycoris.kohya"))


def test_fp8_base_needs_mixed_precision_and_says_so():
    from lora_studio.config.rules import check_settings, setting_problems
    from lora_studio.errors import UserError

    for name in ("fp8_base", "fp8_base_unet"):
        message = setting_problems(build_config({name: True, "mixed_precision": "no"}))[name]
        assert 'needs mixed_precision "bf16" or "fp16" (mixed_precision is "no")' in message
        assert name not in setting_problems(build_config({name: True, "mixed_precision": "bf16"}))
    with pytest.raises(UserError, match="fp8_base: .*mixed_precision"):
        check_settings(build_config({"fp8_base": True, "output_dir": "o", "pretrained_model_name_or_path": "m",
                                     "train_data_dir": "d"}))


def test_the_estimate_knows_fp8_base_and_lowram(tiny_models):
    from lora_studio.training.estimate import GPU, ModelSize, estimate, memory_tips

    size = ModelSize("sd1", 859_520_964, 123_060_480, 83_653_863, 3_000_000, 400_000)  # SD1.5's counts
    gpu = GPU("NVIDIA GeForce RTX 3060", 12)

    def run(**settings):
        cfg = build_config({"mixed_precision": "bf16", "resolution": "512",
                            "pretrained_model_name_or_path": str(tiny_models["single"]), **settings})
        return estimate(cfg, size, 40, 10, (512, 512), gpu)
    plain, fp8, unet_only = run(), run(fp8_base=True), run(fp8_base_unet=True)
    gb = 1024**3
    assert plain.vram_gb - fp8.vram_gb == pytest.approx((size.unet + size.text_encoders) / gb, abs=0.01)
    assert plain.vram_gb - unet_only.vram_gb == pytest.approx(size.unet / gb, abs=0.01)  # 0.8 GB less
    assert any("fp8_base = true" in tip for tip in memory_tips(build_config({})))
    assert not any("fp8_base" in tip for tip in memory_tips(build_config({"fp8_base": True})))
    low = run(lowram=True)
    loaded = (size.unet + size.text_encoders) * 2 + size.vae * 4  # bf16 weights, the VAE in float32 until placed
    assert plain.ram_gb - low.ram_gb == pytest.approx(loaded / gb, abs=0.01)  # lowram: no model in system RAM
    assert low.vram_gb == plain.vram_gb  # each weight reaches the GPU already in bf16
    assert run(highvram=True).vram_gb == plain.vram_gb


def test_lowram_builds_a_single_file_model_on_the_context_device(tiny_models, caplog):
    """On a GPU, lowram loads the checkpoint under ``torch.device(gpu)``: every module is made there. The meta
    device shows it here (no GPU needed): nothing is built in system RAM. Without a GPU it says it does nothing."""
    from lora_studio.models.loading import load_components
    from lora_studio.training.build import low_ram_loading

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: copying the file's tensors into meta parameters does nothing
        c = load_components(str(tiny_models["single"]), None, False)
    assert {p.device.type for m in (c.denoiser, c.vae, *c.text_encoders) for p in m.parameters()} == {"meta"}
    cfg = build_config({"lowram": True, "highvram": True, "pretrained_model_name_or_path": str(tiny_models["single"])})
    with caplog.at_level(logging.INFO, logger="lora_studio"), low_ram_loading(cfg, torch.device("cpu")):
        assert torch.empty(1).device.type == "cpu"
    assert "lowram: no effect without a GPU" in caplog.text and "highvram: no effect" in caplog.text


def test_kohya_gui_json_carries_the_memory_switches():
    from lora_studio.config.kohya_import import convert

    result = convert({"LoRA_type": "Standard", "fp8_base": True, "fp8_base_unet": False, "lowram": True,
                      "highvram": True, "mixed_precision": "bf16"})
    assert (result.settings["fp8_base"], result.settings["lowram"], result.settings["highvram"]) == (True,) * 3
    assert not any(k in " ".join(result.unsupported) for k in ("fp8_base", "lowram", "highvram"))


def test_an_fp8_run_on_the_cpu_trains_and_saves_no_float8(tiny_models, dataset, tmp_path):
    out = tmp_path / "out"
    settings = base_settings(tiny_models["single"], dataset, out, mixed_precision="bf16", fp8_base=True,
                             max_train_steps=3, learning_rate=1e-2)
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    # the text encoders when they are placed (first: caches), then the U-Net
    assert "Linear/Conv weights of the text encoders stored in float8" in proc.stderr
    assert "Linear/Conv weights of the U-Net stored in float8" in proc.stderr
    events = [json.loads(line) for line in (out / "test_lora_events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)  # finite, every step
    path = out / "test_lora.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert {v.dtype for v in tensors.values()} == {torch.float16}  # save_precision, never float8
    assert any(v.any() for k, v in tensors.items() if k.endswith("lora_up.weight"))  # it trained
    assert (meta["ss_fp8_base"], meta["ss_fp8_base_unet"], meta["ss_lowram"]) == ("True", "False", "False")
