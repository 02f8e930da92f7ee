"""`edgeinfer eval`: llama-perplexity's chunking and figures on tiny packages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeinfer.cli import main
from edgeinfer.errors import EvalError
from edgeinfer.eval import PackageLogits, evaluate

from .conftest import export_tiny

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def all_logits_fp32(qwen2_dir, tmp_path_factory):
    return export_tiny(qwen2_dir, tmp_path_factory.mktemp("eval") / "fp32-all", precision="fp32", all_logits=True)


def test_a_package_against_itself_agrees_fully(qwen2_fp32):
    report = evaluate(qwen2_fp32, TEXT, "fox", reference=qwen2_fp32, context=64, chunks=3, progress=False)
    assert report.scored_tokens == 3 * 31  # positions 32..62 of each 64-token chunk
    assert report.same_top_pct == 100.0 and report.kld_mean < 1e-9 and report.perplexity_ratio == pytest.approx(1.0)
    assert report.perplexity > 1


def test_one_token_at_a_time_scores_as_all_logits(qwen2_fp32, all_logits_fp32):
    ids = PackageLogits(qwen2_fp32).tokenize(TEXT)[:64]
    stepped = PackageLogits(qwen2_fp32).scored_logits(ids, 32)
    whole = PackageLogits(all_logits_fp32).scored_logits(ids, 32)
    assert stepped.shape == whole.shape == (31, whole.shape[1])
    np.testing.assert_allclose(stepped, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())


def test_kl_and_agreement_of_a_4_bit_package(qwen2_w4, all_logits_fp32):
    report = evaluate(qwen2_w4, TEXT, "fox", reference=all_logits_fp32, context=64, chunks=2, progress=False)
    assert 0 < report.kld_mean < 1 and 0 < report.same_top_pct <= 100
    assert report.kld_median <= report.kld_p99 <= report.kld_max


def test_a_text_too_short_for_the_chunks_says_what_to_do(qwen2_fp32):
    with pytest.raises(EvalError, match="fewer --chunks or a smaller --context"):
        evaluate(qwen2_fp32, "short text", "short", context=64, chunks=2, progress=False)


def test_cli_prints_the_table_and_writes_json(qwen2_fp32, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    assert main(["eval", str(qwen2_fp32), "--text", str(tmp_path / "t.txt"), "--context", "32", "--chunks", "2",
                 "--json", str(tmp_path / "r.json")]) == 0
    assert "| perplexity |" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["scored_tokens"] == 2 * 15


def test_several_packages_score_the_same_chunks_as_one(qwen2_fp32, qwen2_w4, all_logits_fp32):
    from edgeinfer.eval import compare

    both = compare([qwen2_w4, qwen2_fp32], TEXT, "fox", reference=all_logits_fp32, context=64, chunks=2, progress=False)
    alone = evaluate(qwen2_w4, TEXT, "fox", reference=all_logits_fp32, context=64, chunks=2, progress=False)
    assert both[0].kld_mean == pytest.approx(alone.kld_mean) and both[0].perplexity == pytest.approx(alone.perplexity)
    assert both[1].same_top_pct > both[0].same_top_pct - 1e-9  # the float package is the reference's twin


def test_batched_scoring_gives_the_decode_steps_rows_to_the_bit(qwen2_dir, tmp_path):
    """Blocks of 32 are batch invariant and decode runs with its padding row: one run over the scored half computes
    what 255 decode steps do (blocks of 128 are not batch invariant: there the two differ in the last bits)."""
    b32 = export_tiny(qwen2_dir, tmp_path / "b32", precision="w4a16", block_size=32)
    ids = PackageLogits(b32).tokenize(TEXT)[:64]
    stepped = PackageLogits(b32).scored_logits(ids, 32)
    batched = PackageLogits(b32, batched=True).scored_logits(ids, 32)
    assert batched.shape == stepped.shape == (31, stepped.shape[1])
    assert np.array_equal(batched, stepped)
    assert "scored in one run per chunk" in PackageLogits(b32, batched=True).description


def test_per_chunk_figures_add_up_to_the_whole(qwen2_w4, all_logits_fp32, capsys):
    report = evaluate(qwen2_w4, TEXT, "fox", reference=all_logits_fp32, context=64, chunks=3, batched=True)
    progress = capsys.readouterr().err.splitlines()
    assert len(progress) == 3 and f"this chunk: perplexity {report.per_chunk[2].perplexity:.4f}" in progress[2]
    assert [c.chunk for c in report.per_chunk] == [0, 1, 2]
    # equal chunks: the whole text's figures are the chunks' means (perplexity: of their logs)
    assert np.mean([c.same_top_pct for c in report.per_chunk]) == pytest.approx(report.same_top_pct)
    assert np.mean([c.kld_mean for c in report.per_chunk]) == pytest.approx(report.kld_mean)
    assert np.exp(np.mean(np.log([c.perplexity for c in report.per_chunk]))) == pytest.approx(report.perplexity)
    p, n = report.same_top_pct / 100, report.scored_tokens
    assert report.same_top_stderr_pct == pytest.approx(100 * np.sqrt(p * (1 - p) / (n - 1)))
    assert np.exp(report.ln_perplexity_ratio) == pytest.approx(report.perplexity_ratio)
    assert report.ln_perplexity_ratio_stderr > 0 and report.kld_stderr > 0
    tops = [c.same_top_pct for c in report.per_chunk]
    assert report.same_top_chunk_stderr_pct == pytest.approx(np.std(tops, ddof=1) / np.sqrt(3))
