"""Everything around training for SD3.5 large, Anima and Lumina 2, as for Flux: the GUI's model field (status line,
the part files found in ComfyUI's models/ folders, the fields each family shows), the Test tab (a trained file
rendered with its family's parts, the family's steps, CFG and 16 px sizes), a comparison grid, the resource
estimate from the files' headers, and a run's validation loss and sample images. The models are the tiny ones of
``tiny_sd3`` / ``tiny_anima`` / ``tiny_lumina`` placed as ComfyUI users have them (one models/ folder holding all
three families' files); each family trains once (8 steps, 64 px, rank 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import built_once, run_cli, write_config
from PIL import Image

from lora_studio.config import build_config, load_config
from lora_studio.config import schema as S
from lora_studio.gui.form import check_form
from lora_studio.gui.model_family import fill_parts, hidden_but_set, hidden_settings, read_model
from lora_studio.gui.tester import TestSettings, check, compare_options, family_defaults, settings_from_run
from lora_studio.models.registry import BY_NAME as FAMILIES

FAMILY = {"sd3": "sd3.5-large", "anima": "anima", "lumina": "lumina2"}
# where ComfyUI keeps each file (the SD3.5 large checkpoint holds its VAE; Lumina's ae is the Flux AE)
COMFY_FOLDER = {"pretrained_model_name_or_path": "diffusion_models", "clip_l": "text_encoders",
                "clip_g": "text_encoders", "t5xxl": "text_encoders", "qwen3": "text_encoders",
                "gemma2": "text_encoders", "vae": "vae", "ae": "vae"}
PARTS = {"sd3": ("clip_l", "clip_g", "t5xxl"), "anima": ("qwen3", "vae"), "lumina": ("gemma2", "ae")}
OWN_OPTIONS = {"sd3": {}, "anima": {"qwen3_max_token_length": 24, "t5_max_token_length": 24},
               "lumina": {"system_prompt": "You are an assistant", "gemma2_max_token_length": 64}}
STEPS, EVERY = 8, 4
# sd-scripts' prompt options: --fs the flow shift of the sampling schedule, --ctr where CFG stops (Lumina)
PROMPTS = "lsdemo shape, red disc --n blurry --w 64 --h 64 --d 5 --s 2 --l 4 --fs 3 --ctr 0.5\n"


def run_settings(name: str, models: dict, data, out, **extra) -> dict:
    """A short run of ``name`` (as the family tests' settings): held-out images measured every 4 steps, a sample
    image every 4 steps, a file every 4 steps."""
    return {**models[name], "train_data_dir": str(data), "output_dir": str(out), "output_name": f"{name}_lora",
            "resolution": "64", "train_batch_size": 2, "max_train_steps": STEPS, "learning_rate": 4e-3,
            "network_dim": 4, "network_alpha": 4.0, "seed": 7, "cache_latents": True, "validation_split": 0.25,
            "validate_every_n_steps": EVERY, "sample_every_n_steps": EVERY, "save_every_n_steps": EVERY,
            **OWN_OPTIONS[name], **extra}


@pytest.fixture(scope="session")
def dit_runs(tmp_path_factory):
    """The three tiny models in one ComfyUI models/ folder and one short run of each, built once for every worker:
    (root, {"models": {name: settings}, "data": image folder, "prompts": prompt file})."""
    def build(root):
        from lora_studio.demo import write_dataset
        from lora_studio.models.tiny_anima import write_tiny_anima
        from lora_studio.models.tiny_lumina import write_tiny_lumina
        from lora_studio.models.tiny_sd3 import write_tiny_sd3

        written = {"sd3": write_tiny_sd3(root / "src" / "sd3", "5-large", seed=3, layout="separate"),
                   "anima": write_tiny_anima(root / "src" / "anima", "single", seed=3),
                   "lumina": write_tiny_lumina(root / "src" / "lumina", seed=3)}
        models_dir = root / "ComfyUI" / "models"
        models = {}
        for name, settings in written.items():
            models[name] = dict(settings)
            for setting, folder in COMFY_FOLDER.items():
                if setting in settings:
                    target = models_dir / folder / Path(settings[setting]).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(settings[setting], target)
                    models[name][setting] = str(target)
        data = write_dataset(root / "data", count=8, repeats=2)
        prompts = root / "prompts.txt"
        prompts.write_text(PROMPTS, encoding="utf-8")
        for name in FAMILY:
            settings = run_settings(name, models, data, root / f"out-{name}", sample_prompts=str(prompts))
            run_cli("train", "--config", str(write_config(root / f"{name}.toml", settings)))
        return {"models": models, "data": str(data), "prompts": str(prompts)}
    root, info = built_once(tmp_path_factory, "dit-around-training", build)
    return root, info


def _out(root, name) -> Path:
    return root / f"out-{name}"


def _image_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def _events(root, name) -> list[dict]:
    path = _out(root, name) / f"{name}_lora_events.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- the runs: validation loss and sample images
@pytest.mark.parametrize("name", list(FAMILY))
def test_a_run_reports_validation_loss_and_writes_sample_images(dit_runs, name):
    root, info = dit_runs
    events = _events(root, name)
    validations = [e for e in events if e.get("type") == "validation"]
    # every 4 steps, and at the end of the first epoch (6 images x 2 repeats / batch 2 = 6 steps), as sd-scripts
    assert [e["step"] for e in validations] == [EVERY, 6, 2 * EVERY]
    assert all(0 < e["loss"] < 10 for e in validations), validations
    samples = sorted((_out(root, name) / "sample").glob("*.png"))
    assert len(samples) >= 2, samples  # one at step 4, one at step 8
    with Image.open(samples[-1]) as image:
        assert image.size == (64, 64)
    files = sorted(p.name for p in _out(root, name).glob("*.safetensors"))
    assert files == [f"{name}_lora-step00000004.safetensors", f"{name}_lora.safetensors"]


def test_validation_is_measured_at_the_familys_fixed_points(dit_runs):
    """SD3's objective is told whole timesteps (sd-scripts' 200, 400, 600, 800 over the timestep range); Anima's and
    Lumina 2's sigmas (0.2 ... 0.8); each point is given to every image of a held-out batch."""
    from lora_studio.models.loading import load_components

    root, info = dit_runs
    expected = {"sd3": ([200.0, 400.0, 600.0, 800.0], [300.0, 400.0, 500.0, 600.0]),
                "anima": ([0.2, 0.4, 0.6, 0.8], [0.3, 0.4, 0.5, 0.6]),
                "lumina": ([0.2, 0.4, 0.6, 0.8], [0.3, 0.4, 0.5, 0.6])}
    for name, (full, narrowed) in expected.items():
        settings = run_settings(name, info["models"], info["data"], root / "x")
        cfg = build_config(settings)
        components = load_components(cfg.pretrained_model_name_or_path, cfg.vae, False, options=cfg)
        objective = components.family.objective(components, cfg)
        assert objective.validation_points == pytest.approx(full), name
        assert objective.fixed_timesteps(objective.validation_points[1], 3, "cpu").tolist() == \
            pytest.approx([full[1]] * 3)
        within = components.family.objective(components, cfg.replace(min_timestep=200, max_timestep=700))
        assert within.validation_points == pytest.approx(narrowed), name  # inside min/max_timestep


