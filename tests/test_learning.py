"""Training learns: the denoising loss on the concept's images falls clearly below the untrained value."""

import torch
from conftest import base_settings, run_cli, write_config
from safetensors.torch import load_file

from lora_studio.config import build_config
from lora_studio.data.dataset import TrainingData
from lora_studio.data.sources import datasets_from_config
from lora_studio.errors import UserError
from lora_studio.models.loading import load_components
from lora_studio.network.lora import LoRANetwork
from lora_studio.training.loss import denoising_loss


def _eval_loss(components, data_dir) -> float:
    """Mean loss over fixed noise and timesteps, so two measurements differ only by the weights."""
    from diffusers import DDPMScheduler

    from lora_studio.models.ddpm import DDPMObjective

    cfg = build_config({"train_data_dir": str(data_dir), "resolution": "64", "output_dir": "x",
                        "pretrained_model_name_or_path": "x"})
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    pixels = torch.stack([torch.from_numpy(data.pixels(i, False)) for i in range(len(data.items))])
    objective = DDPMObjective(DDPMScheduler.from_config(components.scheduler_config))
    g = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        latents = components.vae.encode(pixels).latent_dist.sample(generator=g) * 0.18215
        cond = components.family.encode_prompt(components, [it.caption for it in data.items], "cpu",
                                               {"clip_skip": 1, "max_token_length": 75})
        for _ in range(8):
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(0, 1000, (len(latents),), generator=g)
            total += float(denoising_loss(components, objective, latents, cond, torch.ones(len(latents)),
                                          noise, t))
    return total / 8


def test_short_run_learns_the_concept(tiny_models, tmp_path):
    from lora_studio.demo import write_dataset

    data = write_dataset(tmp_path / "data", count=8, repeats=5)
    settings = base_settings(tiny_models["folder"], data, tmp_path / "out", train_batch_size=4, max_train_steps=40,
                             learning_rate=2e-3, network_alpha=4.0, save_every_n_epochs=1, save_last_n_epochs=2)
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    out = tmp_path / "out"
    # 10 steps per epoch, 4 epochs: epoch files 1..3, only the last 2 kept; epoch 4 is the final file
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "test_lora-000002.safetensors", "test_lora-000003.safetensors", "test_lora.safetensors"]

    components = load_components(str(tiny_models["folder"]), None, False)
    untrained = _eval_loss(components, data)
    network = LoRANetwork(components, 4, 4.0)
    network.load_weights(out / "test_lora.safetensors")
    saved = load_file(str(out / "test_lora.safetensors"))
    assert all(torch.equal(v.half(), saved[k]) for k, v in network.state_dict().items())  # continues exactly
    network.attach()
    trained = _eval_loss(components, data)
    assert trained < 0.9 * untrained, (untrained, trained)


def test_network_weights_with_another_rank_is_refused(tiny_models, trained_run):
    components = load_components(str(tiny_models["folder"]), None, False)
    network = LoRANetwork(components, 8, 1.0)
    try:
        network.load_weights(trained_run["file"])
    except UserError as exc:
        assert "has rank 4 but network_dim is 8" in str(exc)
    else:
        raise AssertionError("a rank mismatch must be refused")
