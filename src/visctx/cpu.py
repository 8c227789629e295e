"""Same seed, same bytes on any x86-64 CPU: the instruction set the numeric kernels run with.

Why: PyTorch and NumPy choose their CPU kernels by instruction set at run time. Softmax,
log_softmax and SDPA (forward and backward) give other last bits under AVX-512 than under AVX2,
and so do NumPy's float64 ``exp``/``log``; training at this scale is chaotic, so one ulp grew into
7 % per arm between two machines of the same kind (platform-notes, "Same bytes on another CPU").
Importing :mod:`visctx` pins both to one level before either library is imported, with the two
variables they read (``ATEN_CPU_CAPABILITY`` at torch's first tensor op, ``NPY_DISABLE_CPU_FEATURES``
at NumPy's import), so every process the project starts inherits it: the ``visctx`` CLI, the
preload server and its children, Snakemake's jobs (the Snakefile imports visctx) and the tests
(``tests/conftest.py``). Nobody sets a variable by hand.

``VISCTX_CPU_PIN`` chooses the level: ``avx2`` (the default: every x86-64 CPU of the CI kind has
it, and AVX2 and AVX-512 machines then compute alike), ``default`` (torch's and NumPy's baseline
kernels: what a CPU without AVX2 would run; the tests use it to simulate another CPU on an AVX2
machine), or ``off`` (native kernels, for the control run). A value already in the environment
is kept, and :func:`check` refuses to compute when what the libraries actually use is not the pin
(torch used before visctx was imported, a CPU below the pin, a contradicting variable).

BLAS is MKL, linked into torch's CPU wheel, and it chooses its kernels by vendor as well as by
instruction set: on AMD it runs one 256-bit kernel whatever it is told; on Intel it picks AVX-512
or AVX2 kernels, and their bits differ from AMD's (measured on a real Intel Xeon, 2026-12-02: the
base's training loss left the AMD machine's committed curve within 400 steps, under MKL's default
and under ``MKL_CBWR=AVX2`` alike; the forward-only feature encoding agreed). So the pinned levels
also set ``MKL_CBWR=COMPATIBLE``, MKL's conditional-numerical-reproducibility branch that gives the
same results on every x86-64 CPU, Intel or not, at a fixed thread count (every job sets its
threads). It costs time (the base's training ran 1.4x longer on the Intel machine; the harness
measures it); :func:`check` reads the branch MKL actually runs (``mkl_serv_cbwr_get``, exported by
torch's CPU library) and refuses another, and the fingerprint says ``mkl/compatible``, not the vendor.
Under ``off`` MKL runs natively and the fingerprint names the CPU vendor, so results of two vendors
are refused side by side instead of mixed (README, *Same bytes on every machine*).

NumPy's and SciPy's linear algebra is OpenBLAS (each wheel bundles one, built ``DYNAMIC_ARCH``),
which picks its kernels by CPU model at load time: SkylakeX kernels on an AVX-512 Intel Xeon,
Haswell ones on an AVX2 AMD EPYC. The fits (L-BFGS-B, least squares) then took other paths: on the
Intel machine the ceiling's law came out with other last digits than the committed AMD fit, and
with ``OPENBLAS_CORETYPE=Haswell`` byte for byte the committed one (2026-12-04). So the pinned
levels also name OpenBLAS's core (``Haswell`` for avx2, ``Nehalem`` -- SSE4.2 -- for default), read
when the library loads (NumPy's at its import, SciPy's at its first linear-algebra import); the
fingerprint records the core NumPy's OpenBLAS really runs and :func:`check` refuses another.
(x264's kernels are pinned where videos are encoded, :func:`visctx.synth.x264_options`.)
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

PIN_VAR = "VISCTX_CPU_PIN"
DEFAULT_LEVEL = "avx2"
# NumPy 2.x's x86 dispatch targets above AVX2 (X86_V3) are X86_V4 and the AVX512_* groups.
_NPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"
LEVELS: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "NPY_DISABLE_CPU_FEATURES": _NPY_AVX512, "MKL_CBWR": "COMPATIBLE",
             "OPENBLAS_CORETYPE": "Haswell"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "NPY_DISABLE_CPU_FEATURES": f"X86_V3 {_NPY_AVX512}",
                "MKL_CBWR": "COMPATIBLE", "OPENBLAS_CORETYPE": "Nehalem"},
}
# MKL's branch codes (mkl_cbwr.h), as mkl_serv_cbwr_get(MKL_CBWR_BRANCH) returns them
MKL_BRANCHES = {1: "off", 2: "auto", 3: "compatible", 4: "sse2", 6: "ssse3", 7: "sse4_1", 8: "sse4_2", 9: "avx",
                10: "avx2", 12: "avx512", 14: "avx512_e1"}
ALLOWED = (*LEVELS, "off")


class CpuPinError(ValueError):
    """The kernels in use are not the pinned ones; the message says which and how to fix it."""


def level(env: Mapping[str, str] = os.environ) -> str:
    value = env.get(PIN_VAR, DEFAULT_LEVEL)
    if value not in ALLOWED:
        raise CpuPinError(f"{PIN_VAR}={value!r}; allowed: {', '.join(ALLOWED)}")
    return value


def pin_environment(env: dict[str, str] | None = None) -> str:
    """Set the pinned level's variables in ``env`` (``os.environ``) unless already set; the level."""
    env = os.environ if env is None else env
    lv = level(env)
    for key, value in LEVELS.get(lv, {}).items():
        env.setdefault(key, value)
    return lv


