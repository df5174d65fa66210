"""The one exception type that stages turn into a one-line message instead of a traceback."""


class PipelineError(Exception):
    """Bad input or a failed step, with a message that names the file, key or value."""
