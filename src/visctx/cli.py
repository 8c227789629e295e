"""``visctx <command> --arg value ...``: every command is a typed library function.

The options of a command are its function's parameters (``out_dir`` -> ``--out-dir``), typed by
its annotations, so a function signature is the whole interface and the Snakemake rules stay thin
calls. Modules are imported only for the chosen command (torch and transformers are slow to import).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("visctx.config", "describe", "validate params.yaml and list the arms of every study"),
    "synth": ("visctx.synth", "make_corpus", "write the synthetic corpus (instruction JSON + scene specs)"),
    "render": ("visctx.synth", "render_shard", "render one shard of synthetic videos to mp4"),
    "extract": ("visctx.video", "extract_shard", "decode one shard of videos with decord"),
    "quarantine-split": ("visctx.quarantine", "split_report",
                         "gather a split's unreadable and short videos; fail above max_quarantined"),
    "quarantine-report": ("visctx.quarantine", "write_report", "join the splits' quarantine into JSON + TSV"),
    "init-vision": ("visctx.features", "build_tiny_vision_tower", "build and save a tiny SigLIP tower"),
    "init-llm": ("visctx.pretrained", "build_tiny_llm", "build and save a tiny Qwen2 + tokenizer"),
    "benchmark-items": ("visctx.benchmarks", "write_items", "convert a benchmark's published annotations"),
    "encode": ("visctx.features", "encode_shard", "encode one shard of frames with the vision tower"),
    "train": ("visctx.train", "train", "train the shared base (or one model on any arms)"),
    "train-arms": ("visctx.train", "train_arms", "fine-tune each of several arms, one after another"),
    "collate": ("visctx.strategy", "collate_checkpoint", "collate a DeepSpeed checkpoint (ZeRO shards) into a model dir"),
    "evaluate": ("visctx.evaluate", "evaluate", "evaluate one model on one benchmark"),
    "evaluate-arms": ("visctx.evaluate", "evaluate_arms", "evaluate each of several arms on one benchmark"),
    "niah": ("visctx.niah", "niah", "needle-in-a-haystack accuracy over (haystack frames, depth)"),
    "collect": ("visctx.collect", "collect", "gather per-arm evaluations into the tidy table"),
    "fits": ("visctx.fit", "write_fits", "fit the scaling laws, bootstrap, optimum"),
    "optimum": ("visctx.fit", "optimum_cli", "which (T, M) for a window L, with intervals"),
    "throughput": ("visctx.throughput", "throughput", "tokens/s, MFU and peak memory of training at (T, M)"),
    "padding": ("visctx.data", "padding", "how much of an epoch's batches is padding, with and without length_groups"),
    "tables": ("visctx.report", "write_tables", "write the paper's tables (md, csv, tex)"),
    "figures": ("visctx.report", "write_figures", "draw the figures"),
    "metrics": ("visctx.report", "write_metrics", "write the metrics file for dvc exp show"),
    "perf": ("visctx.perf", "perf", "the performance harness: fresh-clone stage times, reruns, overheads"),
    "lmms-eval-arm": ("visctx.lmms_jobs", "lmms_eval_arm", "run one lmms-eval task on one arm (the lmms extra)"),
    "lmms-table": ("visctx.lmms_jobs", "write_table", "gather the arms' lmms-eval results beside the project's scores"),
}

# Commands that gain nothing from the preload server: quick without torch, or running other processes.
IN_PROCESS = {"check", "perf"}


def _converter(tp: Any) -> tuple[Callable[[str], Any], bool]:
    """(string -> value, is_list) for an annotation."""
    from visctx.config import Arm

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if str in args or Path in args:
            return str, False
        return _converter(args[0])
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        inner = (typing.get_args(tp) or (str,))[0]
        return _converter(inner)[0], True
    if origin is dict or tp is dict:
        return json.loads, False
    if tp is Arm:
        return Arm.from_id, False
    if tp in (int, float, str):
        return tp, False
    if tp is Path:
        return Path, False
    return str, False


def build_parser(name: str, func: Callable) -> argparse.ArgumentParser:
    doc = inspect.getdoc(func) or ""
    parser = argparse.ArgumentParser(prog=f"visctx {name}", description=doc.split("\n\n")[0])
    hints = typing.get_type_hints(func)
    for pname, p in inspect.signature(func).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        flag = "--" + pname.replace("_", "-")
        tp = hints.get(pname, str)
        required = p.default is inspect.Parameter.empty
        default = None if required else p.default
        if tp is bool:
            parser.add_argument(flag, dest=pname, action=argparse.BooleanOptionalAction, default=default,
                                required=required)
            continue
        conv, is_list = _converter(tp)
        parser.add_argument(flag, dest=pname, type=conv, nargs="+" if is_list else None,
                            required=required, default=default, metavar=pname.upper())
    return parser


def main(argv: list[str] | None = None, preload: bool = True) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if preload and argv and argv[0] in COMMANDS and argv[0] not in IN_PROCESS:
        from visctx import preload as server

        if server.enabled():
            code = server.run(argv)
            if code is not None:
                return code
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {k.ljust(width)}  {h}" for k, (_, _, h) in COMMANDS.items()]
        print("usage: visctx <command> [--option value ...]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module, fname, _ = COMMANDS[argv[0]]
    func = getattr(importlib.import_module(module), fname)
    args = vars(build_parser(argv[0], func).parse_args(argv[1:]))
    try:
        result = func(**args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        if os.environ.get("VISCTX_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"visctx {argv[0]}: error: {msg}", file=sys.stderr)
        return 1
    if result is not None and not isinstance(result, (int, bool)):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
