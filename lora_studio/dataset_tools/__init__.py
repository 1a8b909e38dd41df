"""Dataset tools: tagging and captioning images, editing captions, and the dataset health report."""
