"""A Hydra plugin that checks the whole params file while DVC composes it from conf/.

DVC imports every plugin under `hydra.plugins_path` (.dvc/config) before it composes
params.yaml, for `dvc exp run -S` and for `make repro` (tools/compose_params.py) alike. This
one registers the `params_check` resolver, which conf/config.yaml's `seed` goes through:
resolving the composed file then validates all of it (tools.compose_params.check), before
params.yaml is written and before any stage runs or DVC removes any output. A bad value ends
the process with one line that names the key, the value and where it came from. It exits
rather than raising: OmegaConf would wrap an exception, and DVC print it as "unexpected".
"""

import sys
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[4]  # tools/hydra/hydra_plugins/params_check/


def params_check(seed, *, _root_):
    """Return `seed` unchanged once the whole composed file (`_root_`) is valid."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from mnistpipe.errors import ParamsError
    from tools.compose_params import check

    composed = OmegaConf.to_container(_root_, resolve=False)
    composed["seed"] = seed
    try:
        check(composed, REPO)
    except ParamsError as error:
        where = f"from {error.source}" if error.source.startswith("-S") else f"in {error.source}"
        raise SystemExit(
            f"params: error: {error.problem} ({where}; nothing was run or removed)"
        ) from None
    return seed


if not OmegaConf.has_resolver("params_check"):
    OmegaConf.register_new_resolver("params_check", params_check)
