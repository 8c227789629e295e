"""Same seed, same bytes on another CPU: the micro pipeline (data, base, arm, evaluation) run through
the project's own launch path (the ``visctx`` CLI and its preload server) on this machine, and as
on a machine whose best instruction set is the pinned one, gives identical bytes; with the pin
switched off the same run differs, so the test can fail.

The other machine is simulated by exporting the kernel level its hardware would give
(``ATEN_CPU_CAPABILITY``, ``NPY_DISABLE_CPU_FEATURES``, and on Intel MKL's instruction limit
``MKL_ENABLE_INSTRUCTIONS``) from outside, as its CPU would impose it. On an AVX-512 machine the
project's real pin (``avx2``) is tested; on an AVX2 machine, which has nothing above the real pin,
the same mechanism is tested one level down (``default``, the baseline kernels of a CPU without
AVX2). MKL's own pin (``MKL_CBWR=COMPATIBLE``) is tested where MKL has kernels to choose from: on
Intel (on AMD MKL runs one kernel whatever it is told, so there is nothing to simulate)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visctx import cpu

SRC = Path(__file__).resolve().parents[1] / "src"
ARMS = ("T2-M9-pool", "T4-M4-pool")
# what the tests set from outside; a value inherited from the test process must not leak in
CPU_VARS = ("ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "OPENBLAS_CORETYPE",
            cpu.PIN_VAR)
INTEL = cpu.cpu_vendor() == "GenuineIntel"


def native_capability() -> str:
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    env[cpu.PIN_VAR] = "off"
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def pin_under_test(native: str) -> str | None:
    """The project's pin where the CPU has more than it; else the level below, if the CPU has it."""
    if native.startswith("AVX512"):
        return cpu.DEFAULT_LEVEL
    if native == "AVX2":
        return "default"
    return None


def pipeline_script(root: Path) -> str:
    """The workflow's stages as its rules call them (CLI), at the smallest sizes that run each."""
    r = root
    small = "--hidden-size 16 --num-layers 1 --num-heads 2 --intermediate-size 32"
    train = (f"--train-json {r}/corpus/train.json --features-dir {r}/features/train --batch-size 4 --lr 3e-3 "
             f"--warmup-steps 1 --seed 0 --threads 1 --no-progress-bar")
    lines = [f"visctx synth --out-dir {r}/corpus --n-train 6 --n-eval 3 --seed 0 --seconds 12 --fps 2 --size 108 --max-side 6",
             f"visctx init-vision --out-dir {r}/vision --image-size 54 --patch-size 2 --hidden-size 16 --num-layers 1 "
             f"--num-heads 1 --intermediate-size 32 --seed 0"]
    for split in ("train", "eval"):
        lines += [
            f"visctx render --videos-json {r}/corpus/videos.json --video-root {r}/videos --split {split} --shard 0 "
            f"--n-shards 1 --manifest-out {r}/videos/{split}.json",
            f"visctx extract --corpus-json {r}/corpus/{split}.json --video-root {r}/videos --shard 0 --n-shards 1 "
            f"--out-npy {r}/frames/{split}/shard-000.npy --out-json {r}/frames/{split}/shard-000.json --fps 1.0 "
            f"--max-frames 8 --size 54",
            f"visctx encode --frames-npy {r}/frames/{split}/shard-000.npy --frames-json {r}/frames/{split}/shard-000.json "
            f"--vision-tower {r}/vision --out-npy {r}/features/{split}/shard-000.npy "
            f"--out-json {r}/features/{split}/shard-000.json --batch-size 16"]
    lines += [
        f"visctx init-llm --out-dir {r}/llm --corpus-jsons {r}/corpus/train.json {r}/corpus/eval.json --max-frames 8 "
        f"{small.replace('--num-heads 2', '--num-heads 2 --num-kv-heads 1')} --seed 0",
        f"visctx train --out-dir {r}/base --init {r}/llm --arms {' '.join(ARMS)} --steps 8 --log-dir {r}/logs/base "
        f"--ckpt-every 4 {train}",
        f"visctx train-arms --arms {ARMS[0]} --arms-dir {r}/arms --init {r}/base --steps 4 {train}",
        f"visctx evaluate-arms --arms {ARMS[0]} --arms-dir {r}/arms --eval-json {r}/corpus/eval.json "
        f"--features-dir {r}/features/eval --batch-size 8 --threads 1",
    ]
    return "set -e\n" + "\n".join(f"{ln} > /dev/null" for ln in lines) + "\n"


