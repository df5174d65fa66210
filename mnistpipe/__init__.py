"""Shared logic of the MNIST pipeline: params, file formats, data sources, stage running."""
