"""Datasets: the synthetic face generator, loaders for real formats, manifests and splits."""
