"""The applications around a trained model: the predict command and the web server.

They import the pipeline core (`mnistpipe`); the core never imports them, and no DVC stage
runs them, so editing them reruns nothing.
"""