# ---------------------------------------------------------------- the GUI's model field
STATUS = {"sd3": "Model: SD3.5 large (transformer; needs clip_l, clip_g; optional t5xxl)",
          "anima": "Model: Anima (transformer; needs qwen3, vae; optional llm_adapter_path)",
          "lumina": "Model: Lumina 2 (transformer; needs gemma2, ae)"}


@pytest.mark.parametrize("name", list(FAMILY))
def test_the_status_line_and_the_parts_found_in_comfyuis_folders(dit_runs, name):
    """One models/ folder holds all three families' files: each transformer gets its own parts from text_encoders/
    and vae/ (confirmed by their headers), never another family's file (the SD3.5 checkpoint beside Lumina's
    transformer holds an autoencoder too)."""
    root, info = dit_runs
    models = info["models"][name]
    reading = read_model(models["pretrained_model_name_or_path"])
    assert reading.family is FAMILIES[FAMILY[name]] and reading.status == STATUS[name] and reading.problem == ""
    filled = fill_parts(models["pretrained_model_name_or_path"], reading.family, {})
    assert filled.values == {part: models[part] for part in PARTS[name]}
    assert filled.notes == [f"`{part}` filled in: `../{COMFY_FOLDER[part]}/{Path(models[part]).name}`"
                            for part in PARTS[name]]
    assert filled.missing == []
    # a part the user set is kept; a part found nowhere is named
    mine = {PARTS[name][0]: "/elsewhere/mine.safetensors"}
    assert PARTS[name][0] not in fill_parts(models["pretrained_model_name_or_path"], reading.family, mine).values
    confined = fill_parts(models["pretrained_model_name_or_path"], reading.family, {},
                          roots=[Path(models["pretrained_model_name_or_path"]).parent])
    assert confined.values == {} and confined.missing == [p for p in PARTS[name] if p != "t5xxl"]  # T5: optional


