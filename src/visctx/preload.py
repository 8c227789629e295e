"""Run ``visctx`` commands in children forked from one warm process (a preload server).

Why: Snakemake runs a process per job, and each process pays ~7 s importing torch, transformers
and Lightning (platform-notes) -- more than a tiny arm's whole fine-tune on CPU. With a job per arm
that start-up would dominate the embedded default, so arms used to be trained in groups, which
made a change to one arm retrain its whole group. The server imports the heavy modules once; each
``visctx`` call then connects over a Unix socket, hands over its argv, cwd, environment and its
stdin/stdout/stderr, and the server forks a child that runs the command with them. A job per arm
then costs what the arm costs, and only the arms a change affects rerun.

The child is the same code a plain process would run (same seeds, same thread settings: torch's
thread pool is created lazily in the child), so results are identical with and without the
server (a test checks it). A server serves one code version and one environment: it is keyed by
a digest of the installed ``visctx`` sources, the interpreter and the environment variables that
libraries read at import time, so an edit to the code starts a new server. It exits after
``idle`` seconds without work. If the client dies (Snakemake cancels the job) its child is killed;
if the server dies, its children die with it (``PR_SET_PDEATHSIG``). Anything unexpected on the
client side falls back to running the command in-process.

Opt in with ``VISCTX_PRELOAD=1`` (the workflow sets it when ``workflow.preload`` is true: the
embedded default; a cluster job runs on its own node and gains nothing).
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Imported once by the server; everything a job's hot path imports (the CLI imports lazily).
PRELOAD = (
    "numpy", "torch", "transformers", "lightning",
    "transformers.models.qwen2.modeling_qwen2", "transformers.models.siglip.modeling_siglip",
    "decord", "av",
    "visctx.cli", "visctx.train", "visctx.evaluate", "visctx.features", "visctx.video", "visctx.niah",
    "visctx.synth", "visctx.pretrained", "visctx.collect",
)
# Environment variables read at import time by torch / transformers / huggingface_hub / OpenMP:
# a client whose values differ gets its own server.
IMPORT_ENV = ("PYTHONPATH", "PYTHONHASHSEED", "HF_", "TRANSFORMERS_", "TORCH", "OMP_", "MKL_", "CUDA_",
              "VISCTX_DEBUG", "PL_", "ATEN_", "NPY_", "OPENBLAS_", "PYTORCH_", "VISCTX_CPU_PIN")
IDLE_S = float(os.environ.get("VISCTX_PRELOAD_IDLE", "60"))
START_TIMEOUT_S = 120.0
_HEADER = struct.Struct("!I")


def enabled() -> bool:
    return os.environ.get("VISCTX_PRELOAD", "") not in ("", "0", "false", "no")


def server_key() -> str:
    """Digest of what a forked child would inherit from the server and a fresh process would not."""
    src = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{sys.executable}\0{src}".encode())
    for path in sorted(src.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for k in sorted(os.environ):
        if k.startswith(IMPORT_ENV):
            h.update(f"{k}={os.environ[k]}\0".encode())
    for entry in sys.path:  # an install or upgrade changes the site-packages listing
        if entry.endswith("site-packages") and os.path.isdir(entry):
            h.update(json.dumps(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(entry))).encode())
    return h.hexdigest()[:16]


def socket_path(key: str | None = None) -> Path:
    # Unix socket paths are limited to ~107 bytes: keep it in the temp dir, per user and key.
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return base / f"visctx-preload-{os.getuid()}-{key or server_key()}.sock"


# ---------------------------------------------------------------------------------------------
# Client


def absolute_pythonpath(value: str, cwd: str) -> str:
    """PYTHONPATH with relative entries made absolute: the server runs in another directory, where
    ``PYTHONPATH=src`` would name nothing and the installed copy of the library would be imported."""
    return os.pathsep.join(os.path.join(cwd, p) if not os.path.isabs(p) else p for p in value.split(os.pathsep))


def run(argv: list[str]) -> int | None:
    """Run ``visctx argv`` in a child of the server; None if no server could be used (run locally)."""
    if os.environ.get("PYTHONPATH"):  # before the key is computed: relative and absolute are one server
        os.environ["PYTHONPATH"] = absolute_pythonpath(os.environ["PYTHONPATH"], os.getcwd())
    try:
        sock = _connect_or_start()
    except OSError as e:
        print(f"visctx: preload server unavailable ({e}); running in this process", file=sys.stderr)
        return None
    with sock:
        msg = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            socket.send_fds(sock, [_HEADER.pack(len(msg))], [0, 1, 2])  # one sendmsg may not take it all
            sock.sendall(msg)
            reply = _recv_exact(sock, 4)
        except OSError as e:
            print(f"visctx: lost the preload server ({e})", file=sys.stderr)
            return 1
        if reply is None:
            print("visctx: the preload server closed the connection before the command finished",
                  file=sys.stderr)
            return 1
        return struct.unpack("!i", reply)[0]


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _try_connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _connect_or_start() -> socket.socket:
    path = socket_path()
    sock = _try_connect(path)
    if sock is not None:
        return sock
    # One client starts the server; the others wait on the lock, then connect.
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _try_connect(path)
        if sock is not None:
            return sock
        path.unlink(missing_ok=True)  # a stale socket of a dead server
        log = open(f"{path}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "visctx.preload", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, close_fds=True,
                                cwd=tempfile.gettempdir())
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            sock = _try_connect(path)
            if sock is not None:
                return sock
            if proc.poll() is not None:
                raise OSError(f"the server exited with {proc.returncode} (log: {path}.log)")
            time.sleep(0.05)
        proc.kill()
        raise OSError(f"the server did not start within {START_TIMEOUT_S:.0f} s (log: {path}.log)")


# ---------------------------------------------------------------------------------------------
# Server


def serve(path: str | os.PathLike, idle: float = IDLE_S) -> None:
    """Import :data:`PRELOAD`, listen on ``path``, fork a child per request; exit when idle."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    path = Path(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, path)  # clients see a socket only once it accepts
    inode = os.stat(path).st_ino
    children: dict[int, socket.socket] = {}  # pid -> its client's connection
    conns: dict[socket.socket, int] = {}
    last_busy = time.monotonic()
    print(f"preload server {os.getpid()} on {path}", flush=True)
    try:
        while True:
            if children:
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy > idle:
                break
            if _socket_replaced(path, inode):
                break
            ready, _, _ = select.select([listener, *conns], [], [], 0.1)
            for r in ready:
                if r is listener:
                    conn, _ = listener.accept()
                    pid = _start_child(conn, listener)
                    if pid is not None:
                        children[pid] = conn
                        conns[conn] = pid
                else:  # a client went away (cancelled job): stop its child
                    try:
                        os.kill(conns[r], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            _reap(children, conns)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        if not _socket_replaced(path, inode):
            path.unlink(missing_ok=True)
        listener.close()


def _socket_replaced(path: Path, inode: int) -> bool:
    """Another server took over the path (or it was removed): this one stops serving."""
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return True


def _reap(children: dict[int, socket.socket], conns: dict[socket.socket, int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        conns.pop(conn, None)
        code = os.waitstatus_to_exitcode(status)
        try:
            conn.sendall(struct.pack("!i", code if code >= 0 else 128 - code))
        except OSError:
            pass
        conn.close()


def _start_child(conn: socket.socket, listener: socket.socket) -> int | None:
    try:
        conn.settimeout(10)
        head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (n,) = _HEADER.unpack(head)
        body = _recv_exact(conn, n)
        conn.settimeout(None)
        if body is None or len(fds) != 3:
            raise OSError("incomplete request")
        req = json.loads(body)
    except (OSError, ValueError, struct.error) as e:
        print(f"bad request: {e}", flush=True)
        conn.close()
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    # child: never return into the server loop
    code = 1
    try:
        listener.close()
        conn.close()
        _die_with_parent()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = ["visctx", *req["argv"]]
        from visctx.cli import main

        code = main(req["argv"], preload=False)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - report like an uncaught exception in a plain process
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    serve(sys.argv[1])
