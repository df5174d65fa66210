"""Data layer: the datasets and their sources (download), the idx format, the processed splits
(preprocess). Torch-free: the download and preprocess stages load nothing else of the core."""
