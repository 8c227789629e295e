"""The import graph: no cycles among the library's modules, and the rules' code digests cover
everything their commands import (a change to any of it reruns the job)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from visctx import imports
from visctx.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycle_among_the_modules():
    assert imports.cycles() == []


def test_params_validation_imports_no_training_code():
    # files: atomic writes; __init__ and cpu: the kernel pin every process runs first
    assert set(imports.closure("config")) <= {"config", "context", "strategy", "files", "__init__", "cpu"}
    assert not {"train", "collate", "fit", "data", "evaluate"} & set(imports.closure("model"))


def test_cycles_are_found(tmp_path):
    src = tmp_path / "visctx"
    src.mkdir()
    (src / "a.py").write_text("from visctx.b import x\n")
    (src / "b.py").write_text("def f():\n    from visctx import a\n")  # a lazy import closes the loop
    (src / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from visctx import a\n")
    assert imports.cycles(src) == [["a", "b"]]
    assert imports.closure("c", src=src) == ["c"]  # typing-only imports never run
    (src / "__init__.py").write_text("from visctx.c import y\n")  # runs before any module of the package
    assert imports.closure("b", src=src) == ["__init__", "a", "b", "c"]


def test_a_change_to_any_imported_module_changes_the_digest(tmp_path):
    src = tmp_path / "visctx"
    shutil.copytree(imports.SRC, src, ignore=shutil.ignore_patterns("__pycache__"))
    assert {"context", "config", "cpu"} <= set(imports.closure("fit", src=src))  # what `fits` runs
    before = imports.digest("fit", src=src)
    assert imports.digest("fit", src=src) == before
    (src / "synth.py").write_text((src / "synth.py").read_text() + "\n# not imported by fit\n")
    assert imports.digest("fit", src=src) == before
    imports.direct_imports.cache_clear()
    (src / "context.py").write_text((src / "context.py").read_text() + "\n# imported through config\n")
    assert imports.digest("fit", src=src) != before
    imports.direct_imports.cache_clear()
    feat = imports.digest("features", src=src)  # imports no cpu itself: the package's __init__ does
    (src / "cpu.py").write_text((src / "cpu.py").read_text() + "\n# the pin every process runs\n")
    assert imports.digest("features", src=src) != feat
    imports.direct_imports.cache_clear()


def test_every_rule_digests_the_module_of_the_command_it_runs():
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for block in re.split(r"\n\s*rule ", smk.read_text())[1:]:
            name = block.split(":", 1)[0].strip()
            cmd = re.search(r'"visctx ([\w-]+)', block)
            code = re.search(r'code=code_version\("(\w+)"\)', block)
            if cmd is None:
                continue
            assert code, f"{smk.name}: rule {name} runs `visctx {cmd[1]}` without a code digest"
            module = COMMANDS[cmd[1]][0].removeprefix("visctx.")
            assert module in imports.closure(code[1]), f"rule {name}: `visctx {cmd[1]}` runs {module}, not digested"
