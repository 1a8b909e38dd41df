"""LoRA Studio: train LoRA adapters for Stable Diffusion from a kohya-compatible config."""

__version__ = "0.1.0"
