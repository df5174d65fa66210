"""The pipeline's core, laid out by the pipeline's layers: `data` (download, preprocess),
`modeling` (train, export, evaluate), `deploy` (the ONNX model and people's images, torch-free,
for the apps) and `reporting` (report). The modules here are the base every layer builds on:
errors, atomic files, the stage runner and the settings' base (config.py)."""
