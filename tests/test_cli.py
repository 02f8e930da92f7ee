"""The command line: one-line errors with exit code 2, --json output, devices, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from edgeinfer.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeinfer.cli", *args], capture_output=True, text=True, timeout=300)


def test_run_json_prints_one_object(qwen2_fp32, capsys):
    assert main(["run", str(qwen2_fp32), "hello", "--raw", "--temperature", "0", "--max-new-tokens", "5", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["token_ids"]) <= 5 and isinstance(payload["text"], str)
    assert payload["timings"]["ttft_s"] > 0 and "load_s" in payload["timings"]


def test_run_streams_text(preset_pkg, capsys):
    assert main(["run", str(preset_pkg), "Hi", "--temperature", "0", "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "TTFT" in captured.err


@pytest.mark.parametrize("args,message", [
    (["export", "/no/such/dir", "-o", "/no/such/out"], "does not exist"),
    (["run", "/no/such/pkg", "hi"], "does not exist"),
    (["run", "{pkg}", "hi", "--device", "tpu"], "unknown device"),
    (["run", "{pkg}", "hi", "--top-p", "2"], "top_p must be"),
    (["run", "{pkg}", "", "--raw"], "empty"),
    (["run", "{pkg}", "hi", "--device", "cuda"], "cuda"),
])
def test_errors_are_one_line(qwen2_fp32, capsys, args, message):
    args = [a.replace("{pkg}", str(qwen2_fp32)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeinfer: error:") and message in err and "\n" not in err


def test_devices_lists_every_backend(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("cpu", "cuda", "qnn", "openvino"))
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert rows["cpu"] == "available"
    # each OpenVINO device on a line of its own, available or not
    assert {"openvino:npu", "openvino:gpu", "openvino:cpu", "openvino:auto"} <= set(rows)


def test_ctrl_c_during_run_exits_cleanly(tmp_path):
    package = tmp_path / "p"
    assert run_cli("export", "preset:tiny-qwen2", "-o", str(package), "--context", "2048").returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "edgeinfer.cli", "run", str(package), "Hi", "--max-new-tokens", "2000", "--ignore-eos"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    process.stdout.read(1)  # generation has started
    os.kill(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "interrupted" in err and "Traceback" not in err


def test_export_cli_writes_a_package(tmp_path):
    result = run_cli("export", "preset:tiny-llama", "-o", str(tmp_path / "p"), "--context", "128")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "p" / "manifest.json").exists()
    again = run_cli("export", "preset:tiny-llama", "-o", str(tmp_path / "p"))
    assert again.returncode == 2 and "--force" in again.stderr


def test_run_json_reports_speculation(preset_pkg, capsys):
    prompt = "abc abc abc abc abc abc"
    for mode, name in ((["lookup"], "lookup"), (["off"], "off"), (["draft", str(preset_pkg)], "draft")):
        assert main(["run", str(preset_pkg), prompt, "--raw", "--temperature", "0", "--max-new-tokens", "12",
                     "--ignore-eos", "--json", "--speculate", *mode]) == 0
        timings = json.loads(capsys.readouterr().out)["timings"]
        assert timings["speculate"] == name and timings["new_tokens"] == 12
        assert timings["tokens_per_pass"] == (1.0 if name == "off" else timings["tokens_per_pass"]) >= 1.0
        assert (timings["proposed_tokens"] > 0) == (name != "off")
    assert main(["run", str(preset_pkg), prompt, "--speculate", "draft"]) == 2
    assert "draft PKG" in capsys.readouterr().err


def test_draft_max_caps_each_steps_proposals(preset_pkg, capsys):
    prompt = "abc abc abc abc abc abc abc abc"
    args = ["run", str(preset_pkg), prompt, "--raw", "--temperature", "0", "--max-new-tokens", "24", "--ignore-eos",
            "--json", "--speculate", "lookup"]
    per_step = {}
    for most in ("1", "6"):
        assert main([*args, "--draft-max", most]) == 0
        timings = json.loads(capsys.readouterr().out)["timings"]
        per_step[most] = timings["proposed_tokens"] / timings["forward_passes"]
    assert 0 < per_step["1"] <= 1 < per_step["6"] <= 6
    assert main([*args, "--draft-max", "0"]) == 2
    err = capsys.readouterr().err
    assert "--draft-max 0" in err and "Traceback" not in err
