"""The settings' layout without a browser: Advanced sections from the schema, each field's help sentence, the LoRA
type by Kohya_ss's names (to network_module + network_args and back), and the optimizer list."""

from __future__ import annotations

import re

import pytest

from conftest import REPO
from kohya_shapes import CORPUS, SDXL_CORPUS
from lora_studio.config import schema as S
from lora_studio.config.kohya_import import KOHYA_TYPES, LYCORIS_TYPES, convert
from lora_studio.config.lora_types import DORA, LORA_TYPES, apply_lora_type, lora_type_of
from lora_studio.config.network_args import SUPPORTED, parse_network_args
from lora_studio.config.optimizers import (EIGHT_BIT, LEARNING_RATE_FREE, NAMED, OPTIMIZER_NAMES, SCHEDULE_FREE,
                                           optimizer_problem)
from lora_studio.gui.settings_layout import choose_lora_type, filter_js, full_help, show_lora_type
from lora_studio.gui.widgets import (LORA_TYPE_SPEC, advanced_sections, field_info, first_sentence, widget_spec,
                                     widget_specs, with_lora_type)


def test_every_advanced_setting_is_in_exactly_one_section_of_the_schema():
    named = [name for names in S.ADVANCED_SECTIONS.values() for name in names]
    assert len(named) == len(set(named)), "a setting is in two sections"
    assert not [n for n in named if n not in S.BY_NAME], "a section names a setting that does not exist"
    advanced = [spec.name for spec in widget_specs() if spec.tab == "advanced"]
    missing = [n for n in advanced if n not in S.SECTION_OF]
    assert not missing, f"add these Advanced settings to a section of schema.ADVANCED_SECTIONS: {missing}"
    assert sorted(named) == sorted(advanced)  # and a section holds only Advanced settings
    sections = advanced_sections(widget_specs())
    assert "Other" not in dict(sections)
    assert {"Captions", "Noise and loss", "Memory and speed", "Saving and validation", "Logging",
            "Metadata"} <= set(dict(sections))
    memory = [spec.name for spec in dict(sections)["Memory and speed"]]
    assert {"gradient_checkpointing", "full_fp16", "fp8_base", "xformers"} <= set(memory)
    noise = S.ADVANCED_SECTIONS["Noise and loss"]  # a switch beside the setting it goes with
    assert noise.index("noise_offset_random_strength") == noise.index("noise_offset") + 1


def test_each_field_shows_the_first_sentence_of_its_help_and_the_tab_its_whole_help():
    assert field_info(S.BY_NAME["network_dim"]) == "Rank of each adapter: capacity and file size. (1 to 100000 · " \
                                                   "default 4)"
    assert field_info(S.BY_NAME["gradient_checkpointing"]) == S.BY_NAME["gradient_checkpointing"].help
    assert first_sentence(S.BY_NAME["lr_scheduler_args"].help).endswith("e.g. T_max=100 eta_min=1e-6.")
    specs = widget_specs()
    for spec, setting in zip(specs, S.SETTINGS):
        assert spec.kwargs["info"].startswith(first_sentence(setting.help)), setting.name
        assert len(first_sentence(setting.help)) <= len(setting.help)
    text = full_help(specs)
    assert all(f"(`{s.name}`): {s.help}" in text for s in S.SETTINGS)


def test_the_filter_knows_every_advanced_field_by_label_name_and_help():
    sections = {title: {f"row-{title}": [spec.name for spec in group]} for title, group in
                advanced_sections(widget_specs())}
    script = filter_js(sections, {"cache_latents": "Parameters > Basic"})
    for name in S.SECTION_OF:
        assert f'"{name}": "{S.BY_NAME[name].label.lower()}' in script
    assert "gradient checkpointing" in script and "cache latents" in script


@pytest.mark.parametrize("name", list(LORA_TYPES))
def test_each_lora_type_sets_its_module_and_args_and_reads_back(name):
    messy = ["conv_dim=8", "conv_alpha=4", "algo=glora", "dora_wd=True", "preset=attn-mlp", "rank_dropout=0.1"]
    for before in ([], messy):
        module, args = apply_lora_type(name, before, 8, 4)
        assert module == LORA_TYPES[name][0]
        parse_network_args(args, module)  # what the engine accepts
        assert lora_type_of(module, args) == name
        assert apply_lora_type(name, args, 8, 4) == (module, args)  # choosing it again changes nothing
    kept = [a for a in apply_lora_type(name, messy)[1] if a.startswith("rank_dropout")]
    assert kept == (["rank_dropout=0.1"] if "rank_dropout" in SUPPORTED[LORA_TYPES[name][0]] else [])


