"""LoRA file tools (``lora-studio lora ...``): inspect, resize, merge, extract, convert, and merge into a checkpoint
(Stable Diffusion, Flux.1 and Chroma). Each writes its output atomically, never over its input, with metadata that
says what was done."""
