#!/usr/bin/env bash
# Create or refresh .venv with the pinned dependencies (requirements.lock); a no-op in a second
# when nothing changed. torch is pinned to 2.13.0 (a CPU build here, the CUDA build on a cluster).
# uv installs the lock in ~45 s (bytecode compiled) where pip takes ~2 min; it reads pip's index settings (find-links,
# index URLs) from pip's own config, and pip is the fallback (VISCTX_INSTALLER=pip forces it).
# VISCTX_EXTRAS=cluster adds DeepSpeed in a second pass: an sdist that imports torch to build, so it
# is built against the installed torch (no build isolation, DS_BUILD_OPS=0: no CUDA ops here).
# VISCTX_EXTRAS=lmms adds lmms-eval (visctx.lmms) WITHOUT its requirements (~50, among them
# torchvision and av<16, which would replace the pinned torch and av), then the few its evaluation
# path imports (the extra's list in pyproject.toml); extras combine: VISCTX_EXTRAS=cluster,lmms.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.visctx-installed
want=$( (cat requirements.lock pyproject.toml; echo "extras=${VISCTX_EXTRAS:-}") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
target=(-c requirements.lock -e .)
extras=(-c requirements.lock -e ".[${VISCTX_EXTRAS:-}]")
nodeps=()  # installed with --no-deps, versions from the lock
case ",${VISCTX_EXTRAS:-}," in *,lmms,*) nodeps+=(lmms-eval) ;; esac
export DS_BUILD_OPS=0
pipcfg() { .venv/bin/python -m pip config get "global.$1" 2>/dev/null || true; }
with_uv() {
  .venv/bin/python -m pip install --quiet uv 2>/dev/null || return 1
  local args=(--index-strategy unsafe-best-match) u
  index=${PIP_INDEX_URL:-$(pipcfg index-url)}
  [ -z "$index" ] || args+=(--index-url "$index")
  for u in ${PIP_FIND_LINKS:-$(pipcfg find-links)}; do args+=(--find-links "$u"); done
  for u in ${PIP_EXTRA_INDEX_URL:-$(pipcfg extra-index-url)}; do args+=(--extra-index-url "$u"); done
  # --compile-bytecode: pip compiles at install, uv does not, and where PYTHONDONTWRITEBYTECODE is
  # set (this machine) every process would import torch + Lightning from source: 15 s instead of 8
  .venv/bin/uv pip install --quiet --compile-bytecode --python .venv/bin/python "${args[@]}" "${target[@]}" || return 1
  [ -z "${VISCTX_EXTRAS:-}" ] || .venv/bin/uv pip install --quiet --python .venv/bin/python "${args[@]}" \
    --compile-bytecode --no-build-isolation "${extras[@]}" || return 1
  [ ${#nodeps[@]} = 0 ] || .venv/bin/uv pip install --quiet --python .venv/bin/python "${args[@]}" \
    --compile-bytecode --no-deps -c requirements.lock "${nodeps[@]}"
}
if [ "${VISCTX_INSTALLER:-uv}" = pip ] || ! with_uv; then
  [ "${VISCTX_INSTALLER:-uv}" = pip ] || echo "setup: uv failed, installing with pip" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "${target[@]}"
  [ -z "${VISCTX_EXTRAS:-}" ] || .venv/bin/python -m pip install --quiet --no-build-isolation "${extras[@]}"
  [ ${#nodeps[@]} = 0 ] || .venv/bin/python -m pip install --quiet --no-deps -c requirements.lock "${nodeps[@]}"
fi
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
