"""Deployment layer, torch-free: the ONNX contract and inference, people's images made
MNIST-like, and the web server's settings. The apps load only this layer and the base."""
