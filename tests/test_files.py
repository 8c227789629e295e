"""Timing sidecars: wall times stay out of the results, their digests and DVC's hashes, so a
rerun on another machine leaves every cached directory's hash (and so dvc.lock) unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from visctx.files import TIMING_SUFFIX, content_digest, read_seconds, timing_path, write_timing

ROOT = Path(__file__).resolve().parents[1]


def test_timing_path_sits_beside_its_result():
    assert timing_path("a/eval/synthetic.json") == Path("a/eval/synthetic.timing.json")
    assert timing_path("m/train_summary.json").name == "train_summary" + TIMING_SUFFIX
    assert timing_path("run").name == "run" + TIMING_SUFFIX


def test_timing_round_trip_and_errors_name_the_file(tmp_path):
    write_timing(tmp_path / "r.json", 1.23456, steps=4)
    assert read_seconds(tmp_path / "r.json") == 1.235
    assert json.loads((tmp_path / "r.timing.json").read_text())["steps"] == 4
    with pytest.raises(FileNotFoundError, match="missing.timing.json"):
        read_seconds(tmp_path / "missing.json")
    (tmp_path / "bad.timing.json").write_text("[1]")
    with pytest.raises(ValueError, match="bad.timing.json"):
        read_seconds(tmp_path / "bad.json")


def test_content_digest_leaves_out_timings_and_bookkeeping_only(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.bin").write_bytes(b"w")
    write_timing(d / "train_summary.json", 1.0)
    before = content_digest(d)
    write_timing(d / "train_summary.json", 2.0)
    assert content_digest(d) == before  # another run's time: the same model
    (d / ".snakemake_timestamp").write_text("")
    (d / ".fresh.json").write_text("{}")
    assert content_digest(d) == before  # dated or stamped: the same model
    assert content_digest(d, file_digest=lambda f: content_digest(f)) == before  # a caching caller's files
    (d / "weights.bin").write_bytes(b"v")
    assert content_digest(d) != before  # other weights: another model


@pytest.mark.skipif(shutil.which("dvc") is None, reason="dvc is not installed")
def test_dvc_hash_of_a_cached_dir_ignores_timings_and_logs(tmp_path):
    """The repository's own .dvcignore, applied by DVC itself to a tracked directory."""
    run = lambda *a: subprocess.run(a, cwd=tmp_path, check=True, capture_output=True, text=True).stdout  # noqa: E731
    run("git", "init", "-q")
    run("dvc", "init", "-q")
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    arm = tmp_path / "arms" / "T1-M4-pool"
    (arm / "eval").mkdir(parents=True)
    (arm / "eval" / "synthetic.json").write_text('{"loss": 1.0}\n')
    write_timing(arm / "eval" / "synthetic.json", 3.0)
    (arm / "train.log").write_text("4 steps, 3.0 s\n")
    run("dvc", "add", "-q", "arms")
    write_timing(arm / "eval" / "synthetic.json", 4.0)
    (arm / "train.log").write_text("4 steps, 4.0 s\n")
    assert "up to date" in run("dvc", "status")
    (arm / "eval" / "synthetic.json").write_text('{"loss": 2.0}\n')
    assert "modified" in run("dvc", "status")  # a result's change is still seen
