"""The peer benchmark's glue: llama-bench rows get llama-bench's names, driver runs summarize to median/min/max,
and a missing peer says how to install it."""

from __future__ import annotations

import pytest

from bench.peers import from_driver_runs, llama_cpp, optimum_ort, ort_genai


def test_llama_bench_rows_keep_llama_bench_names():
    assert llama_cpp.test_name({"n_prompt": 128, "n_gen": 0, "n_depth": 0}) == "pp128"
    assert llama_cpp.test_name({"n_prompt": 0, "n_gen": 64, "n_depth": 0}) == "tg64"
    assert llama_cpp.test_name({"n_prompt": 0, "n_gen": 64, "n_depth": 128}) == "tg64 @ d128"


def test_driver_runs_summarize_per_prompt_length():
    runs = [{"prompt_len": 8, "ttft_ms": t, "prefill_tok_s": 8e3 / t, "decode_tok_s": d} for t, d in ((100, 9), (200, 11), (400, 10))]
    pp, tg = from_driver_runs("peer", "int4", 1, [8], 4, runs, "n")
    assert (pp.test, pp.ttft_ms, pp.tokens_per_s, pp.tokens_per_s_min, pp.tokens_per_s_max) == ("pp8", 200, 40, 20, 80)
    assert (tg.test, tg.ttft_ms, tg.tokens_per_s, tg.tokens_per_s_min, tg.tokens_per_s_max) == ("tg4 @ d8", None, 10, 9, 11)


@pytest.mark.parametrize("peer, attr", [(llama_cpp, "BIN"), (ort_genai, "PYTHON"), (optimum_ort, "PYTHON")])
def test_missing_peer_says_how_to_install(peer, attr, tmp_path, monkeypatch):
    monkeypatch.setattr(peer, attr, tmp_path / "absent")
    ok, reason = peer.available()
    assert not ok and "bench/setup_peers.sh" in reason
