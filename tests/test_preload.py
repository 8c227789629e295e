"""The preload server: a command run through it gives what a plain process gives, its exit code
and messages reach the caller, a cancelled job's child does not outlive it, a client with other
import-time settings gets its own server, and neither end trusts a process of another user."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest

from visctx import preload
from visctx.cli import main, preload_server

BIN = Path(sys.executable).parent
VISCTX = str(BIN / "visctx")


def env(**extra: str) -> dict:
    return dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def visctx(*args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([VISCTX, *args], env=env(**extra), capture_output=True, text=True, timeout=300)


def server_pid(path: Path | None = None) -> int:
    log = Path(f"{path or preload_server().socket_path()}.log")
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
    assert Path(f"{preload_server().socket_path()}.log").is_file()
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


# What changes a process at import or first use: kernel dispatch, thread pools, torch, the hubs,
# Lightning, the interpreter, and the library's own settings (VISCTX_CPU_PIN pins the kernels).
KEYED = ["ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
         "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "PYTORCH_CUDA_ALLOC_CONF",
         "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR", "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "HF_HUB_OFFLINE",
         "TRANSFORMERS_OFFLINE", "PL_SEED_WORKERS", "PYTHONHASHSEED", "PYTHONPATH", "VISCTX_CPU_PIN"]
# Read anew by each call (in the child, from the client's environment) or by the client only.
PER_CALL = ["VISCTX_PRELOAD", "VISCTX_PRELOAD_IDLE", "VISCTX_DEBUG", "SOME_UNRELATED_VARIABLE", "SLURM_JOB_ID"]


@pytest.mark.parametrize("var", KEYED)
def test_import_time_environment_selects_another_server(monkeypatch, var):
    monkeypatch.delenv(var, raising=False)
    before = preload_server().key()
    monkeypatch.setenv(var, "1")
    one = preload_server().key()
    monkeypatch.setenv(var, "2")
    assert len({before, one, preload_server().key()}) == 3  # unset, 1 and 2: three servers


@pytest.mark.parametrize("var", PER_CALL)
def test_per_call_environment_shares_the_server(monkeypatch, var):
    monkeypatch.setenv(var, "x")
    key = preload_server().key()
    monkeypatch.setenv(var, "y")
    assert preload_server().key() == key


def test_the_cpus_a_client_may_use_select_its_server():
    """OpenMP sizes its pool from the affinity mask when it loads: a pinned client needs its own server."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        pytest.skip("one CPU: no other mask to pin to")
    key = preload_server().key()
    try:
        os.sched_setaffinity(0, {min(cpus)})
        assert preload_server().key() != key
    finally:
        os.sched_setaffinity(0, cpus)
    assert preload_server().key() == key


def test_a_client_with_other_import_settings_does_not_reuse_a_running_server(tmp_path, monkeypatch):
    """A server whose OpenBLAS sized its pool for another OPENBLAS_NUM_THREADS is not handed the job."""
    args = ["synth", "--n-train", "2", "--n-eval", "1", "--seconds", "16", "--seed", "0"]
    value = "2" if os.environ.get("OPENBLAS_NUM_THREADS") == "1" else "1"
    first = visctx(*args, "--out-dir", str(tmp_path / "a"), VISCTX_PRELOAD="1")
    other = visctx(*args, "--out-dir", str(tmp_path / "b"), VISCTX_PRELOAD="1", OPENBLAS_NUM_THREADS=value)
    assert first.returncode == 0 and other.returncode == 0, other.stderr
    assert "running in this process" not in first.stderr + other.stderr
    path = preload_server().socket_path()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", value)
    other_path = preload_server().socket_path()
    assert other_path != path
    assert server_pid(other_path) != server_pid(path)  # two servers, each with its own log
    assert (tmp_path / "a/train.json").read_bytes() == (tmp_path / "b/train.json").read_bytes()