def test_an_sd3_checkpoint_with_its_parts_inside_needs_nothing_else(tmp_path):
    from lora_studio.models.tiny_sd3 import write_tiny_sd3

    inside = write_tiny_sd3(tmp_path / "all", "medium", seed=1, layout="all_in_one")
    reading = read_model(inside["pretrained_model_name_or_path"])
    assert reading.status == "Model: SD3 medium (transformer; its parts inside)"
    assert fill_parts(inside["pretrained_model_name_or_path"], reading.family, {}).values == {}


def test_each_family_shows_its_own_fields_and_hides_the_others():
    own = {"sd3.5-large": {"clip_l", "clip_g", "t5xxl", "vae", "training_shift", "weighting_scheme", "blocks_to_swap",
                           "t5xxl_max_token_length", "clip_g_dropout_rate", "pos_emb_random_crop_rate"},
           "anima": {"qwen3", "vae", "llm_adapter_path", "timestep_sampling", "discrete_flow_shift",
                     "qwen3_max_token_length", "t5_max_token_length", "blocks_to_swap"},
           "lumina2": {"gemma2", "ae", "system_prompt", "gemma2_max_token_length", "timestep_sampling",
                       "discrete_flow_shift", "model_prediction_type", "blocks_to_swap"}}
    others = {"sd3.5-large": {"qwen3", "gemma2", "ae", "system_prompt", "guidance_scale", "timestep_sampling",
                              "discrete_flow_shift", "clip_skip", "v2"},
              "anima": {"clip_g", "clip_l", "gemma2", "guidance_scale", "ae", "t5xxl", "training_shift",
                        "system_prompt", "model_prediction_type", "clip_skip"},
              "lumina2": {"clip_g", "clip_l", "qwen3", "t5xxl", "vae", "guidance_scale", "training_shift",
                          "llm_adapter_path", "noise_offset", "clip_skip"}}
    for family_name in own:
        hidden = set(hidden_settings(FAMILIES[family_name]))
        assert not own[family_name] & hidden, (family_name, own[family_name] & hidden)
        assert others[family_name] <= hidden, (family_name, others[family_name] - hidden)
        assert set(S.SD_ONLY) - {"vae"} <= hidden
    # a value set in another family's field is named, with the field's label
    anima = FAMILIES["anima"]
    assert hidden_but_set(anima, {"clip_g": "/x/clip_g.safetensors", "gemma2": "", "qwen3": "/x/q.safetensors"}) \
        == [f"{S.BY_NAME['clip_g'].label} = /x/clip_g.safetensors"]


@pytest.mark.parametrize("name, foreign", [("sd3", "gemma2"), ("anima", "clip_g"), ("lumina", "qwen3")])
def test_check_settings_names_a_value_set_in_another_familys_field(dit_runs, tmp_path, name, foreign):
    root, info = dit_runs
    values = {**info["models"][name], "train_data_dir": info["data"], "output_dir": str(tmp_path / "out"),
              "output_name": name, "resolution": "64", **OWN_OPTIONS[name]}
    result = check_form(values)
    assert not result.problems, result.problems
    other_file = next(v for m in info["models"].values() for k, v in m.items() if k == foreign)
    result = check_form({**values, foreign: other_file})
    title = FAMILIES[FAMILY[name]].title
    assert not result.problems, result.problems
    named = [w for w in result.warnings if w.startswith(f"{foreign}: ")]
    assert len(named) == 1 and title in named[0], result.warnings


