"""The pipeline's stages: exactly the modules that dvc.yaml runs, as `python -m stages.<name>`.

No other module imports them: what a stage shares lives in the core package, `mnistpipe`.
"""
