#!/usr/bin/env bash
# Install what has arrived of the GPU bundle (bench/gpu_bundle.py) on the GPU machine; run it
# from the repository root in every call that carries a part. It checks each part's sha256
# against gpu_bundle/MANIFEST.json (a missing or damaged part is named with the call that
# carries it), extracts every wheel whose bytes have all arrived, installs the new ones into
# /tmp/smallcls-site, and prints on stdout the lines the GPU check needs:
#
#   env_lines=$(bash bench/gpu_install.sh) && eval "$env_lines" && python3 -m bench.gpu_check
#
# Idempotent: wheels installed by an earlier call are skipped, so each call installs only what
# its part completed. Exit 3 when a part is damaged, 2 on bad usage or a missing manifest.
#
# Options: --bundle DIR (gpu_bundle)  --site DIR (/tmp/smallcls-site)  --work DIR
# (/tmp/smallcls-bundle, the extracted wheels)  --python PY (python3)  --no-pip (check and
# extract only)  --libs-from DIR (where the nvidia wheels lie; default: PY's site-packages).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=gpu_bundle
site=/tmp/smallcls-site
work=/tmp/smallcls-bundle
python=python3
use_pip=1
libs_from=""  # where the nvidia wheels are: default, the python's site-packages
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) bundle=$2; shift 2 ;;
    --site) site=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --no-pip) use_pip=0; shift ;;
    --libs-from) libs_from=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$repo"
mkdir -p "$work/installed" "$site"

if [ ! -f "$bundle/MANIFEST.json" ]; then
  echo "gpu-install: $bundle/MANIFEST.json is missing: send it with every part" >&2
  exit 2
fi
if [ "$use_pip" = 1 ]; then
  # The wheels are built for one CPython (the image's python3); another cannot load them.
  read -r got want < <("$python" -c 'import json, sys
print("%d.%d" % sys.version_info[:2], json.load(open(sys.argv[1]))["python_version"])' \
    "$bundle/MANIFEST.json")
  if [ "$got" != "$want" ]; then
    echo "gpu-install: $python is Python $got; the bundle's wheels are for $want: give --python" >&2
    exit 2
  fi
fi

# Check the parts, extract complete wheels not installed yet into $work/new (stdlib only).
rm -rf "$work/new"
set +e
PYTHONPATH="$repo" "$python" -m bench.gpu_bundle unpack --bundle "$bundle" --work "$work"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "gpu-install: nothing installed: fix the part named above and rerun that call" >&2
  exit "$rc"
fi

shopt -s nullglob
new=("$work"/new/*.whl)
if [ "${#new[@]}" -gt 0 ] && [ "$use_pip" = 1 ]; then
  # Each call installs into a fresh folder that is then merged into the site: pip --target
  # skips (or, with --upgrade, replaces) a top-level folder that exists already, which would
  # lose files of namespace packages (opentelemetry, zope) and of bin/ across calls.
  stage=$(mktemp -d "$work/stage.XXXXXX")
  started=$SECONDS
  "$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$stage" "${new[@]}"
  moved=()
  for entry in "$stage"/* "$stage"/.[!.]*; do
    name=$(basename "$entry")
    if [ -d "$entry" ] && [ -d "$site/$name" ]; then
      cp -a "$entry/." "$site/$name/"
    else
      rm -rf "${site:?}/$name"
      mv "$entry" "$site/"
    fi
    moved+=("$site/$name")
  done
  rm -rf "$stage"
  # --no-compile keeps the call short; the bytecode is written in the background instead, in a
  # session of its own that outlives the call, while the next part travels.
  setsid nohup "$python" -m compileall -q -j 0 "${moved[@]}" >/dev/null 2>&1 </dev/null &
  for pth in "$site"/*.pth; do
    echo "gpu-install: $(basename "$pth") is not read from PYTHONPATH: its package may not import" >&2
  done
  echo "gpu-install: installed ${#new[@]} wheels in $((SECONDS - started)) s into $site" >&2
fi
if [ "${#new[@]}" -gt 0 ]; then
  mv "${new[@]}" "$work/installed/"
fi

# Libraries onnxruntime-gpu's CUDA provider links to (cuBLAS, cuFFT, cuRAND, the runtime,
# cuDNN) live in the image's nvidia wheels, not on the loader's path: a process that has not
# imported torch (the service) would otherwise fall back to the CPU.
libs=$("$python" - "$libs_from" <<'EOF'
import glob, os, site, sys
dirs = []
for base in sys.argv[1:2] if sys.argv[1] else site.getsitepackages():
    for lib in sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib"))):
        if glob.glob(os.path.join(lib, "*.so*")):
            dirs.append(lib)
print(":".join(dirs))
EOF
)
echo "export PYTHONPATH=$repo:$site\${PYTHONPATH:+:\$PYTHONPATH}"
echo "export PATH=$site/bin:\$PATH"
# As the Makefile sets for every target: nothing there can reach a hub, and a look-up would
# only wait for its timeout.
echo "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 BENTOML_DO_NOT_TRACK=true"
if [ -n "$libs" ]; then
  echo "export LD_LIBRARY_PATH=$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
fi