def test_the_lora_types_are_the_kohya_ss_names_the_import_reads():
    assert set(KOHYA_TYPES) <= set(LORA_TYPES)
    assert {lora_type_of("lycoris.kohya", [f"algo={algo}"]) for algo in LYCORIS_TYPES.values()} <= set(LORA_TYPES)
    assert apply_lora_type("LyCORIS/LoHa", []) == ("lycoris.kohya", ["algo=loha"])
    assert apply_lora_type(DORA, ["algo=loha"]) == ("lycoris.kohya", ["algo=locon", "dora_wd=True"])
    assert apply_lora_type("Standard", ["algo=loha", "conv_dim=8", "preset=full"]) == ("networks.lora", [])
    assert apply_lora_type("Kohya LoCon", [], 16, 8) == ("networks.lora", ["conv_dim=16", "conv_alpha=8"])
    assert apply_lora_type("LyCORIS/LoKr", ["algo=loha", "dora_wd=True"])[1] == ["dora_wd=True", "algo=lokr"]
    assert lora_type_of("lora_studio.lora", None) == "Standard"
    assert lora_type_of("lycoris.kohya", ["algo=lora"]) == "LyCORIS/LoCon"
    assert lora_type_of("lycoris.kohya", ["algo==="]) == "LyCORIS/LoCon"  # an unfinished field


@pytest.mark.parametrize("key", sorted({**CORPUS, **SDXL_CORPUS}))
def test_an_imported_kohya_json_shows_its_type_and_choosing_it_again_keeps_the_network(key):
    data, _ = {**CORPUS, **SDXL_CORPUS}[key]
    settings = convert(data).settings
    module, args = settings.get("network_module", "networks.lora"), settings.get("network_args")
    name = lora_type_of(module, args)
    assert name == (DORA if data.get("dora_wd") else data["LoRA_type"])
    again, again_args = apply_lora_type(name, args, settings.get("network_dim"), settings.get("network_alpha"))
    assert again == module and parse_network_args(again_args, again) == parse_network_args(args, module)


def test_the_gui_handlers_of_the_lora_type_field():
    module, args, info = choose_lora_type("LyCORIS/LoHa", "conv_dim=8 conv_alpha=4", 8, 4.0)
    assert (module, args) == ("lycoris.kohya", "conv_dim=8 conv_alpha=4 algo=loha")
    assert "algo=loha" in info["info"]
    shown = show_lora_type("lycoris.kohya", "conv_dim=8 algo=lokr")
    assert shown["value"] == "LyCORIS/LoKr" and "lycoris.kohya" in shown["info"]
    assert show_lora_type("networks.lora", "")["value"] == "Standard"
    assert LORA_TYPE_SPEC.kwargs["choices"] == list(LORA_TYPES)
    placed = [spec.name for spec in with_lora_type(widget_specs()) if spec.tab == "basic"]
    assert placed.index("lora_type") + 1 == placed.index("network_dim")


def test_the_optimizer_list_holds_every_supported_optimizer():
    choices = widget_spec(S.BY_NAME["optimizer_type"]).kwargs["choices"]
    assert choices == list(OPTIMIZER_NAMES)
    assert {n.lower() for n in choices} == (set(NAMED) | set(EIGHT_BIT) | set(LEARNING_RATE_FREE)
                                            | set(SCHEDULE_FREE)) - {""}
    assert not [n for n in choices if optimizer_problem(n) and "needs the" not in optimizer_problem(n)]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"`((?:DAdapt|SGD|Adam|RAdam|Lion|Prodigy|Adafactor|Paged)[A-Za-z0-9]*)`", readme))
    assert {"DAdaptAdaGrad", "DAdaptAdan", "DAdaptSGD", "DAdaptation", "SGDScheduleFree", "SGDNesterov"} <= mentioned
    assert mentioned <= set(choices)
