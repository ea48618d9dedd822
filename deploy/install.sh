#!/usr/bin/env bash
# The one install step of tfstream, shared by the Makefile and the Dockerfiles:
#
#   bash deploy/install.sh PIP EXTRAS [--editable | --dependencies]
#
#   PIP         the pip of the target environment (.venv/bin/pip, /opt/venv/bin/pip)
#   EXTRAS      comma-separated extras of pyproject.toml: exactly one of cpu / gpu
#               (which TensorFlow wheel), plus dev for the test tools
#   --editable  install the project in development mode (pip install -e)
#   --dependencies  only the dependencies of the project and EXTRAS, read from
#               pyproject.toml: the images install them in a layer of their own,
#               so that a change to the code re-runs only the project's install
#
# Examples:
#   bash deploy/install.sh .venv/bin/pip 'cpu,dev' --editable   # make setup
#   bash deploy/install.sh /opt/venv/bin/pip gpu                  # deploy/Dockerfile.gpu
#
# It installs the project that contains this script, whatever the current directory.
set -euo pipefail

usage() {
  echo "usage: bash deploy/install.sh PIP EXTRAS [--editable | --dependencies]" >&2
  exit 2
}

[[ $# -eq 2 || $# -eq 3 ]] || usage
pip="$1"
extras="$2"
editable=()
dependencies_only=false
if [[ $# -eq 3 ]]; then
  case "$3" in
    --editable) editable=(-e) ;;
    --dependencies) dependencies_only=true ;;
    *) usage ;;
  esac
fi
[[ -n "$pip" && -n "$extras" ]] || usage
if [[ ! "$extras" =~ ^[A-Za-z0-9_,-]+$ ]]; then
  echo "install.sh: extras must be comma-separated names, got '$extras'" >&2
  exit 2
fi
# tensorflow-cpu and tensorflow[and-cuda] ship the same module: never both.
if [[ ",$extras," == *",cpu,"* && ",$extras," == *",gpu,"* ]]; then
  echo "install.sh: choose one of the cpu and gpu extras, not both" >&2
  exit 2
fi

# A relative pip path is taken from the caller's directory, before moving to the project.
if [[ "$pip" == */* ]]; then
  pip="$(cd "$(dirname "$pip")" && pwd)/$(basename "$pip")"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if $dependencies_only; then
  # The interpreter of the target environment where there is one (a venv's pip).
  python="$(dirname "$pip")/python"
  [[ -x "$python" ]] || python=python3
  mapfile -t requirements < <("$python" - "$extras" <<'PY'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1].split(","):
    wanted += project["optional-dependencies"][extra]
print("\n".join(wanted))
PY
  )
  "$pip" install --quiet "${requirements[@]}"
  "$pip" install --quiet --no-deps -r deploy/tracking-requirements.txt
  exit 0
fi

"$pip" install --quiet ${editable[@]+"${editable[@]}"} ".[$extras]"

# The tracker library, without its opencv-python requirement (see the file).
"$pip" install --quiet --no-deps -r deploy/tracking-requirements.txt

# Tests only: Model Garden's exporter, without its dependency pins (see the file).
if [[ ",$extras," == *",dev,"* ]]; then
  "$pip" install --quiet --no-deps -r deploy/model-garden-requirements.txt
fi