# ---------------------------------------------------------------- the Test tab and the comparison grid
def test_the_test_tab_defaults_follow_the_new_families():
    expected = {"sd3-medium": (30, 7.5), "sd3.5-medium": (30, 7.5), "sd3.5-large": (30, 7.5), "anima": (30, 7.5),
                "lumina2": (36, 3.5)}
    for family_name, (steps, cfg_scale) in expected.items():
        d = family_defaults(FAMILIES[family_name])
        assert (d.steps, d.cfg_scale, d.pixel_multiple, d.sampler) == (steps, cfg_scale, 16, "euler"), family_name


@pytest.mark.parametrize("name", list(FAMILY))
def test_the_test_tab_renders_a_trained_file_with_its_familys_parts(dit_runs, tmp_path, name):
    """"Test this file" on a run: the family's steps, CFG and sampler, the training size rounded to 16 px, the run's
    prompt; Render's plan names the model's part files (the run's config beside the file, then the parts near the
    model), and the comparison job it starts renders with them."""
    root, info = dit_runs
    out = _out(root, name)
    file = out / f"{name}_lora.safetensors"
    cfg = load_config(out / f"{name}_lora_config.toml")
    settings, note = settings_from_run(cfg.replace(resolution="72"), str(file), TestSettings(strengths="0, 1"))
    d = family_defaults(FAMILIES[FAMILY[name]])
    assert (settings.steps, settings.cfg_scale, settings.sampler, settings.width, settings.height) == \
        (d.steps, d.cfg_scale, "euler", 64, 64)  # 72 rounded down to 16 px
    assert note == "64 px, euler, 1 prompt(s) of `prompts.txt`" and settings.prompts.startswith("lsdemo shape")
    settings.steps, settings.width, settings.height = 2, 72, 79  # Render rounds the tab's sizes too
    plan = check(settings, pixel_multiple=d.pixel_multiple)
    assert "--w 64 --h 64" in plan.prompts[0] and plan.model == cfg.pretrained_model_name_or_path
    models = info["models"][name]
    assert {part: plan.family_values[part] for part in PARTS[name]} == {part: models[part] for part in PARTS[name]}
    assert all(FAMILY[name] in S.BY_NAME[k].families for k in plan.family_values)  # only the family's settings
    # the run's config is not there (a file copied elsewhere): the parts near the model are enough
    alone = tmp_path / "copied.safetensors"
    shutil.copy(file, alone)
    elsewhere = check(TestSettings(model=plan.model, files=str(alone), prompts="a cat", steps=2, width=64, height=64))
    assert {part: elsewhere.family_values[part] for part in PARTS[name]} == \
        {part: models[part] for part in PARTS[name]}
    (tmp_path / "prompts.txt").write_text("\n".join(plan.prompts) + "\n", encoding="utf-8")
    proc = run_cli("compare", *compare_options(plan), "--prompts", str(tmp_path / "prompts.txt"), "--out",
                   str(tmp_path / "compare"), "--device", "cpu")
    grids = proc.stdout.split()
    assert len(grids) == 1 and Path(grids[0]).is_file()
    index = json.loads((tmp_path / "compare" / f"{name}_lora_compare.json").read_text(encoding="utf-8"))
    from safetensors import safe_open

    with safe_open(str(file), "np") as f:
        stems = {k.split(".")[0] for k in f.keys()}
    report = index["report"][0]
    assert index["strengths"] == [0.0, 1.0] and report["modules"] == len(stems)  # every module of the file
    assert report["unmatched"] == [] and report["unknown_keys"] == [], report
    tiles = [Path(p) for p in index["grids"][0]["tiles"][0]]
    with Image.open(tiles[0]) as base, Image.open(tiles[1]) as trained:
        assert base.size == trained.size == (64, 64)
        assert base.tobytes() != trained.tobytes()  # the LoRA changes the image


