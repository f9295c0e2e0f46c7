"""Does a chain-task teacher learn *when* to recheck? Train fresh Llama-3-style teachers of several
depths on practice responses and probe the recheck decision.

    python benchmarks/recheck_probe.py [--layers 8 12 4] [--slip-rate 0.3] [--steps 4000]
        [--tokenizer DIR] [--device cuda|cpu]

A practice response (``framework.data.arith.practice_response``) states a wrong value at some steps,
then "Wait," and the step again; the wrong value is out of the loss, "Wait" is in it. A teacher that
only learns the average rate says "Wait" with p ≈ slip rate after every step; one that checks the
value it just read says it after a slip and not after a right value. The probe puts the first step of
256 held-out problems after the prompt, stated right or off by +1 / -1, and reads

    p("Wait" | "a op b = v.")   for v = right + 1, right - 1, right

every 500 steps. The zoo's teachers (4 layers, 1,150 steps at slip rate 0.15) gave the same p after a
slip as after a right value (README, the zoo). Training follows the zoo's recipe (AdamW 3e-3, batch
32, 20 warm-up steps, cosine to 10 %, the slip out of the loss, ``tokenbridge_zoo.training``).
The model is the zoo's teacher-llama3-chain at another depth (``make_config``, ``create_model``).
Thousands of steps of an 8-layer model take a GPU for minutes; 2 CPU cores far longer.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from framework.data.arith import make_problems, practice_response, verify
    from tokenbridge_zoo.models import create_model, make_config
    from tokenbridge_zoo.settings import ZooSettings
    from tokenbridge_zoo.training import (
        _lr_factor,
        collate,
        encode_examples,
        greedy_generate,
        recheck_probe,
        sft_loss,
    )

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", nargs="+", type=int, default=[8, 12, 4])
    p.add_argument("--slip-rate", type=float, default=0.3)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--tokenizer", default=None, help="a zoo tokenizer folder (default: the zoo's llama3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.tokenizer is None:
        from tokenbridge_zoo.build import tokenizer_path

        args.tokenizer = str(tokenizer_path("llama3"))
    dev = args.device
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    gen = GenerationConfig.from_pretrained(args.tokenizer)
    stop = list(gen.eos_token_id)
    train = make_problems(12_000, 0, "train", "chain")
    rng = random.Random("slips/0")
    responses = [practice_response(q, rng, args.slip_rate) for q in train]
    examples = encode_examples(tok, train, [t for t, _ in responses], stop, [s for _, s in responses])
    test = make_problems(128, 0, "test", "chain")

    for layers in args.layers:
        # the zoo's chain teacher (tokenbridge_zoo.settings) at another depth
        spec = replace(ZooSettings().model("teacher-llama3-chain"), num_layers=layers)
        special = {"bos_token_id": gen.bos_token_id, "eos_token_id": stop, "pad_token_id": gen.pad_token_id}
        model = create_model(make_config(spec, len(tok), special, 512), seed=0).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
        draw, t0 = random.Random(1), time.time()
        for step in range(args.steps):
            factor = _lr_factor(step, warmup=20, total=args.steps)  # the zoo's schedule
            for group in opt.param_groups:
                group["lr"] = 3e-3 * factor
            ids, mask, labels = (t.to(dev) for t in collate(draw.sample(examples, 32), tok.pad_token_id))
            loss = sft_loss(model, ids, mask, labels)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if (step + 1) % 500 == 0:
                print(f"layers {layers} slip {args.slip_rate} step {step + 1} loss {loss.item():.4f} "
                      f"p(Wait | +1, -1, right) {list(recheck_probe(model, tok).values())} {time.time() - t0:.0f} s", flush=True)  # fmt: skip
        answers = greedy_generate(model.cpu(), tok, test, stop, 128)
        right = sum(verify(a, q.answer) for a, q in zip(answers, test, strict=False))
        print(
            f"layers {layers}: greedy accuracy {right / len(answers):.3f} on {len(answers)} held-out problems"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
