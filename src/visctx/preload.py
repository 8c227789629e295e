"""Run ``visctx`` commands in children forked from one warm process (a preload server).

Why: Snakemake runs a process per job, and each process pays ~7 s importing torch, transformers
and Lightning (platform-notes) -- more than a tiny arm's whole fine-tune on CPU. With a job per arm
that start-up would dominate the embedded default, so arms used to be trained in groups, which
made a change to one arm retrain its whole group. The server imports the heavy modules once; each
``visctx`` call then connects over a Unix socket, hands over its argv, cwd, environment, umask and
stdin/stdout/stderr, and the server forks a child that runs the command with them. A job per arm
then costs what the arm costs, and only the arms a change affects rerun.

The child is the same code a plain process would run (same seeds, same thread settings: torch's
thread pool is created lazily in the child), so results are identical with and without the
server (a test checks it). A server serves one code version and one environment: it is keyed by
a digest of the installed ``visctx`` sources, the interpreter, the installed packages, the CPUs the
process may use and every environment variable that changes what a process computes at import or
first use (:func:`keyed_env`), so an edit to the code or such a setting starts a new server. It
exits after ``idle`` seconds without work. If the client dies (Snakemake cancels the job) its
child is killed; if the server dies, its children die with it (``PR_SET_PDEATHSIG``).

Trust: the request carries the whole environment (tokens included) and the server runs commands as
its owner, so both ends prove who they are. Socket, lock and log live in a directory only the user
can enter (:func:`private_dir`: created 0700, refused unless it is the user's own and closed to
group and others), and each side reads the other's uid from the kernel (``SO_PEERCRED``) before
anything is sent or run: a client refuses a listener of another uid and runs the command in its own
process; a server refuses a client of another uid. Any doubt on the client side (no private
directory, no peer credentials, no server) falls back to running in-process.

This module knows nothing of the CLI (no import of it): the CLI names the function each child calls
and the modules to import (:class:`Server`). Opt in with ``VISCTX_PRELOAD=1`` (the workflow sets it
when ``workflow.preload`` is true: the embedded default; a cluster job runs on its own node and
gains nothing).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

# Environment variables that change what a process computes at import or first use: kernel
# dispatch (ATEN_CPU_CAPABILITY, NPY_DISABLE_CPU_FEATURES, MKL_ENABLE_INSTRUCTIONS,
# ONEDNN_MAX_CPU_ISA, OPENBLAS_CORETYPE), thread pools (OMP_, MKL_, OPENBLAS_, KMP_, GOMP_, BLIS_),
# torch and CUDA (PYTORCH_, TORCH*, CUDA_, CUBLAS_, CUDNN_), the hubs (HF_, HUGGINGFACE_,
# TRANSFORMERS_, TOKENIZERS_), Lightning (PL_), the interpreter and the libraries it loads (PYTHON*,
# LD_*, locale) and the library's own settings (VISCTX_). Prefixes, not names: a library's new
# variable is keyed without anyone adding it (a prefix that catches too much costs one more server).
# A forked child inherits what its server computed from these; a client whose values differ gets
# its own server.
IMPORT_ENV = (
    "ATEN_", "NPY_", "MKL_", "OMP_", "KMP_", "GOMP_", "OPENBLAS_", "GOTO_", "BLIS_", "VECLIB_", "NUMEXPR_",
    "ONEDNN_", "DNNL_", "PYTORCH_", "TORCH", "CUDA_", "CUBLAS_", "CUDNN_", "NVIDIA_", "TRITON_",
    "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "PL_", "PYTHON", "LD_", "LANG", "LC_", "MPL",
    "VISCTX_",
)
# VISCTX_ variables read anew by every call, in the child, from the client's environment (or only
# by the client or the installer): they must not split the server.
PER_CALL_ENV = frozenset({"VISCTX_PRELOAD", "VISCTX_PRELOAD_IDLE", "VISCTX_DEBUG",
                          "VISCTX_EXTRAS", "VISCTX_INSTALLER"})
IDLE_S = float(os.environ.get("VISCTX_PRELOAD_IDLE", "60"))
START_TIMEOUT_S = 120.0
_HEADER = struct.Struct("!I")
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def enabled() -> bool:
    return os.environ.get("VISCTX_PRELOAD", "") not in ("", "0", "false", "no")


def keyed_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of ``environ`` (default: this process's) that select a server."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(IMPORT_ENV) and k not in PER_CALL_ENV}


def runtime_dir() -> Path:
    """Where this user's sockets, locks and logs live (not created here; see :func:`private_dir`)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    return base / f"visctx-{os.getuid()}"


