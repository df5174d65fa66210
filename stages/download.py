"""Stage `download`: the four official idx files of `data.dataset`, MD5-verified.

Sources are tried in the order of `download.sources`; the first whose files all match the
official checksums wins. Reads params `data.dataset` and `download`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from mnistpipe.cli import run_stage
from mnistpipe.config import PARAMS_FILE, Sections, load_sections
from mnistpipe.data.datasets import DATASETS, IDX_FILES, DataParams, DatasetSpec
from mnistpipe.data.sources import DownloadParams, Source, build_sources, fetch_verified
from mnistpipe.files import write_bytes_atomic

log = logging.getLogger("download")


class DownloadSections(Sections):
    data: DataParams
    download: DownloadParams


def download(spec: DatasetSpec, sources: list[Source], out_dir: Path) -> str:
    """Write the verified idx files into `out_dir`; return the name of the source used."""
    with tempfile.TemporaryDirectory(prefix="mnist-download-") as workdir:
        source_name, files = fetch_verified(spec, sources, Path(workdir))
    for name in IDX_FILES:
        write_bytes_atomic(out_dir / name, files[name])
    return source_name


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.download", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for the idx files")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    params = load_sections(DownloadSections, args.params)
    spec = DATASETS[params.data.dataset]
    source_name = download(spec, build_sources(params.download, spec), args.out)
    log.info("wrote %d idx files to %s from source %r", len(IDX_FILES), args.out, source_name)


if __name__ == "__main__":
    run_stage(main, "download")