def run(root: Path, **env_overrides: str) -> dict[str, str]:
    """Run the pipeline in ``root`` with the preload server; digests of every product."""
    root.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    env |= {"VISCTX_PRELOAD": "1", "VISCTX_PRELOAD_IDLE": "20",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]), **env_overrides}
    proc = subprocess.run(["bash", "-c", pipeline_script(root)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".npy", ".mp4", ".safetensors"):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    ev = json.loads((root / f"arms/{ARMS[0]}/eval/synthetic.json").read_text())
    out["eval"] = json.dumps({k: v for k, v in ev.items() if k not in ("seconds", "model_dir")}, sort_keys=True)
    summary = json.loads((root / f"arms/{ARMS[0]}/model/train_summary.json").read_text())
    out["cpu"] = json.dumps(summary["cpu"], sort_keys=True)
    return out


def test_the_pin_gives_the_bytes_of_the_pinned_cpu(tmp_path):
    native = native_capability()
    pin = pin_under_test(native)
    if pin is None:
        pytest.skip(f"this CPU's torch kernels are {native}: no instruction set below it to simulate")
    # what a CPU whose best level is the pin computes with natively (MKL_CBWR is the project's, not the CPU's)
    other_cpu = {k: v for k, v in cpu.LEVELS[pin].items() if k != "MKL_CBWR"}
    if INTEL:
        other_cpu["MKL_ENABLE_INSTRUCTIONS"] = "AVX2" if pin == cpu.DEFAULT_LEVEL else "SSE4_2"

    here = run(tmp_path / "here", **{cpu.PIN_VAR: pin})  # the project sets the variables itself
    there = run(tmp_path / "there", **other_cpu, **{cpu.PIN_VAR: pin})
    control = run(tmp_path / "native", **{cpu.PIN_VAR: "off"})

    assert sum(k.endswith(".safetensors") for k in here) >= 4 and "eval" in here
    assert json.loads(here["cpu"])["torch"] == cpu.LEVELS[pin]["ATEN_CPU_CAPABILITY"].upper()
    assert here == there, [k for k in here if here[k] != there.get(k)]
    assert json.loads(control["cpu"])["torch"] == native
    trained = [k for k in here if k.endswith(".safetensors") or k == "eval"]
    assert any(control[k] != here[k] for k in trained), "native kernels gave the pinned bytes: the test cannot fail"
    assert json.loads(here["cpu"])["blas"] == "mkl/compatible"


@pytest.mark.skipif(not INTEL, reason="MKL runs one kernel on this CPU vendor whatever it is told: no other to simulate")
def test_the_mkl_pin_gives_the_bytes_of_an_intel_cpu_of_another_isa(tmp_path):
    """Intel's MKL picks its kernels by instruction set (its bits then differ from AMD's, too): under
    the pin a CPU limited to AVX2 computes this one's bytes; natively (torch and NumPy alike in both
    runs) only MKL's choice differs, and the bytes do."""
    limited = {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    assert run(tmp_path / "pinned", **{cpu.PIN_VAR: cpu.DEFAULT_LEVEL}) == \
        run(tmp_path / "pinned_avx2", **limited, **{cpu.PIN_VAR: cpu.DEFAULT_LEVEL})
    native = run(tmp_path / "native", **{cpu.PIN_VAR: "off"})
    native_avx2 = run(tmp_path / "native_avx2", **limited, **{cpu.PIN_VAR: "off"})
    assert json.loads(native["cpu"])["blas"] == "mkl/GenuineIntel"
    trained = [k for k in native if k.endswith(".safetensors") or k == "eval"]
    assert any(native[k] != native_avx2[k] for k in trained), "MKL's kernels gave the same bytes: the test cannot fail"


def test_a_job_refuses_kernels_other_than_the_pin(tmp_path):
    """torch told to use other kernels than the pin: the job stops with an error naming both."""
    code = "import visctx; from visctx import cpu; cpu.check()"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default", **{cpu.PIN_VAR: "avx2"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "contradicts VISCTX_CPU_PIN=avx2" in proc.stderr
    env = dict(os.environ, MKL_CBWR="AVX2", **{cpu.PIN_VAR: "avx2"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "MKL_CBWR=AVX2 contradicts" in proc.stderr


def test_mkl_computes_on_its_compatible_branch_and_a_late_pin_is_refused():
    """The test process imported visctx first: MKL runs the branch the pin asks for. A process whose
    torch multiplied matrices before the variable was set keeps MKL's native branch: refused."""
    assert cpu.mkl_branch() == "compatible" and cpu.fingerprint()["blas"] == "mkl/compatible"
    code = ("import os, torch; torch.ones(8, 8) @ torch.ones(8, 8); os.environ['MKL_CBWR'] = 'COMPATIBLE'; "
            "from visctx import cpu; print(cpu.mkl_branch()); cpu.check()")
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS}
    env |= {k: v for k, v in cpu.LEVELS["avx2"].items() if k != "MKL_CBWR"} | {cpu.PIN_VAR: "avx2"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout.strip() == "off", proc.stdout + proc.stderr
    assert "MKL computes with its 'off' branch" in proc.stderr


def test_a_model_made_with_other_kernels_is_refused():
    made = {"pin": "avx2", "numpy": ["X86_V3"], "torch": "AVX2", "blas": "mkl/GenuineIntel"}
    here = dict(made, blas="mkl/AuthenticAMD")
    cpu.require_same(made, dict(made), "m")  # same kernels: accepted
    cpu.require_same(None, here, "m")  # made before fingerprints existed: accepted
    with pytest.raises(cpu.CpuPinError, match=r"m was made with other CPU kernels.*blas: mkl/GenuineIntel there"):
        cpu.require_same(made, here, "m")


def test_pin_environment_keeps_explicit_values_and_rejects_unknown_levels():
    env = {cpu.PIN_VAR: "default", "ATEN_CPU_CAPABILITY": "avx2"}
    assert cpu.pin_environment(env) == "default"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"  # kept: check() then refuses the contradiction
    assert env["NPY_DISABLE_CPU_FEATURES"] == cpu.LEVELS["default"]["NPY_DISABLE_CPU_FEATURES"]
    assert cpu.pin_environment({cpu.PIN_VAR: "off"}) == "off"
    with pytest.raises(cpu.CpuPinError, match="VISCTX_CPU_PIN='avx512'; allowed: avx2, default, off"):
        cpu.pin_environment({cpu.PIN_VAR: "avx512"})



OPENBLAS_PROBE = (  # NumPy's OpenBLAS (a matrix product) and SciPy's (a least-squares solve), as the fits use them
    "import visctx, hashlib, numpy as np, scipy.linalg as sl; from visctx import cpu; fp = cpu.check(torch=False); "
    "r = np.random.default_rng(0); a = r.standard_normal((64, 96)); b = r.standard_normal((96, 48)); "
    "x = sl.lstsq(a, r.standard_normal(64))[0]; "
    "print(fp.get('openblas'), hashlib.sha256((a @ b).tobytes() + x.tobytes()).hexdigest())")


def openblas_run(**env_overrides: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS} | env_overrides
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", OPENBLAS_PROBE], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    core, digest = proc.stdout.split()
    return core, digest


def test_openblas_computes_with_the_pins_kernels():
    """NumPy's and SciPy's OpenBLAS pick kernels by CPU model (SkylakeX on an AVX-512 Xeon, Haswell
    on an AVX2 EPYC), and a least-squares solve then gives other bits, as the fits did. Under the
    pin: the bytes of a CPU whose own OpenBLAS core is the pin's; natively other bytes."""
    native = native_capability()
    pin = pin_under_test(native)
    if pin is None:
        pytest.skip(f"this CPU's torch kernels are {native}: no instruction set below it to simulate")
    core = cpu.LEVELS[pin]["OPENBLAS_CORETYPE"]
    here = openblas_run(**{cpu.PIN_VAR: pin})
    there = openblas_run(OPENBLAS_CORETYPE=core, **{cpu.PIN_VAR: pin})  # that CPU's own choice, from outside
    control = openblas_run(**{cpu.PIN_VAR: "off"})
    assert here == there and here[0].lower() == core.lower()
    assert control[1] != here[1], f"OpenBLAS's native {control[0]} kernels gave the pinned bytes: the test cannot fail"


def test_openblas_loaded_before_the_pin_is_refused():
    code = "import numpy; import visctx; from visctx import cpu; cpu.check(torch=False)"
    env = {k: v for k, v in os.environ.items() if k not in CPU_VARS} | {cpu.PIN_VAR: "default"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "numpy's OpenBLAS computes with its" in proc.stderr, proc.stderr[-2000:]
    env["OPENBLAS_CORETYPE"] = "SkylakeX"
    proc = subprocess.run([sys.executable, "-c", "import visctx; from visctx import cpu; cpu.check(torch=False)"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "OPENBLAS_CORETYPE=SkylakeX contradicts VISCTX_CPU_PIN=default" in proc.stderr


def test_x264_encodes_with_the_pins_kernels(tmp_path, monkeypatch):
    """x264 picks its SIMD kernels by CPU too, and they are not bit-exact: the default corpus's
    train/syn-00005 encodes to other bytes with AVX-512 kernels than with AVX2 ones, and with AVX2
    than with the baseline (the same decoded frames). Under the pin ``write_mp4`` gives the bytes of
    a CPU whose best kernels are the pin's (x264 told that CPU's flags); natively it differs, so the
    test can fail."""
    import av
    import numpy as np

    from visctx import synth
    from visctx.video import read_video

    native = native_capability()
    pin = pin_under_test(native)
    if pin is None:
        pytest.skip(f"this CPU's torch kernels are {native}: no instruction set below it to simulate")
    synth.make_corpus(tmp_path, n_train=6, n_eval=1, seed=0)  # each video its own stream: the default corpus's
    spec = next(v for v in synth.load_videos_json(tmp_path / "videos.json")["videos"]
                if v["video"] == "train/syn-00005.mp4")
    frames = synth.render_frames(spec)

    def encode(name: str, level: str) -> bytes:
        monkeypatch.setenv(cpu.PIN_VAR, level)
        synth.write_mp4(tmp_path / name, frames, spec["fps"])
        return (tmp_path / name).read_bytes()

    pinned, native_bytes = encode("pinned.mp4", pin), encode("native.mp4", "off")
    assert "x264-params" not in synth.x264_options()  # off: x264 detects the CPU's flags itself
    # the other CPU: a plain PyAV encode, x264 told the flags of a CPU whose best level is the pin's
    with av.open(str(tmp_path / "other.mp4"), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=int(spec["fps"]))
        st.width, st.height, st.pix_fmt, st.thread_count = frames.shape[2], frames.shape[1], "yuv420p", 1
        st.options = {"crf": "12", "preset": "veryfast", "x264-params": f"asm={synth.X264_ASM[pin]}"}
        for f in synth.rgb_to_yuv420p(frames):
            c.mux(st.encode(av.VideoFrame.from_ndarray(f, format="yuv420p")))
        c.mux(st.encode())
    assert (tmp_path / "other.mp4").read_bytes() == pinned
    assert native_bytes != pinned, "x264's native kernels gave the pinned bytes: the test cannot fail"
    a, b = read_video(tmp_path / "pinned.mp4", fps=None, max_frames=None), read_video(tmp_path / "native.mp4", fps=None,
                                                                                     max_frames=None)
    assert np.array_equal(a[0], b[0])  # other bits, the same pixels


def test_x264_refuses_a_pin_above_the_cpu(monkeypatch):
    from visctx import synth

    monkeypatch.setenv(cpu.PIN_VAR, "avx2")
    monkeypatch.setattr(cpu, "describe_host", lambda: {"isa": ["avx", "sse4_1", "sse4_2"]})
    with pytest.raises(cpu.CpuPinError, match=f"{cpu.PIN_VAR}=avx2.*no AVX2"):
        synth.x264_options()
    monkeypatch.setenv(cpu.PIN_VAR, "default")
    assert synth.x264_options()["x264-params"] == "asm=SSE2"
