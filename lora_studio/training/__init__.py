"""The training run: optimizer and schedule, loss, samples, progress events, and the loop that ties them."""
