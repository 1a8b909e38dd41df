"""The workbench GUI (Gradio). Nothing in this package imports torch: training runs in its own process."""
