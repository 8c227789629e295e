"""``visctx <command> --arg value ...``: every command is a typed library function.

The options of a command are its function's parameters (``out_dir`` -> ``--out-dir``), typed by
its annotations (``bool``: ``--x/--no-x``; a list, tuple or sequence: ``--arms a b c``; ``dict``:
JSON; ``Literal``: its choices; ``X | None``: an X), each helped by its entry in the docstring's
``Args:`` section, so a function signature and its docstring are the whole interface and the
Snakemake rules stay thin calls. Modules are imported only for the chosen command (torch and
transformers are slow to import).
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import enum
import importlib
import inspect
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

# The one registry of commands: name -> (module, function, one-line help).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "check": ("visctx.config", "describe", "validate the params (config/config.yaml under params.yaml) and list every study's arms"),
    "params": ("visctx.stages", "write_params", "write what each DVC stage reads of the resolved params"),
    "synth": ("visctx.synth", "make_corpus", "write the synthetic corpus (instruction JSON + scene specs)"),
    "render": ("visctx.synth", "render_shard", "render one shard of synthetic videos to mp4"),
    "extract": ("visctx.video", "extract_shard", "decode one shard of videos with decord"),
    "quarantine-split": ("visctx.quarantine", "split_report",
                         "gather a split's unreadable and short videos; fail above max_quarantined"),
    "quarantine-report": ("visctx.quarantine", "write_report", "join the splits' quarantine into JSON + TSV"),
    "init-vision": ("visctx.features", "build_tiny_vision_tower", "build and save a tiny SigLIP tower"),
    "init-llm": ("visctx.pretrained", "build_tiny_llm", "build and save a tiny Qwen2 + tokenizer"),
    "benchmark-items": ("visctx.benchmarks", "write_items", "convert a benchmark's published annotations"),
    "score-results": ("visctx.benchmarks", "score_results",
                      "score a result file in a benchmark's published format by its official rule"),
    "encode": ("visctx.features", "encode_shard", "encode one shard of frames with the vision tower"),
    "train": ("visctx.train", "train", "train the shared base (or one model on any arms)"),
    "train-arms": ("visctx.train", "train_arms", "fine-tune each of several arms, one after another"),
    "collate": ("visctx.collate", "collate_checkpoint", "collate a DeepSpeed checkpoint (ZeRO shards) into a model dir"),
    "evaluate": ("visctx.evaluate", "evaluate", "evaluate one model on one benchmark"),
    "evaluate-arms": ("visctx.evaluate", "evaluate_arms", "evaluate each of several arms on one benchmark"),
    "niah": ("visctx.niah", "niah", "needle-in-a-haystack accuracy over (haystack frames, depth)"),
    "niah-summary": ("visctx.niah", "niah_summary", "the needle-in-a-haystack map over seeds: mean, interval, each seed"),
    "ceiling": ("visctx.ceiling", "ceiling", "every arm's information ceiling on the synthetic held-out split"),
    "ceiling-check": ("visctx.ceiling", "check", "every trained arm's accuracy and loss against the bounds and the ceiling"),
    "collect": ("visctx.collect", "collect", "gather per-arm evaluations into the tidy table"),
    "curves": ("visctx.collect", "curves", "every training run's loss curve in one table (a DVC plot)"),
    "benchmark-scores": ("visctx.collect", "benchmark_scores",
                         "each arm's official benchmark scores with seed x video intervals and paired differences"),
    "fits": ("visctx.fit", "write_fits", "fit the scaling laws, bootstrap, optimum"),
    "optimum": ("visctx.fit", "optimum_cli", "which (T, M) for a window L, with intervals"),
    "throughput": ("visctx.throughput", "throughput", "tokens/s, MFU and peak memory of training at (T, M)"),
    "method-costs": ("visctx.throughput", "method_costs",
                     "peak memory and step time of sampling, pooling, masking and summary tokens at one window"),
    "study-method-costs": ("visctx.throughput", "study_method_costs",
                           "method-costs at every window of the methods study (results/perf/method-costs.json)"),
    "padding": ("visctx.data", "padding", "how much of an epoch's batches is padding, with and without length_groups"),
    "tables": ("visctx.report", "write_tables", "write the paper's tables (md, csv, tex)"),
    "figures": ("visctx.report", "write_figures", "draw the figures"),
    "metrics": ("visctx.report", "write_metrics", "write the metrics file for dvc exp show"),
    "compare-runs": ("visctx.stats", "compare_runs", "which arms of an earlier run fall outside this run's across-seed intervals"),
    "readme": ("visctx.readme", "readme", "regenerate the README's results section from results/ (--check: only compare)"),
    "perf": ("visctx.perf", "perf", "the performance harness: fresh-clone stage times, reruns, overheads"),
    "finetune-budget": ("visctx.perf", "finetune_budget",
                        "what longer fine-tunes buy each question type, beside the ceiling (on a finished study)"),
    "noise-split": ("visctx.perf", "noise_split",
                    "where the effects' across-seed noise comes from: the base or the fine-tune (on a finished study)"),
    "search-attention": ("visctx.perf", "search_attention",
                         "whether each replicate's arms attend to the question's object, beside its effects (on a finished study)"),
    "fresh-clone-check": ("visctx.perf", "fresh_clone_check",
                          "the README's two commands in a fresh clone, timed and recorded in results/perf"),
    "study-cost": ("visctx.perf", "study_cost",
                   "where a finished study's compute goes: base, fine-tunes and evaluations per method, and the "
                   "train stage's schedule (results/perf)"),
    "temp-experiment": ("visctx.perf", "write_temp_experiment",
                        "the jobs a `dvc exp run --temp` of an analysis-only change runs on a finished study"),
    "lmms-eval-arm": ("visctx.lmms_jobs", "lmms_eval_arm", "run one lmms-eval task on one arm (the lmms extra)"),
    "lmms-table": ("visctx.lmms_jobs", "write_table", "gather the arms' lmms-eval results beside the project's scores"),
}

# Commands that gain nothing from the preload server: quick without torch, or running other processes.
IN_PROCESS = {"check", "params", "perf", "fresh-clone-check", "temp-experiment", "finetune-budget", "noise-split", "study-cost"}
# Imported once by the preload server: everything a job's hot path imports (this module imports lazily).
PRELOAD = (
    "numpy", "torch", "transformers", "lightning",
    "transformers.models.qwen2.modeling_qwen2", "transformers.models.siglip.modeling_siglip",
    "decord", "av",
    "visctx.train", "visctx.evaluate", "visctx.features", "visctx.video", "visctx.niah",
    "visctx.synth", "visctx.pretrained", "visctx.collect",
)


def preload_server():
    """The preload server of this CLI: its children run :func:`run_command` (this module imports
    :mod:`visctx.preload`, never the other way round: no cycle)."""
    from visctx.preload import Server

    return Server(entry="visctx.cli:run_command", modules=PRELOAD)


# ---------------------------------------------------------------------------------------------
# Parsers from signatures. argparse, not typer/click (in the lock through transformers): a click
# option takes a fixed number of values or repeats (``--arms a --arms b``), never ``--arms a b c``
# as the rules pass it, and typer reads an option's help from ``Annotated[..., typer.Option(help=
# ...)]`` in each signature, not from the docstring; jsonargparse and tyro (which read docstrings)
# are not in the lock. What stays ours:
# reading an annotation (below) and a Google-style ``Args:`` section (:func:`parse_docstring`).

_ARGS_HEADERS = ("Args:", "Arguments:", "Parameters:")
_ENTRY = re.compile(r"(\w+(?:\s*,\s*\w+)*)\s*(?:\([^)]*\))?\s*:(?:\s+(.*)|$)")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(the prose, {parameter: help}) of a docstring with a Google-style ``Args:`` section, as
    Sphinx's napoleon reads it: ``name: text`` continued on deeper lines, ``a, b: text`` shared."""
    prose: list[str] = []
    params: dict[str, str] = {}
    names: list[str] = []
    header = entry = None  # the indent of the Args: line, of its entries
    for line in (doc or "").splitlines():
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        if header is not None and stripped and depth <= header:
            header = None  # a line as shallow as the header ends the section
        if header is None and stripped in _ARGS_HEADERS:
            header, entry, names = depth, None, []
            continue
        if header is None:
            prose.append(line)
            continue
        if not stripped:
            continue
        entry = depth if entry is None else entry
        head = _ENTRY.fullmatch(stripped)
        if depth == entry and head:
            names = [n.strip() for n in head.group(1).split(",")]
            params.update({n: head.group(2) or "" for n in names})
        elif names:
            params.update({n: f"{params[n]} {stripped}".strip() for n in names})
    return "\n".join(prose).strip(), params


