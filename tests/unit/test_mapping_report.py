"""`tokenbridge-pair` (framework.mapping.report)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from framework.mapping.report import main
from tests.unit.mapping_fixtures import tokenizer_dir


def run_json(capsys, *argv) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_cross_pair_report(capsys):
    code, report = run_json(
        capsys, "--student", tokenizer_dir("bl_group"), "--teacher", tokenizer_dir("sp_prefix")
    )
    assert code == 0
    assert report["identity"] is False
    assert report["student"]["kind"] == "bytelevel" and report["teacher"]["kind"] == "metaspace"
    for value in report["vocab"].values():
        assert 0.0 < value < 1.0
    assert set(report["texts"]) == {"prose", "multilingual", "code", "math", "all"}
    for stats in report["texts"].values():
        assert stats["masked_frac"] == 0.0  # the built-in texts survive re-tokenization exactly
        assert 0.0 < stats["one_to_one_chunk_frac"] <= 1.0
        assert stats["chunk_student_tokens"] >= 1.0 and stats["chunk_teacher_tokens"] >= 1.0
        assert 0.0 < stats["topk_exact_frac"] <= 1.0
    # digits: 3-digit groups vs single digits / SentencePiece pieces give longer chunks on math
    assert (
        report["texts"]["math"]["one_to_one_chunk_frac"] < report["texts"]["prose"]["one_to_one_chunk_frac"]
    )


def test_identity_report_and_texts_file(capsys, tmp_path: Path):
    texts = tmp_path / "texts.txt"
    texts.write_text("hello world 123\nsecond line\\nwith an escaped newline 東京\n", encoding="utf-8")
    path = tokenizer_dir("sp_plain")
    code, report = run_json(capsys, "--student", path, "--teacher", path, "--texts", str(texts))
    assert code == 0 and report["identity"] is True
    stats = report["texts"]["file"]
    assert stats["texts"] == 2
    assert stats["one_to_one_chunk_frac"] == 1.0 and stats["masked_frac"] == 0.0
    assert report["vocab"]["teacher_tokens_exact_projection"] == 1.0


def test_table_output(capsys):
    assert main(["--student", tokenizer_dir("sp_plain"), "--teacher", tokenizer_dir("bl_single")]) == 0
    out = capsys.readouterr().out
    assert "vocab overlap" in out and "multilingual" in out and "masked" in out


def test_unsupported_tokenizer_exit_code(capsys, tmp_path: Path):
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(tmp_path / "wp"))
    code, report = run_json(capsys, "--student", str(tmp_path / "wp"), "--teacher", tokenizer_dir("bl_group"))
    assert code == 2
    assert "unsupported tokenizer" in report["error"] and "WordPiece" in report["error"]