def test_a_comparison_grid_of_a_runs_two_files(dit_runs, tmp_path):
    """``lora-studio compare --config``: Lumina 2's run, its two saved files (step 4, final) x strengths 0, 0.5, 1;
    the run's family settings (gemma2, ae, its system prompt) come from its config, one given on the command line
    overrides it."""
    root, info = dit_runs
    config = _out(root, "lumina") / "lumina_lora_config.toml"
    proc = run_cli("compare", "--config", str(config), "--strengths", "0", "0.5", "1", "--steps", "2", "--out",
                   str(tmp_path), "--device", "cpu", "--system_prompt", "You are an artist", "--size", "72x79")
    grids = proc.stdout.split()
    assert len(grids) == 1
    index = json.loads((tmp_path / "lumina_lora_compare.json").read_text(encoding="utf-8"))
    assert index["file_names"] == ["lumina_lora-step00000004", "lumina_lora"]
    assert index["model"] == info["models"]["lumina"]["pretrained_model_name_or_path"]
    grid = index["grids"][0]
    # --size 72x79 rounded down to Lumina's 16 px, as its images are made
    assert (grid["width"], grid["height"], grid["steps"], grid["sampler"]) == (64, 64, 2, "euler")
    assert grid["tiles"][0][0] == grid["tiles"][1][0] == grid["base"]  # the base image once, shared by both rows
    tiles = {p for row in grid["tiles"] for p in row}
    assert len(tiles) == 5 and all(_image_size(p) == (64, 64) for p in tiles)
    with Image.open(grids[0]) as image:
        assert image.width > 3 * 64 and image.height > 2 * 64  # 3 columns, 2 rows and their labels


# ---------------------------------------------------------------- the resource estimate
@pytest.mark.parametrize("name", list(FAMILY))
def test_the_estimate_counts_each_file_as_the_engine_loads_it(dit_runs, name):
    """From the headers: the transformer, its text encoders (SD3's clip_l, clip_g and t5xxl; Anima's qwen3; Lumina's
    gemma2) and its autoencoder, each where it belongs; module count x rank equal to the network the engine builds
    (Lumina 2's final layer included; T5 only with train_t5xxl); the blocks block swap moves. And Check settings'
    estimate reads the same files."""
    from lora_studio.data.dataset import TrainingData
    from lora_studio.data.sources import datasets_from_config
    from lora_studio.models.loading import load_components
    from lora_studio.network.lora import LoRANetwork
    from lora_studio.training.estimate import estimate, model_size, resource_estimate

    root, info = dit_runs
    settings = run_settings(name, info["models"], info["data"], root / "x")
    cfg = build_config(settings)
    size = model_size(cfg.pretrained_model_name_or_path, settings)
    c = load_components(cfg.pretrained_model_name_or_path, cfg.vae, False, options=cfg)
    assert size.family == c.family.name == FAMILY[name]
    assert set(size.parts) == set(PARTS[name])
    assert size.unet == sum(t.numel() for t in c.denoiser.state_dict().values())  # (SD3's position table too)
    made = 32 * 32 if name == "sd3" else 0  # the identity text_projection of a clip_l file without one
    assert size.text_encoders + made == sum(p.numel() for te in c.text_encoders for p in te.parameters())
    assert size.vae == sum(p.numel() for p in c.vae.parameters())
    network = LoRANetwork(c, 4, 1.0)
    denoiser_lora = sum(p.numel() for s in network.unet_stems for p in network._modules[s].parameters())
    assert 4 * size.lora_linear == denoiser_lora
    assert 4 * size.lora_te == sum(p.numel() for p in network.parameters()) - denoiser_lora > 0
    blocks = getattr(c.denoiser, c.family.main_blocks)
    assert size.blocks["double"] == [len(blocks), sum(p.numel() for p in blocks[0].parameters())]
    assert size.blocks["single"] == [0, 0] and size.latent_channels == 16
    data = TrainingData(datasets_from_config(cfg), 1.0, 0)
    found = resource_estimate(cfg, data, 6, None)
    assert found == estimate(cfg, size, len(data.items), 6, (64, 64), None)


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    """Header-only files of the real transformers (SD3.5 large under ComfyUI's prefix, Anima under net.), a few
    hundred kB each, and their sizes."""
    from accelerate import init_empty_weights

    from lora_studio.bench_memory import write_random_state
    from lora_studio.training.estimate import model_size

    root = tmp_path_factory.mktemp("dit-headers")
    out = {}
    for family_name, prefix in (("sd3.5-large", "model.diffusion_model."), ("anima", "net."), ("lumina2", "")):
        family = FAMILIES[family_name]
        with init_empty_weights():
            denoiser = family.build_denoiser(family.bench_configs()[0])
        tensors = {prefix + k: (tuple(v.shape), "bfloat16") for k, v in denoiser.state_dict().items()}
        path = write_random_state(root / f"{family_name}.safetensors", tensors, header_only=True)
        out[family_name] = model_size(path, {})
    return out