def _numpy_dispatch() -> list[str]:
    """The dispatch targets NumPy's kernels use in this process (enabled on this CPU, not disabled)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]


def cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def openblas_core() -> str | None:
    """The core whose kernels NumPy's OpenBLAS runs in this process (``Haswell`` under the pin), or
    None where NumPy is not built with the scipy-openblas wheel library (another BLAS)."""
    import ctypes
    import glob

    import numpy as np

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas64_*.so"))
    try:
        get = ctypes.CDLL(libs[0]).scipy_openblas_get_corename64_
    except (IndexError, OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    return get().decode()


def mkl_branch() -> str | None:
    """The code branch MKL computes with in this process (``compatible`` under the pin), or None
    where torch's library does not export MKL's query (a build without MKL)."""
    import ctypes

    import torch as _torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(_torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    code = get(1)  # MKL_CBWR_BRANCH
    return MKL_BRANCHES.get(code, str(code))


def fingerprint(torch: bool = True) -> dict[str, Any]:
    """What decides the bits of this process's results, the same on every machine under one pin:
    the pin, NumPy's dispatch targets and, with ``torch``, torch's kernel capability and the BLAS
    path (MKL's compatible branch, or the vendor whose kernels MKL picked). Recorded in every model, training summary, evaluation and fit;
    compared by :func:`require_same`. ``torch=False`` for NumPy-only work (the fits)."""
    fp: dict[str, Any] = {"pin": level(), "numpy": _numpy_dispatch()}
    if (core := openblas_core()) is not None:
        fp["openblas"] = core
    if torch:
        import torch as _torch

        branch = mkl_branch()
        blas = "mkl/compatible" if branch == "compatible" else f"mkl/{cpu_vendor()}"
        fp |= {"torch": _torch.backends.cpu.get_cpu_capability(), "blas": blas}
    return fp


def check(torch: bool = True) -> dict[str, Any]:
    """:func:`fingerprint`, after checking that the libraries compute at the pinned level."""
    fp = fingerprint(torch)
    lv = fp["pin"]
    if lv == "off":
        return fp
    want = LEVELS[lv]
    torch_want = want["ATEN_CPU_CAPABILITY"].upper()
    env_cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if env_cap is not None and env_cap.lower() != want["ATEN_CPU_CAPABILITY"]:
        raise CpuPinError(f"ATEN_CPU_CAPABILITY={env_cap} contradicts {PIN_VAR}={lv} (torch kernels "
                          f"{torch_want}); unset one of them, or {PIN_VAR}=off to compute natively")
    if torch and fp["torch"] != torch_want:
        raise CpuPinError(f"torch computes with {fp['torch']} kernels, but {PIN_VAR}={lv} needs {torch_want}: "
                          f"torch ran a tensor op before visctx was imported (import visctx first), or this "
                          f"CPU lacks {torch_want}")
    env_mkl = os.environ.get("MKL_CBWR")
    if env_mkl is not None and env_mkl.upper() != want["MKL_CBWR"]:
        raise CpuPinError(f"MKL_CBWR={env_mkl} contradicts {PIN_VAR}={lv} (MKL_CBWR={want['MKL_CBWR']}: the same "
                          f"BLAS bits on Intel and AMD); unset one of them, or {PIN_VAR}=off to compute natively")
    branch = mkl_branch() if torch and fp["blas"] != "mkl/compatible" else None
    if branch is not None:
        raise CpuPinError(f"MKL computes with its {branch!r} branch, but {PIN_VAR}={lv} needs 'compatible' "
                          f"(MKL_CBWR=COMPATIBLE): torch ran a matrix product before visctx was imported "
                          f"(import visctx first)")
    core, env_core = fp.get("openblas"), os.environ.get("OPENBLAS_CORETYPE")
    if env_core is not None and env_core.lower() != want["OPENBLAS_CORETYPE"].lower():
        raise CpuPinError(f"OPENBLAS_CORETYPE={env_core} contradicts {PIN_VAR}={lv} (OpenBLAS's "
                          f"{want['OPENBLAS_CORETYPE']} kernels); unset one of them, or {PIN_VAR}=off to compute natively")
    if core is not None and core.lower() != want["OPENBLAS_CORETYPE"].lower():
        raise CpuPinError(f"numpy's OpenBLAS computes with its {core} kernels, but {PIN_VAR}={lv} needs "
                          f"{want['OPENBLAS_CORETYPE']}: numpy was imported before visctx (import visctx first, or "
                          f"start with OPENBLAS_CORETYPE={want['OPENBLAS_CORETYPE']})")
    disabled = set(want["NPY_DISABLE_CPU_FEATURES"].split())
    leaked = sorted(disabled & set(fp["numpy"]))
    if leaked:
        raise CpuPinError(f"numpy dispatches to {', '.join(leaked)}, which {PIN_VAR}={lv} switches off: numpy was "
                          f"imported before visctx (import visctx first, or start with "
                          f"NPY_DISABLE_CPU_FEATURES={want['NPY_DISABLE_CPU_FEATURES']!r})")
    return fp


def require_same(recorded: Mapping[str, Any] | None, current: Mapping[str, Any], what: str) -> None:
    """Refuse to continue or evaluate ``what`` (a model dir, a checkpoint) made under other kernels:
    its numbers would be neither this machine's nor the recorded one's. Records made before
    fingerprints existed (None) are accepted."""
    if recorded is None:
        return
    if dict(recorded) != dict(current):
        diff = {k: (recorded.get(k), current.get(k)) for k in sorted({*recorded, *current})
                if recorded.get(k) != current.get(k)}
        raise CpuPinError(f"{what} was made with other CPU kernels than this process has "
                          f"({'; '.join(f'{k}: {a} there, {b} here' for k, (a, b) in diff.items())}); "
                          f"rerun it here (or on a machine of the recorded kind)")


def describe_host() -> dict[str, Any]:
    """The CPU itself (vendor, model, instruction sets): for the performance harness and logs,
    never for artifacts (they must not depend on the machine)."""
    info: dict[str, Any] = {"vendor": cpu_vendor(), "model": None, "flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and info["model"] is None:
                    info["model"] = value.strip()
                elif key == "flags" and not info["flags"]:
                    info["flags"] = value.split()
    except OSError:
        pass
    isa = [f for f in info.pop("flags") if f.startswith(("avx", "sse4", "fma", "amx"))]
    info["isa"] = sorted(isa)
    info["cpus"] = os.cpu_count()
    info["python"] = sys.version.split()[0]
    return info
