"""The LyCORIS family through lycoris-lora (network_module = "lycoris.kohya", algo=... in network_args): LoHa, LoKr,
(IA)3 and DoRA files carry the keys AUTOMATIC1111 and ComfyUI read, on the same module names as our LoRA, and
reload into our network with identical weights."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_checks import a1111_compvis_name

# The weight names each loader's LyCORIS support reads (shared/reference/ecosystem.md, section 1.1)
KEYS = {
    "loha": [{"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}],
    "ia3": [{"weight", "on_input"}],
    "dora": [{"lora_down.weight", "lora_up.weight", "alpha", "dora_scale"}],
}
# LoKr: each factor is whole (lokr_wN) or itself low-rank (lokr_wN_a + lokr_wN_b)
LOKR_PARTS = ({"lokr_w1"}, {"lokr_w1_a", "lokr_w1_b"}), ({"lokr_w2"}, {"lokr_w2_a", "lokr_w2_b"})
ARGS = {"loha": ["algo=loha"], "lokr": ["algo=lokr", "factor=4"], "ia3": ["algo=ia3"],
        "dora": ["algo=lora", "dora_wd=true"]}


def _by_stem(sd):
    out = {}
    for key in sd:
        stem, rest = key.split(".", 1)
        out.setdefault(stem, set()).add(rest)
    return out


@pytest.fixture(scope="module", params=sorted(ARGS))
def lyco_run(request, tiny_models, tmp_path_factory):
    from lora_studio.demo import write_dataset

    algo = request.param
    root = tmp_path_factory.mktemp(f"lyco_{algo}")
    data = write_dataset(root / "data", count=4, repeats=1)
    settings = base_settings(tiny_models["folder"], data, root / "out", max_train_steps=3, output_name=algo,
                             network_module="lycoris.kohya", network_args=ARGS[algo], learning_rate=1e-2)
    proc = run_cli("train", "--config", str(write_config(root / "run.toml", settings)))
    path = root / "out" / f"{algo}.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    return {"algo": algo, "path": path, "sd": load_file(str(path)), "meta": meta, "proc": proc,
            "model": tiny_models["folder"], "settings": settings}


def test_lycoris_files_have_the_keys_a1111_and_comfyui_read_on_our_module_names(lyco_run, trained_run):
    """LyCORIS's default preset ("full"): our LoRA's layers, the ResNet and resampling blocks (k x k convs at
    network_dim, as LyCORIS does without conv_dim), conv_in, conv_out and the time embedding, each named as
    AUTOMATIC1111 and ComfyUI map them."""
    from lora_studio.models.loading import load_components
    from lora_studio.models.tiny import ldm_state_dict

    algo, sd = lyco_run["algo"], lyco_run["sd"]
    by_stem = _by_stem(sd)
    lora_stems = {k.split(".", 1)[0] for k in load_file(str(trained_run["file"]))}
    extra = set(by_stem) - lora_stems
    assert lora_stems <= set(by_stem)
    assert {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
            "lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_downsamplers_0_conv"} <= extra
    assert all(s.startswith("lora_unet_") and "attentions" not in s for s in extra)
    c = load_components(str(lyco_run["model"]), None, False)
    ldm_modules = {key.rsplit(".", 1)[0].replace("model.diffusion_model.", "diffusion_model.")
                   .replace("cond_stage_model.transformer.", "transformer.").replace(".", "_")
                   for key in ldm_state_dict(c.denoiser, c.vae, c.text_encoders[0])}
    comfy_unet = {"lora_unet_" + n.replace(".", "_") for n, _ in c.denoiser.named_modules()}
    for stem in extra:
        assert a1111_compvis_name(stem) in ldm_modules and stem in comfy_unet, stem
    for stem, keys in by_stem.items():
        if algo == "lokr":
            assert "alpha" in keys and all(any(p <= keys for p in pair) for pair in LOKR_PARTS), (stem, keys)
            assert keys <= {"alpha", "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"}
        else:
            assert keys in KEYS[algo], (stem, keys)
    assert any(v.abs().max() > 0 for k, v in sd.items() if not k.endswith(("alpha", "on_input")))


def test_the_log_and_metadata_say_diffusers_cannot_load_them(lyco_run):
    meta = lyco_run["meta"]
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert "not diffusers" in meta["lora_studio_loads_in"] and "ComfyUI" in meta["lora_studio_loads_in"]
    assert "diffusers cannot load them" in lyco_run["proc"].stderr


def test_lycoris_files_reload_into_our_network_with_identical_weights(lyco_run):
    from lora_studio.models.loading import load_components
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.network.lora import LoRANetwork

    components = load_components(str(lyco_run["model"]), None, False)
    args = parse_network_args(lyco_run["settings"]["network_args"], "lycoris.kohya")
    torch.manual_seed(123)  # different initial weights: everything must come from the file
    network = LoRANetwork(components, 4, 2.0, args=args)
    network.load_weights(lyco_run["path"])
    own = network.state_dict()
    assert set(own) == set(lyco_run["sd"])
    for key, value in lyco_run["sd"].items():
        mine = own[key]
        assert torch.equal(mine.to(value.dtype), value), key
    network.attach()
    network.detach_from_base()


def test_lycoris_types_need_the_lycoris_module_and_a_known_algo(tiny_models, tmp_path, dataset):
    settings = base_settings(tiny_models["folder"], dataset, tmp_path / "out", network_args=["algo=loha"])
    proc = run_cli("train", "--config", str(write_config(tmp_path / "a.toml", settings)), check=False)
    assert proc.returncode == 2 and 'network_module = "lycoris.kohya"' in proc.stderr
    settings.update(network_module="lycoris.kohya", network_args=["algo=lycoris"])
    proc = run_cli("train", "--config", str(write_config(tmp_path / "b.toml", settings)), check=False)
    assert proc.returncode == 2 and "algo 'lycoris' is not supported" in proc.stderr
