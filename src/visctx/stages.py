"""What DVC's stages depend on besides the code: each stage's resolved params and the real data.

``dvc.yaml`` cannot take its dependencies from the params: its ``deps`` are checked before
templating (a list from ``params.yaml`` is refused), and a key the default leaves empty would be a
missing path. So each stage depends on its resolved params file (:func:`visctx.config.write_stage_params`)
and the stages that read real data (``data``, ``train``, ``niah``) on the one folder
:data:`DATA_DIR`, where the paper preset keeps the instruction JSON, the videos and the
benchmarks (``data/README.md``). A configured path outside it still works -- Snakemake notices a
changed video there by content whenever a stage runs it (the extraction's depfile,
:mod:`visctx.fresh`) -- but ``dvc repro`` does not start that stage, so the params stage names it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from visctx.config import load_params, write_stage_params

DATA_DIR = "data"


def data_paths(resolved: dict) -> dict[str, str]:
    """``{dotted key: path}`` of the real data resolved params read: the instruction JSON and video
    root (``data.source: instruct``) and each listed benchmark's annotations and videos."""
    out = {}
    if resolved["data"]["source"] == "instruct":
        out.update({f"data.instruct.{k}": v for k, v in resolved["data"]["instruct"].items() if v})
    for name in resolved["evaluate"]["benchmarks"]:
        if name != "synthetic":
            out.update({f"benchmarks.{name}.{k}": resolved["benchmarks"][name][k] for k in ("annotations", "video_root")})
    return out


def outside_data_dir(resolved: dict, root: str | Path = ".") -> dict[str, str]:
    """The data paths of :func:`data_paths` that are not under ``<root>/data``."""
    base = (Path(root) / DATA_DIR).resolve()
    return {k: v for k, v in data_paths(resolved).items() if not (Path(root) / v).resolve().is_relative_to(base)}


def write_params(params: str = "params.yaml", out_dir: str = "results/params") -> dict:
    """The params stage: each DVC stage's resolved params (:func:`visctx.config.write_stage_params`),
    and a warning naming every data path DVC will not look at.

    Args:
        params: the params file, read as the workflow reads it (preset resolved, validated).
        out_dir: where the per-stage files go (DVC's deps of the stages).
    """
    written = write_stage_params(params, out_dir)
    for key, path in outside_data_dir(load_params(params), Path(params).parent).items():
        print(f"{params}: {key}: {path} is outside {DATA_DIR}/: dvc repro will not notice when its files change "
              f"(move it under {DATA_DIR}/, and `dvc add` it there for dvc exp run --temp/--queue)",
              file=sys.stderr, flush=True)
    return written