RECIPE = {"mixed_precision": "bf16", "gradient_checkpointing": True, "cache_latents": True,
          "cache_text_encoder_outputs": True, "network_dim": 16, "network_alpha": 1.0, "network_train_unet_only": True,
          "optimizer_type": "AdamW8bit", "train_batch_size": 1}


def test_real_size_transformers_and_their_block_swap(real_size):
    """The published sizes (SD3.5 large 8.1 B, Anima 2 B, Lumina 2 2.6 B); the transformer in bf16 is most of a
    run's memory at 1024 px; blocks_to_swap N keeps the last N blocks in RAM, one of them on the GPU at a time."""
    from lora_studio.training.estimate import GB, GPU, estimate

    card = GPU("NVIDIA GeForce RTX 4090", 24)
    counts = {"sd3.5-large": (8_146_280_768, 38, 2432), "anima": (2_091_068_928, 28, 2048),
              "lumina2": (2_609_771_456, 26, 2304)}
    for family_name, (params, blocks, width) in counts.items():
        size = real_size[family_name]
        assert (size.unet, size.blocks["double"][0], size.blocks["hidden"]) == (params, blocks, width)
        one_block = size.blocks["double"][1]
        plain = estimate(build_config(RECIPE), size, 40, 40, (1024, 1024), card)
        weights = params * 2 / GB
        assert weights + 0.5 < plain.phases["training"] < weights + 6, (family_name, plain.phases)
        swapped = estimate(build_config({**RECIPE, "blocks_to_swap": 8}), size, 40, 40, (1024, 1024), card)
        assert plain.phases["training"] - swapped.phases["training"] == pytest.approx(7 * one_block * 2 / GB,
                                                                                    abs=0.01)
        assert swapped.ram_gb == plain.ram_gb  # the swapped blocks are the weights read into RAM already
        assert swapped.seconds_per_epoch == pytest.approx(plain.seconds_per_epoch + 40 * 2 * 8 * one_block * 2
                                                          / 20e9, rel=1e-6)
        unchecked = estimate(build_config({**RECIPE, "blocks_to_swap": 8, "gradient_checkpointing": False}), size,
                             40, 40, (1024, 1024), card)
        assert unchecked.phases["training"] == estimate(build_config({**RECIPE, "gradient_checkpointing": False}),
                                                        size, 40, 40, (1024, 1024), card).phases["training"]
    # SD3.5 large in bf16 (16.3 GB of weights) fits a 24 GB card at 1024 px; a 16 GB card is told to swap blocks
    assert estimate(build_config(RECIPE), real_size["sd3.5-large"], 40, 40, (1024, 1024), card).warnings == []
    small = estimate(build_config(RECIPE), real_size["sd3.5-large"], 40, 40, (1024, 1024),
                     GPU("NVIDIA GeForce RTX 4080", 16))
    assert small.warnings and "blocks_to_swap" in small.warnings[0]


