"""Freshness by content (visctx.fresh): a small real Snakemake workflow, run, then moved the way a
DVC experiment's temporary workspace moves it (no .snakemake/, every mtime new and out of order),
then changed one way at a time; each case asserts exactly which jobs Snakemake plans. The control
runs with the stamps ignored (VISCTX_NO_FRESH=1) and must plan the jobs the stamps spare."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visctx import fresh
from visctx.files import content_digest

BIN = Path(sys.executable).parent
HELLO = "hello\n" * 400_000

SNAKEFILE = """
from visctx.fresh import install
install(workflow)

rule all:
    input: "results/b.txt", "results/d"

rule a:
    input: "in.txt"
    output: "results/a.txt"
    shell: "tr a-z A-Z < {input} > {output}"

rule b:
    input: "results/a.txt"
    output: "results/b.txt"
    params: p=config.get("pp", 1)
    shell: "(cat {input}; echo {params.p}) > {output}"

rule d:  # a directory output, and a file it reads that Snakemake does not see (its depfile)
    input: "results/a.txt"
    output: directory("results/d")
    shell: "mkdir -p {output} && cat {input} extra.txt > {output}/x && python -c 'from visctx.fresh import write_reads; write_reads(\\"{output}\\", [\\"extra.txt\\"])'"
"""


def smk(ws: Path, *args: str, fresh_off: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop(fresh.OFF, None)
    if fresh_off:
        env[fresh.OFF] = "1"
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "1", *args], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def planned(ws: Path, *args: str, fresh_off: bool = False) -> set[str]:
    out = smk(ws, "--dry-run", *args, fresh_off=fresh_off)
    return set(re.findall(r"^(?:local)?rule (\w+):", out.stdout + out.stderr, re.M)) - {"all"}


def make_workspace(path: Path) -> Path:
    path.mkdir()
    (path / "Snakefile").write_text(SNAKEFILE)
    (path / "in.txt").write_text(HELLO)  # above Snakemake's 1 MB checksum limit: mtimes alone decide
    (path / "extra.txt").write_text("extra\n")
    smk(path)
    return path


def moved(ws: Path, dst: Path) -> Path:
    """A copy as a temporary workspace sees it: no .snakemake/, outputs older than their sources."""
    shutil.copytree(ws, dst, ignore=shutil.ignore_patterns(".snakemake"))
    t = time.time() - 100_000
    for i, p in enumerate(sorted((dst / "results").rglob("*"), reverse=True)):
        os.utime(p, (t + i, t + i))  # outputs in an order no build would leave
    for p in ("in.txt", "extra.txt", "Snakefile"):
        os.utime(dst / p, (t + 10_000, t + 10_000))  # sources newest
    return dst


@pytest.fixture()
def ws(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws")


def test_every_output_is_stamped_and_nothing_is_left_to_do(ws):
    stamps = fresh.load_stamps("results", ws)
    assert set(stamps) == {"results/a.txt", "results/b.txt", "results/d"}
    assert stamps["results/b.txt"]["inputs"] == {"results/a.txt": content_digest(ws / "results/a.txt")}
    assert stamps["results/d"]["inputs"]["extra.txt"] == content_digest(ws / "extra.txt")  # the depfile
    assert stamps["results/b.txt"]["record"]["rule"] == "b"
    assert not set(stamps["results/b.txt"]["record"]) & set(fresh.VOLATILE)
    assert planned(ws) == set()


def test_outputs_a_killed_run_never_stamped_are_stamped_by_the_next_success(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Snakefile").write_text(SNAKEFILE)
    (ws / "in.txt").write_text(HELLO)
    (ws / "extra.txt").write_text("extra\n")
    smk(ws, fresh_off=True)  # as if killed before its end: no stamp written
    assert fresh.load_stamps("results", ws) == {}
    smk(ws, "--config", "pp=2")  # the next run, which finishes what was left (here: b again)
    assert set(fresh.load_stamps("results", ws)) == {"results/a.txt", "results/b.txt", "results/d"}


def test_stamps_are_the_same_bytes_in_another_run(ws, tmp_path):
    other = make_workspace(tmp_path / "other")
    for rel in ("results/.fresh.json",):
        assert (ws / rel).read_bytes() == (other / rel).read_bytes()


def test_a_moved_workspace_reruns_nothing(ws, tmp_path):
    dst = moved(ws, tmp_path / "temp")
    assert planned(dst, fresh_off=True) == {"a", "b", "d"}  # the control: mtimes alone rerun everything
    dst2 = moved(ws, tmp_path / "temp2")
    assert planned(dst2) == set()


def test_a_param_change_in_a_moved_workspace_reruns_its_job_only(ws, tmp_path):
    dst = moved(ws, tmp_path / "temp")
    assert planned(dst, "--config", "pp=2") == {"b"}  # Snakemake's params check, on the restored record
    smk(dst, "--config", "pp=2")
    assert (dst / "results/b.txt").read_text() == HELLO.upper() + "2\n"
    assert planned(dst, "--config", "pp=2") == set()


@pytest.mark.parametrize("lines", [400_000, 1])  # above and below Snakemake's checksum limit
def test_a_changed_input_reruns_what_depends_on_it_even_when_older(tmp_path, lines):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "Snakefile").write_text(SNAKEFILE)
    (ws / "in.txt").write_text("hello\n" * lines)
    (ws / "extra.txt").write_text("extra\n")
    smk(ws)
    (ws / "in.txt").write_text("world\n" * lines)
    os.utime(ws / "in.txt", (1_000_000, 1_000_000))  # older than every output: mtimes see no change
    assert planned(ws, fresh_off=True) == set()  # the control
    assert planned(ws) == {"a", "b", "d"}
    smk(ws)
    assert (ws / "results/b.txt").read_text() == "WORLD\n" * lines + "1\n"


def test_a_byte_identical_restore_reruns_nothing(ws):
    data = (ws / "in.txt").read_bytes()
    (ws / "in.txt").unlink()
    (ws / "in.txt").write_bytes(data)  # restored, newer than every output
    assert planned(ws, fresh_off=True) == {"a", "b", "d"}  # the control
    assert planned(ws) == set()


def test_a_file_named_in_a_depfile_is_an_input(ws):
    (ws / "extra.txt").write_text("changed\n")
    os.utime(ws / "extra.txt", (1_000_000, 1_000_000))
    assert planned(ws) == {"d"}


def test_an_output_edited_by_hand_is_left_to_snakemake(ws):
    (ws / "results/b.txt").write_text("edited\n")
    found = fresh.restore("results", ws)
    assert "results/b.txt" in found["unknown"] and "results/a.txt" in found["fresh"]


def test_the_restored_record_is_where_snakemake_reads_it(ws, tmp_path):
    dst = moved(ws, tmp_path / "temp")
    fresh.restore("results", dst)
    rec = json.loads(fresh._record_path(dst / ".snakemake/metadata", "results/b.txt").read_text())
    assert rec["rule"] == "b" and rec["record_format_version"] == 6  # Snakemake 9's file persistence
    assert fresh._record_key(dst / ".snakemake/metadata", fresh._record_path(dst / ".snakemake/metadata", "x" * 400)) == "x" * 400


def test_a_bad_stamp_names_its_file(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results/.fresh.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"results/\.fresh\.json"):
        fresh.load_stamps("results", tmp_path)
    (tmp_path / "results/.x.reads").write_text("{}")
    with pytest.raises(ValueError, match=r"\.x\.reads"):
        fresh._read_reads(tmp_path / "results/x")
