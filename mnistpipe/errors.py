"""The one exception type that stages turn into a one-line message instead of a traceback."""


class PipelineError(Exception):
    """Bad input or a failed step, with a message that names the file, key or value."""


class ParamsError(PipelineError):
    """A bad setting: the dotted `key` and what is wrong with it, `problem`, as found in
    `source` (the message); a check that knows better where it came from names that instead."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source, self.key, self.problem = source, key, problem
