"""LoRA file tools (``lora-studio lora ...``): inspect, resize, merge. Each writes its output atomically, never over
its input, with metadata that says what was done."""
