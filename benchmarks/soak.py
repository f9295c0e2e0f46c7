"""Soak: N steps with random actor faults (SIGKILL / SIGSTOP of engines, teacher replicas, mapping
workers), against a clean run of the same length on the same actors. Prints faults injected,
detected, recovered, samples lost and duplicated (targets: 0 and 0), the slowdown (target <= 3x),
each fault's detection time, and how long Ray / vLLM processes outlive the run (target <= 5 s).

    python benchmarks/soak.py [--steps 20] [--faults 4] [--seed 0] [--replicas 1]

``--replicas N`` runs N rollout engines, N teacher replicas and N mapping workers: a replacement
then starts in the background while its pool's other members take the work (design.md §7.2).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.integration.conftest import compose_config  # noqa: E402
from tests.integration.test_faults import FAST, TIMEOUTS, _ledger_ids, _signal_tree, expected_schedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--faults", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--replicas", type=int, default=1, help="members per pool (engines, teachers, mappers)"
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pick = random.Random(args.seed + 1)  # which member is hit (apart from rng: same plan for any --replicas)

    import ray

    from framework.actors.cluster import start_stages
    from framework.controller import Controller
    from framework.data import load_prompts
    from tokenbridge_zoo import resolve_model

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=8,
        log_to_driver=False,
    )
    cfg = compose_config([
        *FAST, f"trainer.steps={args.steps}", f"trainer.rollout_timeout_s={TIMEOUTS['rollout']}",
        f"trainer.teacher_timeout_s={TIMEOUTS['teacher']}", f"trainer.mapping_timeout_s={TIMEOUTS['mapping']}",
        f"trainer.health_timeout_s={TIMEOUTS['health']}", f"rollout.num_engines={args.replicas}",
        f"teacher.num_replicas={args.replicas}", f"mapping.num_workers={args.replicas}",
    ])  # fmt: skip
    stages = start_stages(cfg, resolve_model(cfg.pair.student), resolve_model(cfg.pair.teacher))
    train, _ = load_prompts(cfg.data.train, n=cfg.data.num_train, seed=0, split="train")
    evals, _ = load_prompts(cfg.data.eval, n=cfg.data.num_eval, seed=1, split="eval")
    expected = sorted(expected_schedule(cfg, args.steps))
    results = {}
    for name in ("clean", "faulty"):
        out = Path(tempfile.mkdtemp(prefix=f"tb-soak-{name}-"))
        cfg.trainer.output_dir = str(out)
        controller = Controller(cfg, stages, train, evals, out)
        injected: list[str] = []
        hits: list[float] = []
        if name == "faulty":
            at = sorted(rng.sample(range(1, args.steps - 1), args.faults))
            plan = [
                (
                    s,
                    rng.choice(["rollout", "teacher", "mapping"]),
                    rng.choice([signal.SIGKILL, signal.SIGSTOP]),
                )
                for s in at
            ]

            def inject(plan=plan, controller=controller, injected=injected, hits=hits):
                for step, role, sig in plan:
                    while controller.step < step:
                        time.sleep(0.05)
                    pool = stages.pool(role)
                    tree = ray.get(pool[pick.randrange(len(pool))].process_tree.remote(), timeout=180)
                    _signal_tree(tree, sig, whole_tree=sig == signal.SIGKILL)
                    injected.append(f"{role}:{signal.Signals(sig).name}")
                    hits.append(time.time())

            threading.Thread(target=inject, daemon=True).start()
        t0 = time.time()
        try:
            controller.run()
        except BaseException:
            print(
                "fault log (s after start, what):", [(round(t - t0, 1), w) for t, w in controller.faults.log]
            )
            raise
        wall = time.time() - t0
        trained = [s for ids in _ledger_ids(out) for s in ids]
        results[name] = dict(
            wall=wall, injected=injected, detected=sum(v for k, v in controller.faults.counts.items() if k != "requeued_samples"),
            recovered=sum(stages.restarts.values()), requeued=controller.faults.counts["requeued_samples"],
            lost=len(set(expected) - set(trained)), duplicated=len(trained) - len(set(trained)),
            detect_s=_detection_times(hits, controller.faults.log),
        )  # fmt: skip
        stages.restarts.clear()
        stages.await_started(controller.version)  # the next run starts with every pool whole
    ray.shutdown()
    leftover_n, leftover_s = _leftover_processes()
    f = results["faulty"]
    print(
        "\n| run | wall s | faults injected | detected | recovered (restarts) | re-queued samples | lost | duplicated |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['wall']:.1f} | {len(r['injected'])} {r['injected'] or ''} | {r['detected']} | "
              f"{r['recovered']} | {r['requeued']} | {r['lost']} | {r['duplicated']} |")  # fmt: skip
    print(
        f"\nslowdown faulty/clean: {f['wall'] / results['clean']['wall']:.2f}x (replicas per pool: {args.replicas})"
    )
    print(
        "seconds from each injection to its first detection: " + ", ".join(f"{d:.1f}" for d in f["detect_s"])
    )
    print(f"Ray / vLLM processes alive at ray.shutdown(): {leftover_n}; last one gone after {leftover_s:.1f} s")  # fmt: skip


def _detection_times(hits: list[float], log: list[tuple[float, str]]) -> list[float]:
    """For each injection, the time to the first fault the run recorded after it."""
    out = []
    for at in hits:
        after = [t for t, what in log if t >= at and what != "requeued_samples"]
        out.append(min(after) - at if after else float("nan"))
    return out


def _leftover_processes(limit_s: float = 60.0) -> tuple[int, float]:
    """How many Ray workers / vLLM engine processes outlive ``ray.shutdown()``, and for how long
    (polled every 0.1 s, at most ``limit_s``)."""
    import psutil

    me = os.getpid()

    def ours() -> list[int]:
        pids = []
        for p in psutil.process_iter(["pid", "cmdline", "name"]):
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
            if p.info["pid"] != me and any(
                k in text
                for k in ("ray::", "raylet", "gcs_server", "VLLM", "EngineCore", "default_worker.py")
            ):
                pids.append(p.info["pid"])
        return pids

    start, first = time.time(), len(ours())
    while ours() and time.time() - start < limit_s:
        time.sleep(0.1)
    return first, time.time() - start


if __name__ == "__main__":
    main()