def test_the_child_runs_with_the_clients_umask(tmp_path):
    """The server was started by some client; each child writes files as its own client would."""
    args = ["synth", "--n-train", "2", "--n-eval", "1", "--seconds", "16", "--seed", "0"]
    for mask in (0o022, 0o027):
        out = tmp_path / f"u{mask:o}"
        proc = subprocess.run([VISCTX, *args, "--out-dir", str(out)], env=env(VISCTX_PRELOAD="1"), umask=mask,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "running in this process" not in proc.stderr, proc.stderr
        assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # the directory the command made


def test_a_relative_pythonpath_is_made_absolute_for_the_server():
    """The server runs elsewhere: `PYTHONPATH=src` must still name this checkout's sources there."""
    from visctx.preload import absolute_pythonpath

    assert absolute_pythonpath(os.pathsep.join(["src", "/opt/lib", "../x"]), "/work/wt") == os.pathsep.join(
        ["/work/wt/src", "/opt/lib", "/work/wt/../x"])


# ---------------------------------------------------------------------------------------------
# Another user: the CI runs as root, so a forked child can drop to another uid and act as one.

OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root (the CI runs as root)")
SYNTH = ["synth", "--n-train", "2", "--n-eval", "1", "--seconds", "16", "--seed", "0"]


@pytest.fixture
def runtime(monkeypatch):
    """A fresh XDG_RUNTIME_DIR that another user may pass through (mode 0711, like /tmp's children)."""
    base = Path(tempfile.mkdtemp(prefix="visctx-run-"))
    os.chmod(base, 0o711)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    monkeypatch.setenv("VISCTX_PRELOAD", "1")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_other_user(work: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that drops to OTHER_UID and runs ``work(fd)``; (its pid, the read end of ``fd``)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never return into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            work(w)
            code = 0
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def read_line(fd: int, timeout: float = 60) -> str:
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            line += chunk
    return line.decode().strip()


@as_root
def test_a_listener_of_another_uid_is_refused_and_the_command_runs_in_process(runtime, tmp_path, capsys):
    path = preload_server().socket_path()
    path.parent.mkdir(mode=0o700)
    os.chmod(path.parent, 0o777)  # reachable while the other user binds the name
    stop_r, stop_w = os.pipe()

    def listen(out: int) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen()
        os.write(out, b"ready\n")
        got = 0
        while stop_r not in select.select([sock, stop_r], [], [])[0]:
            conn, _ = sock.accept()
            conn.settimeout(2)
            try:
                while chunk := conn.recv(1 << 16):
                    got += len(chunk)
            except OSError:
                pass
            conn.close()
        os.write(out, f"{got}\n".encode())

    pid, out = as_other_user(listen)
    try:
        assert read_line(out) == "ready"
        os.chmod(path.parent, 0o700)  # private again: only the listener's uid gives it away
        code = main([*SYNTH, "--out-dir", str(tmp_path / "c")])
        os.write(stop_w, b"x")
        received = read_line(out)
    finally:
        os.waitpid(pid, 0)
    err = capsys.readouterr().err
    assert received == "0"  # not one byte: no argv, no environment, no file descriptors
    assert f"served by uid {OTHER_UID}" in err and "running in this process" in err
    assert code == 0 and (tmp_path / "c/train.json").is_file()


@as_root
def test_a_client_of_another_uid_is_refused_by_the_server(runtime, tmp_path):
    server = preload_server()
    path = server.socket_path()
    preload.private_dir()
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "visctx.preload", str(path), server.entry, "visctx.synth"],
                                stdout=f, stderr=subprocess.STDOUT, env=env())
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.exists(), log.read_text()
        os.chmod(path.parent, 0o711)  # let the other user reach the socket: only the server's check stands
        os.chmod(path, 0o666)
        theirs = tmp_path / "theirs"

        def request(out: int) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            msg = json.dumps({"argv": [*SYNTH, "--out-dir", str(theirs)], "cwd": "/", "umask": 0o022,
                              "env": {"PATH": "/usr/bin:/bin"}}).encode()
            reply = b""
            try:  # a refusing server may close before the request is all sent
                socket.send_fds(sock, [struct.pack("!I", len(msg))], [0, 1, 2])
                sock.sendall(msg)
                sock.settimeout(60)
                while chunk := sock.recv(4):
                    reply += chunk
            except (BrokenPipeError, ConnectionResetError):
                pass
            os.write(out, f"{reply.hex()}.\n".encode())

        pid, out = as_other_user(request)
        try:
            reply = read_line(out)
        finally:
            os.waitpid(pid, 0)
            os.chmod(path.parent, 0o700)
        assert reply == "."  # the connection closed without an exit code: nothing ran
        assert not theirs.exists()
        assert f"refused a client of uid {OTHER_UID}" in log.read_text()
        assert proc.poll() is None
        assert server.run([*SYNTH, "--out-dir", str(tmp_path / "mine")]) == 0  # its own user is served
        assert (tmp_path / "mine/train.json").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("spoil", ["group-open", "other-owner", "symlink"])
