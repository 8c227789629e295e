"""The README's results section is what the committed artifacts render to (no number typed by hand)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from visctx.readme import BEGIN, END, readme, render

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_readme_is_what_the_committed_results_render_to():
    assert readme(str(ROOT / "README.md"), str(ROOT), check=True) == {"current": True}


def test_a_changed_artifact_makes_the_check_fail(tmp_path):
    shutil.copytree(ROOT / "results", tmp_path / "results", ignore=shutil.ignore_patterns("data", "models", "base",
                                                                                            "arms", "*.html"))
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    assert readme(str(tmp_path / "README.md"), str(tmp_path), check=True)["current"]
    m = json.loads((tmp_path / "results/metrics_full.json").read_text())
    m["tokens"]["pool"]["effect"] += 0.01  # one more percent of effect than the tables hold
    (tmp_path / "results/metrics_full.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="not what results/ renders to"):
        readme(str(tmp_path / "README.md"), str(tmp_path), check=True)
    readme(str(tmp_path / "README.md"), str(tmp_path))  # regenerating fixes it
    text = (tmp_path / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and render(tmp_path) in text
