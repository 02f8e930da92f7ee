"""The peer benchmark's glue: llama-bench rows get llama-bench's names, driver runs summarize to median/min/max,
a missing peer says how to install it, a failing peer is skipped with its reason while the others' rows are kept,
and the machine report never fails on a missing package."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import run_peers, weights
from bench.peers import from_driver_runs, llama_cpp, optimum_ort, ort_genai, ov_genai, result


def test_llama_bench_rows_keep_llama_bench_names():
    assert llama_cpp.test_name({"n_prompt": 128, "n_gen": 0, "n_depth": 0}) == "pp128"
    assert llama_cpp.test_name({"n_prompt": 0, "n_gen": 64, "n_depth": 0}) == "tg64"
    assert llama_cpp.test_name({"n_prompt": 0, "n_gen": 64, "n_depth": 128}) == "tg64 @ d128"


def test_driver_runs_summarize_per_prompt_length():
    runs = [{"prompt_len": 8, "ttft_ms": t, "prefill_tok_s": 8e3 / t, "decode_tok_s": d} for t, d in ((100, 9), (200, 11), (400, 10))]
    pp, tg = from_driver_runs("peer", "int4", 1, [8], 4, runs, "n")
    assert (pp.test, pp.ttft_ms, pp.tokens_per_s, pp.tokens_per_s_min, pp.tokens_per_s_max) == ("pp8", 200, 40, 20, 80)
    assert (tg.test, tg.ttft_ms, tg.tokens_per_s, tg.tokens_per_s_min, tg.tokens_per_s_max) == ("tg4 @ d8", None, 10, 9, 11)


@pytest.mark.parametrize("peer, attr", [(llama_cpp, "BIN"), (ort_genai, "PYTHON"), (optimum_ort, "PYTHON"), (ov_genai, "PYTHON")])
def test_missing_peer_says_how_to_install(peer, attr, tmp_path, monkeypatch):
    monkeypatch.setattr(peer, attr, tmp_path / "absent")
    ok, reason = peer.available()
    assert not ok and "bench/setup_peers.sh" in reason


def fake_peer(name: str, *, available=(True, "here"), fails: Exception | None = None):
    def run(prompt_lens, gen_len, repeat, threads, workdir):
        if fails:
            raise fails
        return [result(name, "w", 1, f"pp{prompt_lens[0]}", [10.0])]

    return SimpleNamespace(available=lambda: available, run=run, FIX=f"bash bench/setup_peers.sh {name}")


def test_a_failing_peer_is_reported_and_the_others_kept(tmp_path, capsys):
    crash = subprocess.CalledProcessError(1, ["/v/bin/python", "-m", "bench.peers.hf_checkpoint", "out"],
                                          stderr=b"Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'torch'\n")
    peers = {"first": fake_peer("first"), "broken": fake_peer("broken", fails=crash),
             "absent": fake_peer("absent", available=(False, "x is missing; fix: bash bench/setup_peers.sh absent")),
             "last": fake_peer("last")}
    args = SimpleNamespace(prompt_lens=[8], gen_len=4, repeat=1, threads=1, workdir=tmp_path)
    status, rows = run_peers.run_peers(peers, args)
    assert [r.system for r in rows] == ["first", "last"]
    assert "seconds" in status["first"] and "seconds" in status["last"]
    assert "No module named 'torch'" in status["broken"]["error"] and "setup_peers.sh broken" in status["broken"]["error"]
    assert not status["absent"]["available"]
    err = capsys.readouterr().err.splitlines()
    skipped = [line for line in err if line.startswith("skipped")]
    assert len(skipped) == 2 and all("fix: bash bench/setup_peers.sh" in line for line in skipped)
    assert "`python -m bench.peers.hf_checkpoint ...` exited 1" in skipped[0]


def test_machine_report_survives_missing_packages(monkeypatch):
    def version(name):
        if name == "torch":
            raise PackageNotFoundError(name)
        return "1.0"

    monkeypatch.setattr(run_peers, "version", version)
    report = run_peers.machine()
    assert report["system_packages"] == {"torch": None, "transformers": "1.0", "onnxruntime": "1.0"}


def test_real_gguf_is_named_by_one_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(weights.ENV, raising=False)
    assert weights.real_gguf() == weights.REPO / "weights" / weights.NAME
    monkeypatch.setenv(weights.ENV, str(tmp_path / "q.gguf"))
    assert weights.real_gguf() == tmp_path / "q.gguf"
    monkeypatch.setattr(llama_cpp, "BIN", tmp_path)
    for tool in ("llama-bench", "llama-quantize"):
        (tmp_path / tool).touch()
    ok, reason = llama_cpp.available()
    assert not ok and str(tmp_path / "q.gguf") in reason and "fetch_real_weights.sh" in reason


def cpu_switches(tmp_path, flags: str) -> list[str]:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"model name\t: test CPU\nflags\t\t: {flags}\n")
    setup = Path(__file__).resolve().parent.parent / "bench" / "setup_peers.sh"
    env = {**os.environ, "CPUINFO": str(cpuinfo)}
    out = subprocess.run(["bash", "-c", f"source {setup} && cpu_switches"], env=env, check=True, capture_output=True,
                         text=True).stdout
    return out.split()


def test_llama_cpp_build_takes_its_switches_from_cpuinfo_and_never_amx(tmp_path):
    # An Intel VM whose cpuid lists AMX that the hypervisor does not grant: -march=native dies at ldtilecfg.
    intel = cpu_switches(tmp_path, "fpu sse4_2 avx avx2 bmi2 fma f16c avx512f avx512vbmi avx512_vnni avx512_bf16 "
                                   "avx_vnni amx_tile amx_int8 amx_bf16")
    assert "-DGGML_NATIVE=OFF" in intel
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON"} <= set(intel)
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(intel)
    assert not any("AMX" in s and s.endswith("=ON") for s in intel)
    epyc = cpu_switches(tmp_path, "fpu sse4_2 avx avx2 bmi2 fma f16c")
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VNNI=OFF"} <= set(epyc)


def test_peer_results_render_as_edgeinfer_bench_records():
    """llama-bench's pp/tg tests of a peer become the pp+tg rows `edgeinfer bench` prints, through one record type."""
    from bench.peers import PeerResult, bench_records
    from edgeinfer.bench.results import render_markdown

    results = [PeerResult("llama.cpp", "Q4_0", 1017 * 2**20, "pp128", 95.0, 94.0, 96.0, None),
               PeerResult("llama.cpp", "Q4_0", 1017 * 2**20, "tg64 @ d128", 27.6, 27.0, 28.0, None),
               PeerResult("llama.cpp", "Q4_0", 1017 * 2**20, "tg64", 28.0, 27.5, 28.5, None)]
    [record] = bench_records(results, "AMD EPYC (2 cores, 24 GiB)")
    assert (record.test, record.prefill_tokens_per_s, record.decode_tokens_per_s) == ("pp128+tg64", 95.0, 27.6)
    row = render_markdown([record], by_system=True).splitlines()[-1]
    assert row.startswith("| llama.cpp | AMD EPYC") and "95.0 tok/s" in row and "27.6 tok/s" in row
