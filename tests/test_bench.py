"""The profiler's timings are consistent, results round-trip as JSON, and results from two machines merge."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.bench.results import csv_text, load_results, markdown_table, save_json
from edgeinfer.bench.runner import bench
from edgeinfer.cli import main
from edgeinfer.errors import EdgeInferError


@pytest.fixture(scope="module")
def result(preset_pkg):
    return bench("cpu", str(preset_pkg), prompt_lens=(8, 32), gen_len=6, repeat=2, warmup=1, progress=False)


def test_timings_are_consistent(result):
    for test in result["tests"]:
        assert len(test["runs"]) == 2  # warm-up excluded
        for run in test["runs"]:
            assert run["ttft_s"] >= run["prefill_s"] > 0
            assert run["new_tokens"] == 6 and run["prompt_tokens"] == test["prompt_tokens"]
            assert run["decode_tokens_per_s"] == pytest.approx(5 / run["decode_s"])
        s = test["summary"]["decode_tokens_per_s"]
        assert s["min"] <= s["median"] <= s["max"]
    assert [p["context"] for p in result["sweep"]] == [128]  # 1024 does not fit the tiny package's 256
    assert result["model"]["random_weights"] and result["model"]["file_bytes"] > 0
    assert result["peak_rss_bytes"] > 0 and result["load_s"] >= result["session_s"] > 0


def test_json_round_trips(result, tmp_path):
    save_json(result, tmp_path / "r.json")
    assert load_results([tmp_path / "r.json"]) == [json.loads(json.dumps(result))]


def test_two_machines_merge_into_one_table(result, tmp_path):
    other = copy.deepcopy(result)
    other["device_description"] = "Snapdragon X Elite"
    other["tests"] = other["tests"][:1]
    save_json(result, tmp_path / "a.json")
    save_json(other, tmp_path / "b.json")
    table = markdown_table(load_results([tmp_path / "a.json", tmp_path / "b.json"]), extra=False)
    lines = table.splitlines()
    assert lines[0] == "| Device | Backend | Precision | TTFT | Prefill | Decode | Context Size | File Size |"
    assert len(lines) == 2 + 3 and "Snapdragon X Elite" in lines[-1]
    assert len(csv_text([result, other]).strip().splitlines()) == 1 + 3


def test_table_command_and_bad_files(result, tmp_path, capsys):
    save_json(result, tmp_path / "a.json")
    (tmp_path / "bad.json").write_text("{}")
    assert main(["table", str(tmp_path / "a.json")]) == 0
    assert "W4A16" in capsys.readouterr().out
    with pytest.raises(EdgeInferError, match="not an edgeinfer bench result"):
        load_results([tmp_path / "bad.json"])


def test_bench_cli_writes_every_format(preset_pkg, tmp_path):
    args = ["bench", "--model", str(preset_pkg), "--prompt-len", "8", "--gen-len", "4", "--repeat", "1",
            "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"), "--markdown", str(tmp_path / "r.md")]
    assert main(args) == 0
    assert load_results([tmp_path / "r.json"])[0]["settings"]["gen_len"] == 4
    assert (tmp_path / "r.csv").read_text().startswith("device,")
    assert "| Device |" in (tmp_path / "r.md").read_text()


def test_prompt_that_does_not_fit_is_refused(preset_pkg):
    with pytest.raises(EdgeInferError, match="does not fit"):
        bench("cpu", str(preset_pkg), prompt_lens=(250,), gen_len=10, repeat=1, progress=False)


def test_source_is_exported_once_into_the_cache(tmp_path, monkeypatch):
    from edgeinfer.export.cached import resolve_package

    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path))
    first = resolve_package("preset:tiny-llama", "cpu", "w4a16", 128, progress=False)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert resolve_package("preset:tiny-llama", "cpu", "w4a16", 128, progress=False) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp  # reused, not re-exported
    (first / "model.onnx.data").write_bytes(b"broken")
    resolve_package("preset:tiny-llama", "cpu", "w4a16", 128, progress=False)
    assert (first / "model.onnx.data").stat().st_size > 6  # a damaged cache entry is rebuilt


def test_file_sizes_read_in_the_unit_that_fits():
    from edgeinfer.bench.results import format_bytes

    assert [format_bytes(n) for n in (419167, 900 * 2**20, 1_160_000_000)] == ["409 KiB", "900 MiB", "1.08 GiB"]


def test_decode_at_depth_writes_the_cache_first(preset_pkg):
    """A host cache's never-written pages all read one shared zero page (fast, and not what a real conversation's
    prefill leaves): the depth sweep writes every page before it times decode."""
    from edgeinfer.bench.profiler import decode_at_depth
    from edgeinfer.sampler import GREEDY

    generator = edgeinfer.load(preset_pkg).generator(GREEDY)
    point = decode_at_depth(generator, depth=64, steps=2, repeat=1)
    assert point["context"] == 64 and point["decode_tokens_per_s"]["median"] > 0
    caches = generator.runner.cache_arrays()
    beyond = [c[..., 100:, :] for c in caches]  # slots no run wrote: past the depth and the steps
    assert all(np.all(b == np.float32(0.01).astype(b.dtype)) for b in beyond)
