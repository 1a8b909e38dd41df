"""Training data: folders and dataset TOMLs, images, captions, buckets and latent caches."""