def private_dir(create: bool = True) -> Path:
    """:func:`runtime_dir`, made 0700 if missing; OSError unless it is a real directory (no link) of
    this user that neither group nor others can enter -- else another user could bind the socket's
    name first, or reach ours."""
    path = runtime_dir()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{path} is not a directory only this user can enter "
                      f"(owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)})")
    return path


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket, from the kernel."""
    if not hasattr(socket, "SO_PEERCRED"):
        raise OSError("this platform gives no peer credentials (SO_PEERCRED)")
    return _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))[1]


def _open_private(path: str, flags: int) -> int:
    """Open a file of the private directory without following a link, readable by the user only."""
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


@dataclass(frozen=True)
class Server:
    """A preload server whose children call ``entry`` ("module:function", given the argv, returning
    the exit code) after the server imported ``modules`` once."""

    entry: str
    modules: tuple[str, ...] = ()

    def key(self) -> str:
        """Digest of what a forked child would inherit from the server and a fresh process would not."""
        src = Path(__file__).resolve().parent
        h = hashlib.sha256(f"{sys.executable}\0{src}\0{self.entry}\0{' '.join(self.modules)}".encode())
        for path in sorted(src.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
        for k, v in keyed_env().items():
            h.update(f"{k}={v}\0".encode())
        # OpenMP sizes its pool from the CPUs the process may use when it loads: part of the key too.
        h.update(f"cpus={sorted(os.sched_getaffinity(0))}".encode())
        for entry in sys.path:  # an install or upgrade changes the site-packages listing
            if entry.endswith("site-packages") and os.path.isdir(entry):
                h.update(json.dumps(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(entry))).encode())
        return h.hexdigest()[:16]

    def socket_path(self) -> Path:
        # Unix socket paths are limited to ~107 bytes: keep it short, in the per-user directory.
        return runtime_dir() / f"preload-{self.key()}.sock"

    def run(self, argv: list[str]) -> int | None:
        """Run ``argv`` in a child of the server; None if no server could be trusted (run locally)."""
        if os.environ.get("PYTHONPATH"):  # before the key is computed: relative and absolute are one server
            os.environ["PYTHONPATH"] = absolute_pythonpath(os.environ["PYTHONPATH"], os.getcwd())
        try:
            private_dir()
            sock = self._connect_or_start(self.socket_path())
        except OSError as e:
            print(f"visctx: preload server unavailable ({e}); running in this process", file=sys.stderr)
            return None
        with sock:
            msg = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": _umask()}).encode()
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

    def _connect_or_start(self, path: Path) -> socket.socket:
        sock = _try_connect(path)
        if sock is not None:
            return sock
        # One client starts the server; the others wait on the lock, then connect.
        lock = _open_private(f"{path}.lock", os.O_WRONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = _try_connect(path)
            if sock is not None:
                return sock
            path.unlink(missing_ok=True)  # a stale socket of a dead server
            log = _open_private(f"{path}.log", os.O_WRONLY | os.O_APPEND)
            try:
                proc = subprocess.Popen([sys.executable, "-m", "visctx.preload", str(path), self.entry,
                                         *self.modules], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, close_fds=True, cwd="/")
            finally:
                os.close(log)
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
        finally:
            os.close(lock)


def absolute_pythonpath(value: str, cwd: str) -> str:
    """PYTHONPATH with relative entries made absolute: the server runs in another directory, where
    ``PYTHONPATH=src`` would name nothing and the installed copy of the library would be imported."""
    return os.pathsep.join(os.path.join(cwd, p) if not os.path.isabs(p) else p for p in value.split(os.pathsep))


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _try_connect(path: Path) -> socket.socket | None:
    """A connection to this user's server at ``path``; None if nothing listens there; OSError if
    another user's process does (its socket is not ours to replace: the caller runs in-process)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    try:
        uid = peer_uid(sock)
    except OSError:
        sock.close()
        raise
    if uid != os.getuid():
        sock.close()
        raise OSError(f"{path} is served by uid {uid}, not this user")
    return sock


# ---------------------------------------------------------------------------------------------
# Server


def serve(path: str | os.PathLike, entry: str, modules: Sequence[str] = (), idle: float = IDLE_S) -> None:
    """Import ``modules`` and ``entry``, listen on ``path``, fork a child per request of this user;
    exit when idle. Refuses to serve from a directory other users can enter."""
    path = Path(path)
    if path.parent != private_dir(create=False):
        raise OSError(f"{path} is not in this user's private directory {runtime_dir()}")
    for name in modules:
        importlib.import_module(name)
    module, _, func = entry.partition(":")
    command = getattr(importlib.import_module(module), func)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)  # the directory keeps others out already; the socket says so too
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
                    pid = _start_child(conn, listener, command)
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


def _start_child(conn: socket.socket, listener: socket.socket, command: Callable[[list[str]], int]) -> int | None:
    """Fork a child that runs the request on ``conn``; None (nothing read, nothing run) for a client of
    another uid or a malformed request."""
    try:
        uid = peer_uid(conn)
    except OSError as e:
        uid = f"unknown ({e})"
    if uid != os.getuid():
        print(f"refused a client of uid {uid}", flush=True)
        conn.close()
        return None
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
        os.umask(req["umask"])
        os.environ.clear()
        os.environ.update(req["env"])
        tempfile.tempdir = None  # the server's cached temp dir is not the client's TMPDIR
        sys.argv = ["visctx", *req["argv"]]
        code = command(req["argv"])
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
    serve(sys.argv[1], sys.argv[2], sys.argv[3:])
