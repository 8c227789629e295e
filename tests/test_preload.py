"""The preload server: a command run through it gives what a plain process gives, its exit code
and messages reach the caller, and a cancelled job's child does not outlive it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from visctx import preload

BIN = Path(sys.executable).parent
VISCTX = str(BIN / "visctx")


def env(**extra: str) -> dict:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def visctx(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([VISCTX, *args], env=env(**extra), capture_output=True, text=True, timeout=300)


def server_pid() -> int:
    log = Path(f"{preload.socket_path()}.log")
    return int(re.findall(r"preload server (\d+)", log.read_text())[-1])


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_a_command_through_the_server_writes_what_a_plain_process_writes(tmp_path):
    args = ["init-vision", "--image-size", "8", "--patch-size", "2", "--hidden-size", "8", "--num-layers", "1",
            "--num-heads", "1", "--intermediate-size", "8", "--seed", "3"]
    plain = visctx(*args, "--out-dir", str(tmp_path / "plain"), VISCTX_PRELOAD="0")
    served = visctx(*args, "--out-dir", str(tmp_path / "served"), VISCTX_PRELOAD="1")
    assert plain.returncode == 0 and served.returncode == 0, served.stderr
    assert "running in this process" not in served.stderr  # it really went through the server
    assert Path(f"{preload.socket_path()}.log").is_file()
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "served" / name).read_bytes()
    again = visctx(*args, "--out-dir", str(tmp_path / "again"), VISCTX_PRELOAD="1")  # a warm server
    assert (tmp_path / "again/model.safetensors").read_bytes() == (tmp_path / "plain/model.safetensors").read_bytes()
    assert str(tmp_path / "served") in served.stdout and str(tmp_path / "again") in again.stdout  # stdout passed


def test_errors_and_exit_codes_reach_the_caller(tmp_path):
    proc = visctx("extract", "--corpus-json", str(tmp_path / "missing.json"), "--video-root", str(tmp_path),
                  "--shard", "0", "--n-shards", "1", "--out-npy", str(tmp_path / "f.npy"),
                  "--out-json", str(tmp_path / "f.json"), VISCTX_PRELOAD="1")
    assert proc.returncode == 1
    assert "missing.json" in proc.stderr and "visctx extract: error" in proc.stderr
    assert not (tmp_path / "f.npy").exists()


def test_a_cancelled_job_takes_its_child_with_it(tmp_path):
    fifo = tmp_path / "corpus.json"
    os.mkfifo(fifo)  # the child blocks reading it: a job that never ends on its own
    client = subprocess.Popen([VISCTX, "extract", "--corpus-json", str(fifo), "--video-root", str(tmp_path),
                               "--shard", "0", "--n-shards", "1", "--out-npy", str(tmp_path / "f.npy"),
                               "--out-json", str(tmp_path / "f.json")], env=env(VISCTX_PRELOAD="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the server (maybe starting) to fork the child
        try:
            if children(server_pid()):
                break
        except (FileNotFoundError, IndexError):
            pass
        time.sleep(0.1)
    server = server_pid()
    child = children(server)
    assert child, "the server never started the job"
    client.send_signal(signal.SIGKILL)  # what a cancelled Snakemake job looks like from here
    client.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(c in children(server) for c in child):
        time.sleep(0.1)
    assert not any(c in children(server) for c in child)
    os.kill(server, 0)  # the server itself serves on


def test_no_server_means_the_command_runs_in_process(tmp_path):
    proc = visctx("synth", "--out-dir", str(tmp_path / "c"), "--n-train", "2", "--n-eval", "1", "--seconds", "16", "--seed", "0",
                  VISCTX_PRELOAD="1", XDG_RUNTIME_DIR=str(tmp_path / "no" / "such" / "dir"))
    assert proc.returncode == 0, proc.stderr
    assert "running in this process" in proc.stderr
    assert (tmp_path / "c/train.json").is_file()


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "OMP_NUM_THREADS", "PYTHONPATH"])
def test_import_time_environment_selects_another_server(monkeypatch, var):
    monkeypatch.delenv(var, raising=False)
    before = preload.server_key()
    monkeypatch.setenv(var, "1")
    assert preload.server_key() != before
    monkeypatch.setenv("SOME_UNRELATED_VARIABLE", "x")
    key = preload.server_key()
    monkeypatch.setenv("SOME_UNRELATED_VARIABLE", "y")
    assert preload.server_key() == key


def test_a_relative_pythonpath_is_made_absolute_for_the_server():
    """The server runs elsewhere: `PYTHONPATH=src` must still name this checkout's sources there."""
    from visctx.preload import absolute_pythonpath

    assert absolute_pythonpath(os.pathsep.join(["src", "/opt/lib", "../x"]), "/work/wt") == os.pathsep.join(
        ["/work/wt/src", "/opt/lib", "/work/wt/../x"])