def _members(tp: Any) -> list[Any] | None:
    """The non-None members of a Union (``X | None`` is ``[X]``); None if ``tp`` is no Union."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return None


def _scalar(tp: Any) -> Callable[[str], Any]:
    """text -> value for an annotation of one value; its errors are argparse's ``invalid ...`` lines."""
    from visctx.config import Arm

    members = _members(tp)
    if members is not None:
        if any(m in (str, Path, os.PathLike) for m in members):
            return str  # the commands take their paths as str
        converters = [_scalar(m) for m in members]

        def union(text: str) -> Any:
            for convert in converters:
                try:
                    return convert(text)
                except (ValueError, TypeError, argparse.ArgumentTypeError):
                    pass
            raise argparse.ArgumentTypeError(f"{text!r} is none of {tp}")

        return union
    if typing.get_origin(tp) is typing.Literal:
        by_text = {str(c): c for c in typing.get_args(tp)}

        def literal(text: str) -> Any:
            if text not in by_text:
                raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(by_text)}")
            return by_text[text]

        return literal
    if tp is dict or typing.get_origin(tp) in (dict, collections.abc.Mapping) or tp is collections.abc.Mapping:
        def json_object(text: str) -> dict:
            try:
                value = json.loads(text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
            return value

        return json_object
    if tp is Arm:
        def arm(text: str) -> Arm:
            try:
                return Arm.from_id(text)
            except (ValueError, TypeError) as e:
                raise argparse.ArgumentTypeError(f"{text!r} is no arm id (T<n>-M<n>-<op>[-from<S>]): {e}") from None

        return arm
    if tp is bool:
        return _boolean
    if tp in (Path, os.PathLike):
        return Path
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        def member(text: str) -> enum.Enum:
            try:
                return tp[text]
            except KeyError:
                raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(tp.__members__)}") from None

        return member
    if isinstance(tp, type) and tp is not object:
        return tp  # int, float, str and any type built from its text
    return str  # Any, a TypeVar, object


