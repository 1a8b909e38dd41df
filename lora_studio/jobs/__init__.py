"""The job service: the queue of engine processes (training runs, comparisons, tools), their live state and command lines; no Gradio."""
