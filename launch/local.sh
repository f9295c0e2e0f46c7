#!/usr/bin/env bash
# Run tokenbridge on this one machine. Starts nothing extra: with no cluster.address and no RAY_ADDRESS
# the trainer starts a private loopback Ray itself; every argument is a Hydra override, passed as is.
#
#   launch/local.sh                                          # the CPU demo recipe
#   launch/local.sh pair=qwen3_8b_to_llama3.2_1b cluster=gpu_8x_disaggregated trainer.steps=500
#   launch/local.sh --cfg job                                # print the composed config, run nothing
#
# Environment: TOKENBRIDGE_PYTHON (interpreter; default: the repo's .venv, else python3),
# WANDB_MODE (default offline), RAY_ADDRESS (if set, joins that running Ray cluster instead).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

python_bin="${TOKENBRIDGE_PYTHON:-}"
if [[ -z "${python_bin}" ]]; then
  if [[ -x "${repo_root}/.venv/bin/python" ]]; then
    python_bin="${repo_root}/.venv/bin/python"
  else
    python_bin="python3"
  fi
fi

export WANDB_MODE="${WANDB_MODE:-offline}"
exec "${python_bin}" -m framework.train "$@"
