"""The attention choice is real: PyTorch SDPA by default and for sd-scripts' sdpa and mem_eff_attn, xformers only
when asked for (and SDPA, said once, when xformers cannot be used here)."""

from __future__ import annotations

import pytest

from lora_studio.config import build_config
from lora_studio.training.build import choose_attention


@pytest.fixture
def unet():
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from lora_studio.models.tiny import TINY_UNET

    model = UNet2DConditionModel.from_config(TINY_UNET)
    model.set_attn_processor(AttnProcessor())  # the plain attention, so the choice below has something to change
    return model


@pytest.mark.parametrize("settings, said", [({}, "PyTorch SDPA"), ({"sdpa": True}, "PyTorch SDPA"),
                                            ({"mem_eff_attn": True}, "SDPA does its job")])
def test_sdpa_is_set_on_every_attention_layer(unet, settings, said):
    from diffusers.models.attention_processor import AttnProcessor2_0

    assert said in choose_attention(unet, build_config(settings))
    processors = unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())


def test_xformers_asked_for_but_unavailable_trains_with_sdpa_and_says_so(unet, caplog):
    from diffusers.models.attention_processor import AttnProcessor2_0

    try:
        import xformers  # noqa: F401
    except ImportError:
        with caplog.at_level("WARNING"):
            said = choose_attention(unet, build_config({"xformers": True, "sdpa": True}))
        assert said == "PyTorch SDPA (xformers unavailable)"
        assert "xformers cannot be used here" in caplog.text and "training with PyTorch SDPA" in caplog.text
        assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    else:  # pragma: no cover - only where xformers is installed
        assert "xformers wins" in choose_attention(unet, build_config({"xformers": True, "sdpa": True}))