def test_a_runtime_directory_others_could_enter_is_refused(runtime, tmp_path, capsys, spoil):
    mine = preload.runtime_dir()
    if spoil == "group-open":
        mine.mkdir()
        os.chmod(mine, 0o750)
    elif spoil == "other-owner":
        if os.geteuid() != 0:
            pytest.skip("giving a directory away needs root")
        mine.mkdir(mode=0o700)
        os.chown(mine, OTHER_UID, OTHER_UID)
    else:
        (runtime / "elsewhere").mkdir(mode=0o700)
        mine.symlink_to(runtime / "elsewhere")
    code = main([*SYNTH, "--out-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert "not a directory only this user can enter" in err and "running in this process" in err
    assert code == 0 and (tmp_path / "c/train.json").is_file()
    assert not [p for p in runtime.rglob("*") if p.name.startswith("preload-")]  # no socket, lock or log


def test_a_new_runtime_directory_is_private(runtime):
    path = preload.private_dir()
    assert path == runtime / f"visctx-{os.getuid()}" and path.stat().st_mode & 0o777 == 0o700


PROBE = """
import json, os, sys, tempfile

tempfile.gettempdir()  # as a library may at import: the server caches its own temp dir


def main(argv):
    mask = os.umask(0)
    with open(argv[0], "w") as f:
        json.dump({"argv": argv, "cwd": os.getcwd(), "umask": mask, "tmp": tempfile.gettempdir(),
                   "var": os.environ.get("SOME_UNRELATED_VARIABLE")}, f)
    return int(argv[1])
"""


def test_each_child_is_set_up_as_its_own_client(runtime, tmp_path, monkeypatch):
    """Two clients that share a server (nothing keyed differs) each get their argv, cwd, umask,
    environment and temp dir, and their exit code back."""
    (tmp_path / "probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    server = preload.Server(entry="probe:main")
    seen = []
    for i, (mask, code) in enumerate([(0o022, 0), (0o077, 3)]):
        cwd, tmp = tmp_path / f"cwd{i}", tmp_path / f"tmp{i}"
        cwd.mkdir(), tmp.mkdir()
        monkeypatch.chdir(cwd)
        monkeypatch.setenv("TMPDIR", str(tmp))
        monkeypatch.setenv("SOME_UNRELATED_VARIABLE", f"v{i}")
        old = os.umask(mask)
        try:
            assert server.run([str(tmp_path / f"out{i}.json"), str(code)]) == code
        finally:
            os.umask(old)
        seen.append(json.loads((tmp_path / f"out{i}.json").read_text()))
        assert seen[-1] == {"argv": [str(tmp_path / f"out{i}.json"), str(code)], "cwd": str(cwd), "umask": mask,
                            "tmp": str(tmp), "var": f"v{i}"}
    log = Path(f"{server.socket_path()}.log").read_text()
    assert len(re.findall(r"preload server \d+", log)) == 1  # one server served both
