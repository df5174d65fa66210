"""Modelling layer: the models and their configs, the training recipe and loop, checkpoints,
the CPU numerics, calibration, the out-of-distribution score, synthetic non-digits and the
test metrics (train, export, evaluate)."""
