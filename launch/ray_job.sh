#!/usr/bin/env bash
# Submit a tokenbridge run to a running Ray cluster with `ray job submit`. The repository (without
# .venv, outputs, wandb, .git) is uploaded as the job's working_dir, so the cluster runs this checkout;
# the cluster's image must already hold the dependencies (docker/Dockerfile.gpu).
#
#   launch/ray_job.sh [--no-wait] [--submission-id ID] [--dry-run] [--] [HYDRA OVERRIDES...]
#   RAY_ADDRESS=http://HEAD:8265 launch/ray_job.sh -- pair=qwen3_8b_to_llama3.2_1b cluster=gpu_8x_disaggregated
#
# Environment read here:
#   RAY_ADDRESS           the cluster's job-submission (dashboard) address, e.g. http://10.0.0.1:8265 (required)
#   WANDB_MODE            forwarded to the job (default offline)
#   WANDB_API_KEY, HF_TOKEN, WANDB_PROJECT, WANDB_ENTITY, WANDB_BASE_URL, HF_ENDPOINT, TOKENBRIDGE_HOME
#                         forwarded only when set; values of *KEY/*TOKEN/*SECRET/*PASSWORD are never printed
#   TOKENBRIDGE_JOB_ENV   extra variable names to forward, space-separated (e.g. "NCCL_DEBUG NCCL_IB_HCA")
#   TOKENBRIDGE_PYTHON    local interpreter used to write the runtime env (default python3)
#   TOKENBRIDGE_REMOTE_PYTHON  interpreter on the cluster (default python)
set -euo pipefail

usage() {
  sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  cat <<'USAGE'

Options:
  --no-wait             return once the job is submitted (follow it with: ray job logs -f ID)
  --submission-id ID    name the job (default: Ray generates one)
  --dry-run             print the command and the runtime env (secrets hidden), submit nothing
  --                    everything after it is passed to the trainer (Hydra overrides and flags)
USAGE
}

no_wait=0
dry_run=0
submission_id=""
while (($# > 0)); do
  case "$1" in
    --no-wait) no_wait=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --submission-id)
      if (($# < 2)); then echo "ray_job.sh: --submission-id needs a value" >&2; exit 2; fi
      submission_id="$2"; shift 2 ;;
    --submission-id=*) submission_id="${1#*=}"; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) echo "ray_job.sh: unknown option '$1' (trainer flags such as --cfg go after --)" >&2; exit 2 ;;
    *) break ;;
  esac
done

if [[ -z "${RAY_ADDRESS:-}" && "${dry_run}" -eq 0 ]]; then
  echo "ray_job.sh: set RAY_ADDRESS to the cluster's job-submission address, e.g. http://HEAD_IP:8265" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python_bin="${TOKENBRIDGE_PYTHON:-python3}"
remote_python="${TOKENBRIDGE_REMOTE_PYTHON:-python}"

forward=(WANDB_MODE WANDB_API_KEY WANDB_PROJECT WANDB_ENTITY WANDB_BASE_URL HF_TOKEN HF_ENDPOINT TOKENBRIDGE_HOME)
if [[ -n "${TOKENBRIDGE_JOB_ENV:-}" ]]; then
  read -r -a extra_names <<<"${TOKENBRIDGE_JOB_ENV}"
  forward+=("${extra_names[@]}")
fi

# The runtime env goes through a private file, not the command line (argv is visible to every user).
runtime_env_file="$(mktemp "${TMPDIR:-/tmp}/tokenbridge-runtime-env.XXXXXX")"
trap 'rm -f "${runtime_env_file}"' EXIT

"${python_bin}" - "${runtime_env_file}" "${repo_root}" "${dry_run}" "${forward[@]}" <<'PY'
import json
import os
import re
import sys

path, working_dir, dry_run, names = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:]
env = {name: os.environ[name] for name in names if os.environ.get(name)}
env.setdefault("WANDB_MODE", "offline")
# framework.train passes its own env vars to ray.init; let them merge with the job's instead of clashing
env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
runtime_env = {
    "working_dir": working_dir,
    "excludes": [".venv", "outputs", "wandb", ".git", "results", "**/__pycache__", ".pytest_cache",
                 ".mypy_cache", ".ruff_cache", "*.egg-info"],
    "env_vars": env,
}
with open(path, "w", encoding="utf-8") as f:
    json.dump(runtime_env, f)
if dry_run:
    secret = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
    shown = {k: ("<set, not shown>" if secret.search(k) else v) for k, v in env.items()}
    print("runtime env: " + json.dumps({**runtime_env, "env_vars": shown}, indent=2))
PY

cmd=(ray job submit --address "${RAY_ADDRESS:-<RAY_ADDRESS>}" --runtime-env "${runtime_env_file}")
if [[ -n "${submission_id}" ]]; then
  cmd+=(--submission-id "${submission_id}")
fi
if [[ "${no_wait}" -eq 1 ]]; then
  cmd+=(--no-wait)
fi
cmd+=(-- "${remote_python}" -m framework.train "$@")

if [[ "${dry_run}" -eq 1 ]]; then
  printf 'command:'
  printf ' %q' "${cmd[@]}"
  printf '\n'
  exit 0
fi
"${cmd[@]}"
