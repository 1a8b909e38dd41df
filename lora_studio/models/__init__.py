"""Base models: loading (diffusers folders, single-file checkpoints), model families, tokenizers."""