def _boolean(text: str) -> bool:
    """A bool among several values (``--flags true false``); a bool option is ``--x/--no-x``."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _collection(tp: Any) -> tuple[type, list[Any], bool] | None:
    """(container, element annotations, fixed length) if ``tp`` takes several values, else None."""
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if _members(tp) is not None or not isinstance(origin, type) or issubclass(origin, (str, bytes)):
        return None
    if issubclass(origin, tuple):
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return tuple, [args[0] if args else str], False
        return tuple, list(args), True
    if issubclass(origin, collections.abc.Mapping):
        return None
    if issubclass(origin, collections.abc.Set):
        return (frozenset if issubclass(origin, frozenset) else set), [args[0] if args else str], False
    if issubclass(origin, collections.abc.Iterable):  # list, Sequence, Iterable, Collection
        return list, [args[0] if args else str], False
    return None


class _Collect(argparse.Action):
    """The values of an option taking several, in the annotation's container, each converted by
    its element's annotation (``tuple[int, str]`` converts by position)."""

    def __init__(self, *args: Any, collect_as: type = list, converters: Sequence[Callable] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.collect_as, self.converters = collect_as, list(converters)

    def __call__(self, parser, namespace, values, option_string=None):
        converters = self.converters if len(self.converters) > 1 else self.converters * len(values)
        try:
            items = [convert(v) for convert, v in zip(converters, values)]
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise argparse.ArgumentError(self, str(e)) from None
        setattr(namespace, self.dest, self.collect_as(items))


def _argument(tp: Any) -> dict[str, Any]:
    """The argparse keywords of an option annotated ``tp``."""
    members = _members(tp)
    if members is not None:
        several = [m for m in members if _collection(m)]
        if several or len(members) == 1:
            tp = (several or members)[0]  # X | None takes an X; list[int] | int takes a list
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    collection = _collection(tp)
    if collection:
        container, elements, fixed = collection
        return {"action": _Collect, "collect_as": container, "converters": [_scalar(e) for e in elements],
                "nargs": len(elements) if fixed else "+"}
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        return {"type": _scalar(tp), "choices": choices, "metavar": "{" + ",".join(map(str, choices)) + "}"}
    return {"type": _scalar(tp)}


def _shown(value: Any) -> str:
    """A default as it would be typed."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return " ".join(map(str, value))
    return str(value)


def _options_type(tp: Any) -> type | None:
    """The dataclass an options parameter is annotated with (``X`` or ``X | None``), else None."""
    members = _members(tp)
    candidates = members if members is not None else [tp]
    found = [m for m in candidates if dataclasses.is_dataclass(m) and isinstance(m, type)]
    return found[0] if len(found) == 1 and len(candidates) == 1 else None


def _options_params(func: Callable) -> dict[str, type]:
    """{parameter: its dataclass} for ``func``'s options object: a parameter named ``options``
    annotated with a dataclass, each field an option of its own on the command line (litgpt's way:
    the options type is the schema). Other dataclasses (an ``Arm``) are values."""
    hints = typing.get_type_hints(func)
    return {name: cls for name in inspect.signature(func).parameters
            if name == "options" and (cls := _options_type(hints.get(name))) is not None}


def build_parser(name: str, func: Callable) -> argparse.ArgumentParser:
    """The parser of ``visctx name``: an option per parameter of ``func`` (``out_dir`` ->
    ``--out-dir``), typed by its annotation, helped by its docstring's ``Args:`` entry; a parameter
    annotated with a dataclass (an options object) gives an option per field instead, helped by
    the dataclass's ``Args:`` (:func:`_options_params`)."""
    description, helps = parse_docstring(inspect.getdoc(func))
    parser = argparse.ArgumentParser(prog=f"visctx {name}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(func)
    options = _options_params(func)
    entries: list[tuple[str, Any, Any, str]] = []  # (name, annotation, default or empty, help)
    for pname, p in inspect.signature(func).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if pname in options:
            cls = options[pname]
            field_helps = parse_docstring(inspect.getdoc(cls))[1]
            field_hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
                entries.append((f.name, field_hints[f.name], default, field_helps.get(f.name, "")))
            continue
        entries.append((pname, hints.get(pname, str), p.default, helps.get(pname, "")))
    seen: set[str] = set()
    for pname, tp, default, help_text in entries:
        if pname in seen:
            raise TypeError(f"visctx {name}: option --{pname.replace('_', '-')} is defined twice (a parameter "
                            f"and a field of its options object)")
        seen.add(pname)
        required = default is inspect.Parameter.empty
        default = None if required else default
        kwargs = _argument(tp)
        if kwargs.get("action") is not argparse.BooleanOptionalAction:
            kwargs.setdefault("metavar", pname.upper())
        text = f"{help_text} ({'required' if required else 'default: ' + _shown(default)})".strip()
        action = parser.add_argument("--" + pname.replace("_", "-"), dest=pname, required=required,
                                     default=default, **kwargs)
        action.help = text.replace("%", "%%")  # after: BooleanOptionalAction appends its own default
    return parser


def option_args(options: dict[str, Any]) -> list[str]:
    """``{'hidden_size': 32, 'flag': False}`` -> ``['--hidden-size', '32', '--no-flag']``: the
    command-line form of options that :func:`build_parser` parses back (the rules' thin calls,
    the harness's jobs)."""
    out: list[str] = []
    for k, v in options.items():
        flag = k.replace("_", "-")
        out += [f"--{flag}" if v else f"--no-{flag}"] if isinstance(v, bool) else [f"--{flag}", str(v)]
    return out


def parse_command(name: str, func: Callable, argv: list[str]) -> dict[str, Any]:
    """``func``'s keyword arguments from ``argv``: options objects built from their fields."""
    args = vars(build_parser(name, func).parse_args(argv))
    for pname, cls in _options_params(func).items():
        args[pname] = cls(**{f.name: args.pop(f.name) for f in dataclasses.fields(cls)})
    return args


def main(argv: list[str] | None = None) -> int:
    """``visctx <command> ...``: through the preload server where it is enabled, else in this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS and argv[0] not in IN_PROCESS:
        from visctx import preload

        if preload.enabled():
            code = preload_server().run(argv)
            if code is not None:
                return code
    return run_command(argv)


def run_command(argv: list[str]) -> int:
    """Parse ``argv`` and run its command in this process; the exit code."""
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
    args = parse_command(argv[0], func, argv[1:])
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
