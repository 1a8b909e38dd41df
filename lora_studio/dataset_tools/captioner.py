"""The BLIP captioner: a sentence per image from transformers' ``BlipForConditionalGeneration`` (greedy decoding, or
beam search with ``num_beams`` > 1). Weights are read from model.safetensors only (never a pickle). Models that need
remote code (Florence-2: ``trust_remote_code``) are not supported: that would run code from the Hub."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .model_files import ModelSpec

DEFAULT_REPO = "Salesforce/blip-image-captioning-large"


def model_spec(repo_id: str = DEFAULT_REPO) -> ModelSpec:
    return ModelSpec("BLIP captioner", repo_id, ("config.json", "model.safetensors", "tokenizer_config.json"),
                     ("preprocessor_config.json", "processor_config.json", "tokenizer.json", "vocab.txt",
                      "special_tokens_map.json", "generation_config.json"))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class BlipCaptioner:
    """A loaded BLIP model: ``captions(images)`` gives one sentence per image."""

    def __init__(self, folder: str | Path, device: str | None = None, max_length: int = 75, min_length: int = 5,
                 num_beams: int = 1):
        import torch

        try:
            from transformers import BlipForConditionalGeneration, BlipProcessor
        except ImportError as exc:
            raise UserError(f"The BLIP captioner needs transformers ({exc}); run the setup again") from None
        if min_length < 0 or max_length < 1 or min_length > max_length:
            raise UserError(f"--min_length ({min_length}) must be between 0 and --max_length ({max_length})")
        if num_beams < 1:
            raise UserError(f"--num_beams must be at least 1 (got {num_beams})")
        self.device = torch.device(device or default_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            self.processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
            self.model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True,
                                                                      use_safetensors=True, dtype=dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"Cannot load the BLIP model in {folder}: {exc}") from None
        self.model.to(self.device).eval()
        self.dtype = dtype
        self.generate_args = {"max_length": max_length, "min_length": min_length, "num_beams": num_beams,
                              "do_sample": False}

    def captions(self, images: list) -> list[str]:
        import torch

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model.generate(pixel_values=pixels.to(self.device, self.dtype), **self.generate_args)
        return [text.strip() for text in self.processor.batch_decode(out, skip_special_tokens=True)]


def join_text(prefix: str | None, caption: str, suffix: str | None) -> str:
    """``prefix caption suffix`` joined with spaces (empty parts left out)."""
    return " ".join(part.strip() for part in (prefix, caption, suffix) if part and part.strip())
