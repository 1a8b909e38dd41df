"""Comparison grids (``lora-studio compare``): files x strengths tiles per prompt; strength 0 is the base model's own
image, strength s is diffusers' image with the LoRA loaded at scale s; LoHa / LoKr / DoRA deltas equal LyCORIS's
own; bad input is refused in words."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import run_cli
from lora_studio.errors import UserError

STRENGTHS = [0.0, 0.5, 0.7, 0.85, 1.0]


@pytest.fixture(scope="module")
def components(trained_run):
    from lora_studio.models.loading import load_components

    return load_components(str(trained_run["model"]), None, False)


@pytest.fixture(scope="module")
def cli_grid(trained_run):
    """The grids of the trained run from its config, through the CLI (default strengths)."""
    proc = run_cli("compare", "--config", str(trained_run["config"]), subprocess_=True)
    folder = trained_run["out"] / "compare"
    return {"proc": proc, "folder": folder, "index": json.loads((folder / "test_lora_compare.json").read_text())}


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_grid_has_files_x_strengths_tiles_per_prompt(cli_grid, trained_run):
    index, folder = cli_grid["index"], cli_grid["folder"]
    out = trained_run["out"]
    assert index["files"] == [str(out / "test_lora-000001.safetensors"), str(out / "test_lora.safetensors")]
    assert index["strengths"] == STRENGTHS and index["status"] == "completed"
    assert len(index["grids"]) == 2  # two sample prompts
    assert all(r["modules"] == 210 and not r["unmatched"] and not r["unknown_keys"] for r in index["report"])
    for number, grid in enumerate(index["grids"]):
        assert grid["path"] == str(folder / f"test_lora_compare_{number:02d}.png")
        image = Image.open(grid["path"])
        lay = grid["layout"]
        assert (lay["rows"], lay["columns"], lay["tile_width"], lay["tile_height"]) == (2, 5, 64, 64)
        assert image.size == (lay["left"] + 5 * 64, lay["top"] + 2 * 64) and lay["left"] > 0 and lay["top"] > 0
        pixels = np.asarray(image.convert("RGB"))
        for r, row in enumerate(grid["tiles"]):
            for c, tile in enumerate(row):
                y, x = lay["top"] + r * 64, lay["left"] + c * 64
                assert np.array_equal(pixels[y:y + 64, x:x + 64], _pixels(tile)), (r, c)
        assert grid["tiles"][0][0] == grid["tiles"][1][0] == grid["base"]  # the base image, made once
        assert len({t for row in grid["tiles"] for t in row}) == 1 + 2 * 4
    assert grid["seed"] == 1234 + 1 and index["grids"][0]["seed"] == 3  # --d 3; else the run's seed + index
    events = [json.loads(line) for line in (folder / "test_lora_compare_events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["log", "start"] and kinds[-1] == "end" and events[-1]["status"] == "completed"
    assert kinds.count("image") == events[1]["total_images"] == 2 * (1 + 2 * 4) and kinds.count("grid") == 2
    images = [e for e in events if e["type"] == "image"]  # "image 3 of 18", and the time the rest will take
    assert [(e["index"], e["total"]) for e in images] == [(i, 18) for i in range(1, 19)]
    assert all(e["eta_s"] >= 0 for e in images) and images[-1]["eta_s"] == 0
    assert cli_grid["proc"].stdout.split() == [g["path"] for g in index["grids"]]


def test_strength_zero_tile_is_the_base_models_image(cli_grid, components, trained_run):
    """The same seed, prompt and settings with no LoRA at all: pixel for pixel."""
    from lora_studio.training.sampling import generate, read_prompt_file

    index = cli_grid["index"]
    prompts = read_prompt_file(trained_run["root"] / "prompts.txt", 64)
    for grid, prompt in zip(index["grids"], prompts):
        base = generate(components, prompt, "ddim", {"clip_skip": 2, "max_token_length": 75}, torch.device("cpu"),
                        torch.float32, grid["seed"])
        assert np.array_equal(np.asarray(base), _pixels(grid["base"]))
    strong = _pixels(index["grids"][0]["tiles"][1][4])
    assert np.abs(strong.astype(int) - _pixels(index["grids"][0]["base"])).mean() > 0.5  # the LoRA does something


def test_strength_equals_diffusers_lora_scale_and_zero_restores_weights_bit_for_bit(trained_run, components):
    from diffusers import StableDiffusionPipeline

    from lora_studio.compare import Renderer
    from lora_studio.training.sampling import SamplePrompt, make_scheduler

    path = trained_run["file"]
    before = {k: v.clone() for k, v in components.denoiser.state_dict().items()}
    renderer = Renderer(components=components, clip_skip=1)
    stack = renderer.set_loras([path])
    assert stack.report[0]["modules"] == 210 and stack.report[0]["kinds"] == {"lora": 210}
    prompt = SamplePrompt("lsdemo shape, red disc", negative="blurry", width=64, height=64, steps=3, cfg_scale=5.0)
    ours = {s: renderer.image(prompt, [s], "euler", seed=7, output_type="np") for s in (0.0, 0.5, 1.0)}
    renderer.close()
    after = components.denoiser.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # strength 0 / close: the original weights exactly

    pipe = StableDiffusionPipeline.from_pretrained(trained_run["model"], safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = make_scheduler("euler", components.scheduler_config)
    pipe.set_progress_bar_config(disable=True)

    def theirs():
        latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(7))
        return pipe(prompt.prompt, negative_prompt=prompt.negative, num_inference_steps=3, guidance_scale=5.0,
                    height=64, width=64, latents=latents, output_type="np").images[0]
    base = theirs()
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="t")
    # We bake s·(alpha/r)·up·down into each weight; diffusers adds s·(alpha/r)·up(down(x)) beside it. The two sum in
    # another order, so their images differ by float32 rounding carried through 3 sampler steps and the VAE:
    # 1e-5 to 2e-4 here, while the LoRA moves the image by about 0.05. A wrong strength is off by a share of the
    # effect itself (0.5 instead of 1.0: half of it); rounding stays under 1% of it. So: within 2% of the effect.
    for s in (1.0, 0.5):
        pipe.set_adapters(["t"], [s])
        image = theirs()
        effect = np.abs(image - base).max()
        assert effect > 5e-3  # the LoRA changes the image (20x the rounding, at half strength too) ...
        assert np.abs(ours[s] - image).max() <= 0.02 * effect, (s, np.abs(ours[s] - image).max(), effect)  # ... as
        # diffusers' LoRA at that scale does
        other = 0.5 if s == 1.0 else 1.0
        assert np.abs(ours[other] - image).max() > 0.2 * effect  # another strength would be told apart
    # strength 0 is the base model: the same operations as diffusers' plain pipeline, up to rounding of the order of
    # float32's 1.2e-7 steps in the pixel values (far below the 2% of the effect allowed above)
    assert np.abs(ours[0.0] - base).max() <= 1e-5


LYCORIS = {"loha": ["algo=loha"], "lokr": ["algo=lokr", "factor=4"],
           "lokr_tucker": ["algo=lokr", "factor=4", "use_tucker=true"], "loha_dora": ["algo=loha", "dora_wd=true"],
           "ia3": ["algo=ia3"], "full": ["algo=full"]}


@pytest.mark.parametrize("name", sorted(LYCORIS))
def test_lycoris_file_delta_equals_lycoris_modules_own(name, components, tmp_path):
    """A LyCORIS network (this project's training path, random weights) saved as a file: the delta read back from
    the file equals what each LyCORIS module adds to its weight, and the U-Net computes the same with either."""
    from lora_studio.config.network_args import parse_network_args
    from lora_studio.lora_delta import LoRAStack, lora_module_table, read_lora_file
    from lora_studio.network.lora import LoRANetwork

    net = LoRANetwork(components, 4, 2.0, train_text_encoder=False,
                      args=parse_network_args(LYCORIS[name], "lycoris.kohya")).attach()
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            # DoRA's magnitudes and full's weights (the whole weight while attached) change a little
            p.copy_(p * 1.1 if "dora" in pname else p + torch.randn_like(p) * 0.02 if name == "full" else
                    torch.randn_like(p) * 0.2)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    unet = components.denoiser
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    context = torch.randn(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        expected = unet(x, t, context).sample
    net.detach_from_base()
    components.denoiser.requires_grad_(False)  # (LyCORIS's full module gives the weights back as new Parameters)
    lora = read_lora_file(path)
    assert not lora.unknown_keys and set(lora.modules) == {m.lora_name for m in net.adapters()}
    table = lora_module_table(components)
    decomposed = whole_factors = 0
    for module in net.adapters() if name not in ("ia3", "full") else ():  # those two: by the U-Net's output
        weights = lora.modules[module.lora_name]
        w0 = table[module.lora_name].weight.detach().float()
        ref = module.get_weight(module.shape) * module.scalar
        if module.wd:
            ref = module.apply_weight_decompose(w0 + ref, 1) - w0
        mine, _ = weights.delta(w0)
        assert torch.allclose(mine, ref.reshape(w0.shape), rtol=1e-5, atol=1e-6), module.lora_name
        if weights.kind == "lokr":
            whole = "lokr_w1" in weights.tensors and "lokr_w2" in weights.tensors
            whole_factors += whole
            decomposed += not whole
            assert weights.scale == (1.0 if whole else 0.5)  # alpha / rank only with a low-rank factor
        if name == "lokr_tucker":
            assert any("lokr_t2" in lora.modules[m].tensors for m in lora.modules)
    if name.startswith("lokr"):
        assert decomposed and whole_factors  # both LoKr scale rules were met
    assert {m.kind for m in lora.modules.values()} == {name.split("_")[0]}
    with torch.no_grad():
        with LoRAStack(components, [lora]) as stack:
            stack.apply([1.0])
            got = unet(x, t, context).sample
    assert (expected - unet(x, t, context).sample).abs().max() > 1e-3
    # float32 rounding only (merged weights vs LyCORIS's own forward), which this random tiny U-Net amplifies a bit
    assert (got - expected).abs().max() < 1e-3 * expected.abs().max(), (got - expected).abs().max()


def test_lokr_with_two_whole_factors_is_unscaled_and_dora_interpolates():
    from lora_studio.lora_delta import ModuleWeights

    w1, w2 = torch.randn(2, 3), torch.randn(4, 5)
    lokr = ModuleWeights("lora_unet_x", "lokr", {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(1.0)})
    assert torch.allclose(lokr.delta(torch.zeros(8, 15))[0], torch.kron(w1, w2))  # no alpha / rank: 1
    down, up = torch.randn(2, 15), torch.randn(8, 2)
    lora = ModuleWeights("lora_unet_x", "lora", {"lora_down.weight": down, "lora_up.weight": up,
                                                 "alpha": torch.tensor(1.0)})
    assert torch.allclose(lora.delta(torch.zeros(8, 15))[0], up @ down * 0.5)
    w0 = torch.randn(8, 15)
    magnitude = torch.rand(8, 1) + 0.5
    dora = ModuleWeights("lora_unet_x", "lora", {**lora.tensors, "dora_scale": magnitude})
    merged = w0 + dora.delta(w0)[0]  # strength 1: the merged weight's rows have the stored magnitudes
    assert torch.allclose(merged.norm(dim=1, keepdim=True), magnitude, atol=1e-5)


def test_bad_input_is_refused_in_words(tmp_path, tiny_models, capsys, components):
    from lora_studio.cli import main
    from lora_studio.compare import run_files
    from lora_studio.lora_delta import LoRAStack, read_lora_file

    with pytest.raises(UserError, match="not found"):
        read_lora_file(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not a tensor file")
    with pytest.raises(UserError, match="as a .safetensors file: its first 8 bytes"):
        read_lora_file(tmp_path / "text.safetensors")
    with pytest.raises(UserError, match="not a kohya-format LoRA"):
        read_lora_file(tiny_models["folder"] / "text_encoder" / "model.safetensors")
    save_file({"lora_unet_x.oft_blocks": torch.zeros(2, 2, 2), "lora_unet_x.alpha": torch.tensor(1.0)},
              str(tmp_path / "oft.safetensors"))
    with pytest.raises(UserError, match="OFT"):
        read_lora_file(tmp_path / "oft.safetensors")
    # unknown keys and modules of another model are reported, not dropped in silence; none matching: refused
    stem = "lora_unet_down_blocks_0_attentions_0_proj_in"
    good = {f"{stem}.lora_down.weight": torch.randn(2, 32), f"{stem}.lora_up.weight": torch.randn(32, 2),
            f"{stem}.lora_up.bias": torch.zeros(32), "lora_unet_input_blocks_99_1_proj_in.lora_down.weight":
            torch.randn(2, 32), "lora_unet_input_blocks_99_1_proj_in.lora_up.weight": torch.randn(32, 2),
            "some_other_key": torch.zeros(1)}
    save_file(good, str(tmp_path / "mixed.safetensors"))
    stack = LoRAStack(components, [tmp_path / "mixed.safetensors"])
    assert stack.report[0]["modules"] == 1
    assert stack.report[0]["unmatched"] == ["lora_unet_input_blocks_99_1_proj_in"]
    assert stack.report[0]["unknown_keys"] == [f"{stem}.lora_up.bias", "some_other_key"]
    save_file({k: v for k, v in good.items() if "99" in k}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="none of its 1 modules is in this base model"):
        LoRAStack(components, [tmp_path / "other.safetensors"])
    save_file({f"{stem}.lora_down.weight": torch.randn(2, 64), f"{stem}.lora_up.weight": torch.randn(32, 2)},
              str(tmp_path / "shape.safetensors"))
    with pytest.raises(UserError, match="does not fit this base model"):
        LoRAStack(components, [tmp_path / "shape.safetensors"])
    # the CLI: one clear line, exit code 2
    for argv, words in ((["--files", str(tmp_path / "missing.safetensors")], "not found"),
                        (["--files", str(tmp_path / "mixed.safetensors")], "needs --model"),
                        (["--files", str(tmp_path / "mixed.safetensors"), "--model", str(tiny_models["folder"])],
                         "no prompts"),
                        (["--files", str(tmp_path / "text.safetensors"), "--model", str(tiny_models["folder"]),
                          "--prompts", "a prompt --w 64 --h 64 --s 1", "--out", str(tmp_path / "o")],
                         "as a .safetensors file: its first 8 bytes"),
                        ([], "give --config")):
        assert main(["compare", *argv]) == 2
        assert words in capsys.readouterr().err
    # a run's files in training order: by the step in their metadata, the final file last
    for name, step in (("r-000002", 20), ("r-step00000015", 15), ("r", 20), ("r-000001", 10)):
        save_file({"x": torch.zeros(1)}, str(tmp_path / f"{name}.safetensors"), metadata={"ss_steps": str(step)})
    assert [p.name for p in run_files(tmp_path, "r")] == ["r-000001.safetensors", "r-step00000015.safetensors",
                                                          "r-000002.safetensors", "r.safetensors"]
