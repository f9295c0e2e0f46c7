"""The pure pieces of benchmarks/opd_diagnostics.py: token classes, cosine, and the unbiasedness of
the sampled OPD gradient (every token enumerated and weighted by π gives the exact reverse-KL gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.unit.benchmark_module import load_benchmark

torch.set_num_threads(1)


diag = load_benchmark("opd_diagnostics")


def test_token_classes_of_a_worked_answer():
    # Llama-3-style pieces: digit groups alone, spaces separate, then a stop token with no bytes.
    pieces = [b"9", b" -", b" ", b"3", b" =", b" ", b"6", b".", b" ", b"6", b" +", b" ", b"14", b" =",
              b" ", b"20", b".", b" Answer", b":", b" ", b"20", b""]  # fmt: skip
    stop = [False] * (len(pieces) - 1) + [True]
    got = [diag.CLASSES[k] for k in diag.classify_tokens(pieces, stop)]
    expected = ["operand", "text", "text", "operand", "text", "text", "result", "text", "text", "operand",
                "text", "text", "operand", "text", "text", "result", "text", "text", "text", "text",
                "answer", "stop"]  # fmt: skip
    assert got == expected


def test_token_spanning_classes_takes_the_most_important_and_only_the_last_answer_counts():
    # "= 7" in one token is a result; an earlier "Answer: 3" is not the final answer.
    pieces = [b"Answer: 3", b" 2", b" + 5", b" = 7", b". Answer: 1", b"2"]
    got = [diag.CLASSES[k] for k in diag.classify_tokens(pieces, [False] * len(pieces))]
    assert got == ["operand", "operand", "operand", "result", "answer", "answer"]
    assert [diag.CLASSES[k] for k in diag.classify_tokens([b"", b"ok"], [False, False])] == ["text", "text"]


def test_class_stats_shares():
    codes = np.array([diag.ANSWER, diag.TEXT, diag.TEXT, diag.STOP])
    adv = np.array([-8.0, 1.0, -1.0, 0.0])
    stats = diag.class_stats(codes, adv)
    assert stats["answer"]["token_share"] == 0.25
    assert stats["answer"]["abs_mass_share"] == pytest.approx(0.8)
    assert stats["answer"]["neg_mass_share"] == pytest.approx(8 / 9)
    assert stats["answer"]["clamp_frac"] == 1.0
    assert stats["text"]["mean_adv"] == 0.0
    assert stats["result"]["tokens"] == 0
    assert stats["all"]["tokens"] == 4


def test_flat_cosine():
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    assert diag.flat_cosine(g, g) == pytest.approx(1.0)
    assert diag.flat_cosine(g, -g) == pytest.approx(-1.0)
    assert diag.flat_cosine(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 0.0
    assert diag.flat_cosine(g, torch.zeros_like(g)) == 0.0
    assert diag.samples_for_cosine(8, 0.9) == pytest.approx(8.0)


class _TinyRNN(torch.nn.Module):
    """Next-token logits from a one-layer RNN over the prefix (float64)."""

    def __init__(self, vocab: int, hidden: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, hidden, generator=g, dtype=torch.float64))
        self.rec = torch.nn.Parameter(0.5 * torch.randn(hidden, hidden, generator=g, dtype=torch.float64))
        self.out = torch.nn.Parameter(torch.randn(hidden, vocab, generator=g, dtype=torch.float64))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(self.rec.shape[0], dtype=torch.float64)
        rows = []
        for t in ids.tolist():
            h = torch.tanh(self.emb[t] + h @ self.rec)
            rows.append(h @ self.out)
        return torch.log_softmax(torch.stack(rows), dim=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_estimator_enumerated_over_the_vocabulary_is_the_exact_kl_gradient(seed):
    vocab, T = 11, 6
    model = _TinyRNN(vocab, 7, seed)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(100 + seed)
    prefix = torch.randint(0, vocab, (T,), generator=g)
    teacher = torch.log_softmax(2.0 * torch.randn(T, vocab, generator=g, dtype=torch.float64), dim=-1)

    student = model(prefix)  # [T, V]: log π(·|prefix_t)
    exact = diag.flat_grad(diag.exact_reverse_kl_loss(student, teacher, float(T)), params)

    student = model(prefix)
    adv = (teacher - student).detach()  # A(v) = log p_T(v) − log π(v) for every candidate token v
    weights = student.exp().detach()  # each candidate weighted by its sampling probability
    enumerated = diag.flat_grad(diag.sampled_opd_loss(student, adv, float(T), weights=weights), params)

    assert exact.norm() > 1e-3
    torch.testing.assert_close(enumerated, exact, rtol=1e-10, atol=1e-12)
    assert diag.flat_cosine(enumerated, exact) == pytest.approx(1.0, abs=1e-12)

    # Clamping the advantages biases the estimator (here the teacher is far enough for |A| > 1).
    student = model(prefix)
    clamped = diag.flat_grad(
        diag.sampled_opd_loss(student, adv, float(T), adv_clamp=1.0, weights=weights), params
    )
    assert (adv.abs() > 1.0).any()
    assert not torch.allclose(clamped, exact)


def test_one_sample_per_position_averages_to_the_exact_gradient():
    """Monte Carlo: the mean of many single-token estimates converges to the exact gradient."""
    vocab, T, draws = 5, 3, 4000
    model = _TinyRNN(vocab, 4, 7)
    params = list(model.parameters())
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, vocab, (T,), generator=g)
    teacher = torch.log_softmax(torch.randn(T, vocab, generator=g, dtype=torch.float64), dim=-1)
    student = model(prefix)
    exact = diag.flat_grad(diag.exact_reverse_kl_loss(student, teacher, float(T)), params)
    # One backward per vocabulary entry, then average over sampled tokens by counting.
    per_token = []
    for t in range(T):
        for v in range(vocab):
            student = model(prefix)
            lp = student[t, v]
            per_token.append(
                diag.flat_grad(diag.sampled_opd_loss(lp, (teacher[t, v] - lp).detach(), float(T)), params)
            )
    per_token_T_V = torch.stack(per_token).reshape(T, vocab, -1)
    probs = model(prefix).exp().detach()
    samples = torch.multinomial(probs, draws, replacement=True, generator=g)  # [T, draws]
    estimate = per_token_T_V[torch.arange(T)[:, None], samples].mean(dim=1).sum(dim=0)
    assert diag.flat_cosine(estimate, exact) > 0.98