def test_the_text_tokens_beside_the_image_are_the_familys(real_size):
    """SD3's CLIP and T5 tokens (77 + 256) and Lumina 2's caption (gemma2_max_token_length) join the image tokens;
    Anima's blocks read their context by cross-attention (in its constants), so a longer caption costs nothing."""
    from lora_studio.training.estimate import GPU, _Run, estimate

    tokens = {("sd3.5-large", None): 333, ("sd3.5-large", ("t5xxl_max_token_length", 154)): 231,
              ("lumina2", None): 256, ("lumina2", ("gemma2_max_token_length", 512)): 512,
              ("anima", None): 0, ("anima", ("t5_max_token_length", 256)): 0}
    for (family_name, setting), expected in tokens.items():
        cfg = build_config({**RECIPE, **dict([setting] if setting else [])})
        assert _Run.of(cfg, real_size[family_name]).text_tokens() == expected, (family_name, setting)
    card = GPU("NVIDIA GeForce RTX 4090", 24)
    short, long = (estimate(build_config({**RECIPE, "gemma2_max_token_length": n}), real_size["lumina2"], 40, 40,
                            (1024, 1024), card) for n in (128, 512))
    assert short.seconds_per_epoch < long.seconds_per_epoch and short.vram_gb < long.vram_gb


@pytest.mark.parametrize("name", list(FAMILY))
def test_choosing_the_model_in_the_lora_tab_fills_its_parts_and_shows_its_fields(dit_runs, tmp_path, name):
    from lora_studio.gui.form_state import DEFAULTS
    from lora_studio.gui.lora_tab import LoraTab
    from lora_studio.gui.model_family import FAMILY_FIELDS

    root, info = dit_runs
    models = info["models"][name]
    tab = LoraTab(tmp_path / "state", None, None)
    tab.family_buttons, tab.family_sections = ["vae", "ae", "clip_g", "qwen3", "gemma2"], []
    form = {**DEFAULTS, "pretrained_model_name_or_path": models["pretrained_model_name_or_path"], "clip_skip": 2}
    status, *updates = tab.model_chosen(True, *form.values())
    fields = dict(zip(FAMILY_FIELDS, updates))
    buttons = dict(zip(tab.family_buttons, updates[len(FAMILY_FIELDS):]))
    assert status.startswith(STATUS[name]) and "✗" not in status
    assert "Clip skip = 2" in status  # a value in a field this family hides
    assert {part: fields[part]["value"] for part in PARTS[name]} == {part: models[part] for part in PARTS[name]}
    family = FAMILIES[FAMILY[name]]
    assert {n for n, u in fields.items() if not u["visible"]} == set(hidden_settings(family)) & set(FAMILY_FIELDS)
    assert {n for n, u in buttons.items() if u["visible"]} == {b for b in tab.family_buttons
                                                               if b not in hidden_settings(family)}
    # the filled parts in the form (Anima's vae among them): the model reads the same, nothing said wrong
    status, *_ = tab.model_chosen(False, *{**form, **{p: models[p] for p in PARTS[name]}}.values())
    assert status.startswith(STATUS[name]) and "✗" not in status and "filled in" not in status


def test_check_settings_refuses_more_blocks_to_swap_than_the_transformer_can(real_size, tmp_path):
    """sd-scripts keeps 2 blocks of each kind on the device: at most 24 of Lumina 2's 26 layers, 26 of Anima's 28
    blocks, 36 of SD3.5 large's 38, and 35 for Flux.1 (N // 2 of its 19 double and 2 (N - N // 2) of its 38 single
    blocks); Check settings reads the limit from the file's header before anything loads."""
    from lora_studio.errors import UserError
    from lora_studio.models.tiny_flux import write_tiny_flux

    limits = {name: FAMILIES[name].swap_limit(real_size[name].blocks) for name in ("lumina2", "anima", "sd3.5-large")}
    assert limits == {"lumina2": 24, "anima": 26, "sd3.5-large": 36}
    assert FAMILIES["flux-dev"].swap_limit({"double": [19, 1], "single": [38, 1]}) == 35
    flux = write_tiny_flux(tmp_path / "flux")  # 2 double and 2 single blocks: nothing to swap
    with pytest.raises(UserError, match="blocks_to_swap 1 is too many for this Flux.1 dev transformer: at most 0"):
        FAMILIES["flux-dev"].check_settings(build_config({**flux, "blocks_to_swap": 1}))
