"""The lm-evaluation-harness adapter's control logic (framework/harness), with plain-function engines.

The real engines are exercised in tests/integration/test_harness.py; here ``generate`` and ``score``
are small deterministic functions, so what is checked is the adapter's own bookkeeping: stop strings,
token budgets, context truncation, how log-likelihoods are summed and windowed.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from framework.config import ConfigError, to_config
from framework.data.prompts import DataError
from framework.harness.lm import EngineLM
from framework.harness.tasks import flat_metrics, is_prompt_source, prompt_source_task, task_name
from tests.unit.mapping_fixtures import tokenizer_dir


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tokenizer_dir("sp_prefix"))  # has a BOS and a chat template


def _request(*args):
    return SimpleNamespace(args=args)


def _echo_lm(tokenizer, calls, max_length=64, replies=None):
    """generate: replies[i] text for the i-th prompt (else the text "7. Answer: 7\\n\\nmore");
    score: logprob -0.5 per token, rank 1 except for token ids that are odd (rank 2)."""

    def generate(prompts_ids, max_tokens):
        calls.append(("generate", [list(p) for p in prompts_ids], max_tokens))
        texts = replies or ["7. Answer: 7\n\nmore"] * len(prompts_ids)
        return [tokenizer.encode(t, add_special_tokens=False)[:max_tokens] for t in texts]

    def score(pairs):
        calls.append(("score", [(list(c), list(x)) for c, x in pairs]))
        return [([-0.5] * len(x), [2 if t % 2 else 1 for t in x]) for _, x in pairs]

    return EngineLM(tokenizer, generate, score, max_length=max_length, max_gen_toks=16)


def test_generation_is_cut_at_the_first_stop_string_and_grouped_by_budget(tokenizer):
    calls: list = []
    lm = _echo_lm(tokenizer, calls)
    out = lm.generate_until([
        _request("Compute 3 + 4.", {"until": ["\n\n"], "max_gen_toks": 32}),
        _request("Compute 1 + 6.", {"until": "Answer"}),  # a single string, the adapter's default budget
        _request("Compute 2 + 5.", {"until": ["\n\n"], "max_gen_toks": 32}),
    ])  # fmt: skip
    assert out[0] == out[2] and "more" not in out[0] and out[0].startswith("7")
    assert "Answer" not in out[1]
    assert sorted(c[2] for c in calls) == [16, 32]  # one engine call per distinct budget
    assert [len(c[1]) for c in sorted(calls, key=lambda c: c[2])] == [1, 2]


def test_a_rendered_chat_gets_no_second_bos_and_a_long_context_keeps_its_end(tokenizer):
    calls: list = []
    lm = _echo_lm(tokenizer, calls, max_length=40)
    chat = lm.apply_chat_template([{"role": "user", "content": "Compute 3 + 4."}])
    assert chat.startswith(tokenizer.bos_token)
    ids = lm.tok_encode(chat)
    assert ids.count(tokenizer.bos_token_id) == 1
    long_text = " ".join(["word"] * 200)
    lm.generate_until([_request(long_text, {"max_gen_toks": 8})])
    sent = calls[-1][1][0]
    assert len(sent) == 40 - 8 and sent == lm.tok_encode(long_text)[-32:]


def test_loglikelihood_sums_the_continuation_and_is_greedy_only_when_every_token_ranks_first(tokenizer):
    calls: list = []
    lm = _echo_lm(tokenizer, calls)
    even = next(t for t in range(10, 200) if t % 2 == 0 and tokenizer.decode([t]).strip())
    odd = next(t for t in range(11, 200) if t % 2 == 1 and tokenizer.decode([t]).strip())
    got = lm._loglikelihood_tokens([(("a", "b"), [5, 6], [even, even]), (("a", "c"), [5, 6], [even, odd])])
    assert got == [(-1.0, True), (-1.0, False)]
    assert calls[-1][1] == [([5, 6], [even, even]), ([5, 6], [even, odd])]
    # an over-long pair is cut from the left and keeps its whole continuation
    lm._loglikelihood_tokens([(("a", "b"), list(range(100)), [even] * 3)])
    context, continuation = calls[-1][1][0]
    assert continuation == [even] * 3 and len(context) + 3 == 64 and context[-1] == 99


def test_rolling_loglikelihood_scores_every_token_once_within_the_context(tokenizer):
    calls: list = []
    lm = _echo_lm(tokenizer, calls, max_length=16)
    text = " ".join(f"w{i}" for i in range(40))
    (total,) = lm.loglikelihood_rolling([_request(text)])
    n = len(lm.tok_encode(text, add_special_tokens=False))
    pairs = calls[-1][1]
    assert sum(len(x) for _, x in pairs) == n and total == pytest.approx(-0.5 * n)
    assert all(len(c) + len(x) <= 16 and len(c) >= 1 for c, x in pairs)
    assert pairs[0][0] == [lm.prefix_token_id]


def test_a_jsonl_task_is_judged_by_answer_extraction_not_exact_match(tmp_path):
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "messages": [{"role": "user", "content": "2+2?"}], "answer": "4"},
        {"id": "b", "messages": [{"role": "user", "content": "10*10?"}], "answer": "#### 100"},
    ]))  # fmt: skip
    assert is_prompt_source(str(path)) and is_prompt_source("zoo:arith") and not is_prompt_source("gsm8k")
    assert task_name(str(path)) == "file_held" and task_name("zoo:arith") == "zoo_arith"
    task = prompt_source_task(str(path), limit=None, seed=0, max_gen_toks=32)
    docs = list(task["custom_dataset"]()["test"])
    assert [d["answer"] for d in docs] == ["4", "#### 100"]
    judge = task["process_results"]
    assert judge(docs[0], ["It is 4."])["accuracy"] == 1.0
    assert judge(docs[0], ["The answer is \\boxed{4}"])["accuracy"] == 1.0
    assert judge(docs[0], ["4 is not it; the answer is 5"])["accuracy"] == 0.0
    assert judge(docs[1], ["so 100."])["accuracy"] == 1.0


def test_the_max_task_is_a_harness_task_too():
    task = prompt_source_task("zoo:max", limit=8, seed=0, max_gen_toks=32)
    docs = list(task["custom_dataset"]()["test"])
    assert task["task"] == "zoo_max" and task["metadata"]["source"] == "zoo:max" and len(docs) == 8
    assert all(d["question"].startswith("Find the largest of ") for d in docs)
    assert task["process_results"](docs[0], [f"Answer: {docs[0]['answer']}"])["accuracy"] == 1.0


def test_a_multi_turn_or_unanswered_record_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "2+2?"}], "answer": "4"}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match="single-turn"):
        prompt_source_task(str(path), limit=None, seed=0, max_gen_toks=32)


def test_flat_metrics_keep_numbers_and_drop_stderr_and_counts():
    results = {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                         "sample_len": 8}, "zoo_arith": {"accuracy,none": 0.5}}  # fmt: skip
    assert flat_metrics(results) == {
        "harness/gsm8k/exact_match_strict-match": 0.25,
        "harness/zoo_arith/accuracy": 0.5,
    }


def test_harness_config_is_checked_at_start_up():
    assert to_config({"harness": {"tasks": ["zoo:arith"]}}).harness.limit == 128
    with pytest.raises(ConfigError) as info:
        to_config({"harness": {"tasks": ["zoo:arith"], "limit": 0}})
    assert info.value.key == "harness.limit"
