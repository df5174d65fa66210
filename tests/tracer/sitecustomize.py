"""Records what a Python process loads, for tests/test_stage_deps.py: on PYTHONPATH with
MNISTPIPE_TRACE naming a folder, every process started (dvc's stage commands included) writes
`<pid>.json` there at exit: its argv, the files of the modules it imported, and the files it
opened (the "open" audit event), so that a test can compare dvc.yaml's code dependencies with
what each stage really ran."""

import atexit
import json
import os
import sys

FOLDER = os.environ.get("MNISTPIPE_TRACE")

if FOLDER:
    opened: set[str] = set()

    def _record_open(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            opened.add(os.path.abspath(os.fsdecode(args[0])))

    def _dump() -> None:
        modules = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
        files = sorted(opened | {os.path.abspath(name) for name in modules if name})
        path = os.path.join(FOLDER, f"{os.getpid()}.json")
        with open(path, "w", encoding="utf-8") as stream:
            json.dump({"argv": sys.argv, "files": files}, stream)

    sys.addaudithook(_record_open)
    atexit.register(_dump)
