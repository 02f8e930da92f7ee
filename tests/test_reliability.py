"""Reliability: bad input gets one clear error, faults lose nothing, load and long runs stay right and flat.

An on-device runtime lives inside someone else's app: it must never crash it, leak, or corrupt its files.
Figures (inputs tried, faults injected, requests served, RSS slope) are printed: `pytest -s` shows them.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeinfer
from edgeinfer.errors import EdgeInferError, ExportError, GenerationError, PackageError, SamplingError, SourceError
from edgeinfer.export.atomic import STAGING_MARKER
from edgeinfer.export.exporter import export
from edgeinfer.export.options import ExportOptions
from edgeinfer.export.presets import PresetSource
from edgeinfer.package import describe_files
from edgeinfer.sampler import GREEDY, SamplingParams, logits_to_probs, sample

ROOT = Path(__file__).resolve().parents[1]
FIGURES: dict[str, object] = {}


def fast(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def figure(name: str, value) -> None:
    FIGURES[name] = value
    print(f"\n[reliability] {name}: {value}")


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


@pytest.fixture(scope="module")
def model(preset_pkg):
    """DeepSeek chat template over a byte tokenizer: ids 0-255 are bytes, everything above is a special token."""
    return edgeinfer.load(preset_pkg)


def special_ids(model) -> set[int]:
    return set(range(256, model.tokenizer.vocab_size))


# -- bad input ------------------------------------------------------------------------------------------------

SPECIAL_TEXTS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>",
                 "</think>", "<|im_start|>", "\ue000", "\ue001", "\ue0000\ue001", "{{ messages }}", "{% endfor %}"]
# Every code point, lone surrogates included (an app can hand them over from JS or Windows strings).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)  # rare in ANY_TEXT
PIECES = st.lists(st.one_of(ANY_TEXT, st.sampled_from(SPECIAL_TEXTS + ["\x00", "\x1b[2J", "\r\n", "\u202e"])),
                  max_size=6).map("".join)
HOSTILE_TEXT = st.one_of(PIECES, PIECES, PIECES, st.tuples(PIECES, SURROGATES, PIECES).map("".join))


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@fast(300)
@given(text=HOSTILE_TEXT)
def test_fuzzed_text_is_encoded_as_text_or_refused_clearly(model, text):
    FIGURES["fuzzed prompts"] = FIGURES.get("fuzzed prompts", 0) + 1
    template_specials = [i for i in model.encode_prompt("x") if i in special_ids(model)]
    if has_surrogate(text):
        FIGURES["fuzzed prompts with lone surrogates"] = FIGURES.get("fuzzed prompts with lone surrogates", 0) + 1
        with pytest.raises(GenerationError, match="surrogate") as caught:
            model.encode_prompt(text)
        one_line(caught.value)
        return
    plain = model.tokenizer.encode(text, parse_special=False, add_bos=False)
    assert not set(plain) & special_ids(model)  # special-token text the user typed stays text...
    assert model.tokenizer.decode(plain, skip_special=False) == text  # ...and comes back unchanged
    if not text.strip():
        with pytest.raises(GenerationError, match="empty"):
            model.generate(text)
        return
    ids = model.encode_prompt(text)
    assert [i for i in ids if i in special_ids(model)] == template_specials  # only the template's markup


GOOD_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": HOSTILE_TEXT})
BAD_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.one_of(st.text(max_size=5), st.none()), "content": st.one_of(st.none(), st.integers(), HOSTILE_TEXT)}),
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
)


@fast(120)
@given(messages=st.one_of(st.lists(GOOD_MESSAGE, min_size=1, max_size=4), st.lists(GOOD_MESSAGE, min_size=1, max_size=4),
                         HOSTILE_TEXT, st.lists(st.one_of(GOOD_MESSAGE, BAD_MESSAGE), max_size=3), st.none(), st.integers()),
       max_new_tokens=st.sampled_from([1, 2, 3] * 4 + [0, -1, "3", 2.5, True]),
       stop=st.one_of(st.just(()), st.just(()), st.just("\n"), st.lists(st.one_of(st.text(max_size=3), st.integers()), max_size=2)))
def test_fuzzed_chat_requests_generate_or_raise_one_clear_error(model, messages, max_new_tokens, stop):
    FIGURES["fuzzed chat requests"] = FIGURES.get("fuzzed chat requests", 0) + 1
    try:
        result = model.generate(messages, max_new_tokens=max_new_tokens, sampling=GREEDY, stop=stop)
    except EdgeInferError as exc:
        reasons = FIGURES.setdefault("fuzzed chat requests refused, by reason", {})
        reason = re.sub(r"\d+", "N", one_line(exc).split(":")[0].split(",")[0][:40])
        reasons[reason] = reasons.get(reason, 0) + 1
        return
    assert 0 <= len(result.token_ids) <= max_new_tokens
    FIGURES["fuzzed chat requests generated"] = FIGURES.get("fuzzed chat requests generated", 0) + 1
    assert result.finish_reason in ("eos", "stop_string", "length", "context")


def test_one_stop_string_is_not_split_into_letters(model):
    full = model.generate("Hi", max_new_tokens=12, sampling=GREEDY, ignore_eos=True)
    middle = len(full.text) // 2
    stop = full.text[middle : middle + 3]  # as letters, these would stop at the first of any of them
    assert len(stop) == 3
    cut = model.generate("Hi", max_new_tokens=12, sampling=GREEDY, ignore_eos=True, stop=stop)
    assert cut.finish_reason == "stop_string" and cut.text == full.text[: full.text.find(stop)]


def test_huge_prompts_are_refused_quickly(model):
    for prompt in ("x" * 1_000_000, [{"role": "user", "content": "日本" * 100_000}]):
        started = time.perf_counter()
        with pytest.raises(GenerationError, match="context") as caught:
            model.generate(prompt)
        one_line(caught.value)
        assert time.perf_counter() - started < 20
        chars = len(prompt) if isinstance(prompt, str) else len(prompt[0]["content"])
        figure(f"{chars}-character prompt refused in s", round(time.perf_counter() - started, 2))


ANY_VALUE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 300), st.none(),
                      st.booleans(), st.text(max_size=3), st.floats(min_value=0, max_value=2),
                      st.sampled_from([5e-324, 1e-300, 1e-30, 1e30, 1e300, np.float32(0.5)]))


@fast(300)
@given(temperature=ANY_VALUE, top_k=ANY_VALUE, top_p=ANY_VALUE, min_p=ANY_VALUE, repetition_penalty=ANY_VALUE,
       seed=st.one_of(st.none(), ANY_VALUE), scale=st.sampled_from([0.01, 1.0, 30.0]))
def test_any_sampling_parameters_are_valid_or_refused(temperature, top_k, top_p, min_p, repetition_penalty, seed, scale):
    """Extends test_sampler.py: any value of any type is refused with SamplingError, or samples a valid id."""
    FIGURES["fuzzed sampling settings"] = FIGURES.get("fuzzed sampling settings", 0) + 1
    try:
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    except SamplingError as exc:
        one_line(exc)
        return
    logits = np.random.default_rng(0).standard_normal(272).astype(np.float32) * scale
    history = np.array([1, 5, 5, 200])
    token = sample(logits, params, np.random.default_rng(1), history)
    assert 0 <= token < 272
    probs = logits_to_probs(logits, params, history)
    assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0) and probs[token] > 0


class Scaled(PresetSource):
    """The tiny preset with one tensor replaced: NaN in a checkpoint, or finite values that overflow at run time."""

    def __init__(self, name: str, value: float, rows=slice(None)):
        super().__init__("tiny-qwen2")
        self.target, self.value, self.rows = name, value, rows

    def tensor(self, name):
        array = super().tensor(name)
        if name == self.target:
            array = array.copy()
            array[self.rows] = self.value
        return array


@pytest.mark.parametrize("name", ["lm_head.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight"])
def test_nan_weights_are_refused_at_export(tmp_path, name):
    # 4-bit quantization turns NaN into -inf or zero logits, which generate noise without any error: refuse early.
    out = tmp_path / "broken"
    with pytest.raises(SourceError, match="NaN or inf") as caught:
        export(Scaled(name, np.nan, 3), out, ExportOptions(context_length=64), progress=False)
    one_line(caught.value)
    assert list(tmp_path.iterdir()) == []  # no package, no temp folder


@pytest.mark.parametrize("precision", ["w4a16", "fp32"])
@pytest.mark.parametrize("name", ["lm_head.weight", "model.norm.weight"])
def test_nan_logits_from_a_broken_model_are_a_clear_error(tmp_path, name, precision):
    # Finite weights so large that the activations overflow: inf and NaN appear only when the model runs.
    out = tmp_path / "overflows"
    export(Scaled(name, 3e38, 5 if name == "lm_head.weight" else slice(None)), out,
           ExportOptions(context_length=64, precision=precision), progress=False)
    broken = edgeinfer.load(out)
    for params in (GREEDY, SamplingParams(temperature=0.7, seed=1), SamplingParams(temperature=0, repetition_penalty=1.3)):
        with pytest.raises(SamplingError, match="NaN or infinite") as caught:
            broken.generate("Hi", max_new_tokens=4, sampling=params)
        one_line(caught.value)
    from edgeinfer.cli import main

    assert main(["run", str(out), "Hi", "--temperature", "0", "--max-new-tokens", "4"]) == 2  # one line, exit 2


# -- packages that are damaged, mixed up, or whose manifest lies ---------------------------------------------------

def copy_package(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(folder: Path, change, rehash: bool = True) -> None:
    """Apply CHANGE to the manifest; with REHASH, the files' sizes and sha256 are made to agree (a consistent lie)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    if rehash:
        manifest["files"] = describe_files(folder, list(manifest["files"]))
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def set_key(*path, value=KeyError):
    def change(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return change


def truncate(name: str):
    def damage(folder: Path):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    return damage


def drop_initializer(folder: Path):
    import onnx

    graph = onnx.load(folder / "model.onnx", load_external_data=False)
    del graph.graph.initializer[-1]
    onnx.save(graph, folder / "model.onnx")


LIES = {
    "kv heads": set_key("kv_cache", "num_kv_heads", value=4),
    "head dim": set_key("kv_cache", "head_dim", value=8),
    "layers": set_key("architecture", "num_layers", value=3),
    "vocab larger": set_key("architecture", "vocab_size", value=300),
    "vocab smaller": set_key("architecture", "vocab_size", value=100),
    "kv dtype": set_key("kv_cache", "dtype", value="float16"),
    "activation dtype": set_key("activation_dtype", value="float16"),
    "context": set_key("context_length", value=100000),
    "io names": set_key("graphs", "decoder", "outputs", value=["logits", "a", "b", "c", "d"]),
    "graph outside": set_key("graphs", "decoder", "file", value="../other/model.onnx"),
    "no decoder": set_key("graphs", "decoder"),
    "eos id": set_key("tokenizer", "eos_token_ids", value=[99999]),
    "files list": set_key("files", value=[]),
    "arch missing": set_key("architecture", "hidden_size"),
    "chat template": set_key("tokenizer", "chat_template", value="{% if %}"),
}
DAMAGE = {"truncated graph": truncate("model.onnx"), "missing tensor": drop_initializer}


@pytest.mark.parametrize("case", [*LIES, *DAMAGE])
def test_a_manifest_that_lies_is_refused_at_load(preset_pkg, tmp_path, case):
    folder = copy_package(preset_pkg, tmp_path / "pkg")
    if case in DAMAGE:
        DAMAGE[case](folder)
    rewrite_manifest(folder, LIES.get(case, lambda m: None))
    with pytest.raises(PackageError) as caught:
        edgeinfer.load(folder)
    one_line(caught.value)
    FIGURES["lying manifests refused"] = FIGURES.get("lying manifests refused", 0) + 1


@pytest.mark.parametrize("name", ["model.onnx", "model.onnx.data", "tokenizer.json", "manifest.json"])
def test_truncated_or_swapped_files_are_refused(preset_pkg, qwen2_w4, tmp_path, name):
    truncated = copy_package(preset_pkg, tmp_path / "truncated")
    truncate(name)(truncated)
    swapped = copy_package(preset_pkg, tmp_path / "swapped")
    shutil.copy(qwen2_w4 / name, swapped / name)  # same architecture, another model's file
    for folder in (truncated, swapped):
        with pytest.raises(PackageError) as caught:
            edgeinfer.load(folder)
        one_line(caught.value)


def test_a_tokenizer_from_a_bigger_model_is_refused(preset_pkg, tmp_path):
    from edgeinfer.export.presets import byte_tokenizer_json

    folder = copy_package(preset_pkg, tmp_path / "pkg")
    (folder / "tokenizer.json").write_text(byte_tokenizer_json([f"<extra_{i}>" for i in range(100)])[0])
    rewrite_manifest(folder, lambda m: None)
    with pytest.raises(PackageError, match="tokenizer has 356 tokens, the model 272"):
        edgeinfer.load(folder)


def _json_leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _json_leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _json_leaves(value, (*path, i))
    if path:
        yield path


@pytest.fixture(scope="module")
def manifest_playground(preset_pkg, tmp_path_factory):
    folder = copy_package(preset_pkg, tmp_path_factory.mktemp("fuzz") / "pkg")
    original = json.loads((folder / "manifest.json").read_text())
    return folder, original, [p for p in _json_leaves(original) if p[0] != "files" or len(p) < 3]


@fast(80)
@given(data=st.data())
def test_fuzzed_manifests_load_and_run_or_are_refused(manifest_playground, data):
    folder, original, leaves = manifest_playground
    manifest = json.loads(json.dumps(original))
    path = data.draw(st.sampled_from(leaves))
    value = data.draw(st.one_of(st.just(KeyError), st.none(), st.integers(-1, 3), st.integers(10**6, 10**12),
                                st.text(max_size=4), st.booleans(), st.lists(st.integers(0, 3), max_size=2), st.just({})))
    node = manifest
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        node.pop(path[-1]) if isinstance(node, dict) else node.pop()
    else:
        node[path[-1]] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    FIGURES["fuzzed manifests"] = FIGURES.get("fuzzed manifests", 0) + 1
    try:
        loaded = edgeinfer.load(folder)
        loaded.generate("Hi", max_new_tokens=2, sampling=GREEDY)
    except EdgeInferError as exc:
        one_line(exc)


# -- faults: kill -9, full disk ------------------------------------------------------------------------------------

def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "edgeinfer.cli", *args]


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _state(out: Path) -> str:
    if not out.exists():
        return "absent"
    edgeinfer.load(out).generate("Hi", max_new_tokens=2, sampling=GREEDY)  # complete and valid, or this raises
    return "complete"


def test_export_killed_at_random_points_leaves_nothing_half_written(tmp_path):
    parent = tmp_path / "packages"
    parent.mkdir()
    out = parent / "tiny"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Calibrate: the whole command, and the part after the hidden temp folder appears (the export proper).
    started = time.perf_counter()
    proc = subprocess.Popen(_cli("export", "preset:tiny-qwen2", "-o", str(out), "--context", "256"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    appeared = None
    while proc.poll() is None:
        if appeared is None and _hidden(parent):
            appeared = time.perf_counter()
        time.sleep(0.001)
    ended = time.perf_counter()
    total, window = ended - started, ended - (appeared or started)
    assert proc.returncode == 0 and _state(out) == "complete"
    shutil.rmtree(out)

    rng = random.Random(1234)
    outcomes = []
    for point in range(9):
        force = point % 2 == 1  # every other kill replaces an existing package with --force
        if force and not out.exists():
            export("preset:tiny-qwen2", out, ExportOptions(context_length=256), progress=False)
        if not force and out.exists():
            shutil.rmtree(out)
        proc = subprocess.Popen(
            _cli("export", "preset:tiny-qwen2", "-o", str(out), "--context", "256", *(["--force"] if force else [])),
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if point < 2:  # anywhere, start-up included
            delay = rng.uniform(0, total)
            time.sleep(delay)
        else:  # within the export proper: wait for its temp folder, then a random part of the window
            deadline = time.perf_counter() + 30
            while not _hidden(parent) and proc.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.0005)
            delay = rng.uniform(0, 0.6 * window)
            time.sleep(delay)
        exited_before = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _state(out)  # absent or complete: loading a half package would raise here
        if force:  # the old package (or the new one) is still there: only two renames apart could lose it
            assert state == "complete"
        outcomes.append((round(delay, 3), "finished" if exited_before else "killed", state, len(_hidden(parent))))
    figure("export kill -9 (delay s, process, OUT, hidden leftovers)", outcomes)
    assert sum(o[1] == "killed" for o in outcomes) >= 5

    # A rerun works and sweeps the temp folders the killed exports left.
    subprocess.run(_cli("export", "preset:tiny-qwen2", "-o", str(out), "--context", "256", "--force"), env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _state(out) == "complete" and _hidden(parent) == []


def test_stale_folders_of_dead_exports_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is surely gone
    out = tmp_path / "tiny"
    stale = [tmp_path / f".tiny.tmp-{dead.pid}-abc", tmp_path / f".tiny.old-{dead.pid}"]
    mine = tmp_path / f".tiny.tmp-{os.getpid()}-live"  # an export still running in this process: keep it
    for folder in (*stale, mine):
        folder.mkdir()
        (folder / "model.onnx.data").write_bytes(b"\0" * 4096)
        (folder / STAGING_MARKER).write_text("")  # what the staging code writes: only marked folders are swept
    export("preset:tiny-qwen2", out, ExportOptions(context_length=64), progress=False)
    assert not any(p.exists() for p in stale) and mine.exists()


class FullDisk:
    """open() for onnx_writer whose files fail with ENOSPC once WHICH has taken LIMIT bytes."""

    def __init__(self, which: str, limit: int):
        self.which, self.limit = which, limit

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if Path(path).name != self.which:
            return f
        limit, real_write = self.limit, f.write

        def write(data):
            if f.tell() + len(data) > limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(data)

        class Proxy:
            def __getattr__(self, name):
                return write if name == "write" else getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Proxy()


@pytest.mark.parametrize("which,limit", [("model.onnx.data", 0), ("model.onnx.data", 20_000), ("model.onnx", 100),
                                         ("manifest.json", 0), ("tokenizer.json", 0)])
def test_full_disk_during_export_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, which, limit):
    from edgeinfer.export import onnx_writer

    if which.endswith(".json"):
        real = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == which:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        monkeypatch.setattr(onnx_writer, "open", FullDisk(which, limit), raising=False)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="disk is full") as caught:
        export("preset:tiny-qwen2", out, ExportOptions(context_length=64), progress=False)
    one_line(caught.value)
    assert list(tmp_path.iterdir()) == []
    FIGURES["full-disk points"] = FIGURES.get("full-disk points", 0) + 1


def test_bench_killed_midway_keeps_earlier_results(preset_pkg, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results = {name: tmp_path / name for name in ("r.json", "r.csv", "r.md")}
    for path in results.values():
        path.write_text(f"earlier result in {path.name}\n")
    args = ["bench", "--model", str(preset_pkg), "--prompt-len", "8", "--gen-len", "4", "--warmup", "0",
            "--no-sweep", "--json", str(results["r.json"]), "--csv", str(results["r.csv"]),
            "--markdown", str(results["r.md"])]
    rng = random.Random(7)
    delays = []
    for _ in range(3):
        proc = subprocess.Popen(_cli(*args, "--repeat", "1000000"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        delays.append(round(rng.uniform(0.2, 1.5), 2))
        time.sleep(delays[-1])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in results.values():
            assert path.read_text() == f"earlier result in {path.name}\n"
    figure("bench kill -9 delays (s), earlier results intact", delays)
    subprocess.run(_cli(*args, "--repeat", "1"), env=env, check=True, stdout=subprocess.DEVNULL)
    assert json.loads(results["r.json"].read_text())["schema"] == "edgeinfer-bench/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json", "r.md"]  # no temp files left


def test_result_write_that_fails_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    from edgeinfer.bench import results

    path = tmp_path / "r.json"
    path.write_text("earlier")

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(OSError):
        results.save_json({"schema": results.SCHEMA}, path)
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


# -- load: threads, cancellation --------------------------------------------------------------------------------

def test_eight_threads_stream_200_requests_equal_to_single_threaded(model):
    prompts = [f"Question {i}: what is {i} + {i * 7}?" for i in range(12)]
    prompts += [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"}] for i in range(4)]
    expected = [model.generate(p, max_new_tokens=12, sampling=GREEDY) for p in prompts]
    requests = [i % len(prompts) for i in range(200)]
    served, errors, lock = [], [], threading.Lock()

    def worker(mine):
        for i in mine:
            try:
                stream = model.stream(prompts[i], max_new_tokens=12, sampling=GREEDY)
                text = "".join(stream)
                result = stream.result
                ok = text == expected[i].text and result.token_ids == expected[i].token_ids
            except Exception as exc:  # surfaced below
                errors.append(exc)
                continue
            with lock:
                served.append(ok)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(requests[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(served) == 200 and all(served)
    figure("threaded requests served (8 threads, all equal to single-threaded)",
           f"{len(served)} in {time.perf_counter() - started:.1f} s")


def _buffers(runner) -> list:
    """Every numpy array and OrtValue the runner holds (its KV cache and logits), however it names them."""
    import onnxruntime as ort

    found = []
    for value in vars(runner).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        found += [v for v in items if isinstance(v, (np.ndarray, ort.OrtValue))]
    assert len(found) >= 4  # at least a key and a value buffer per layer
    return found


def _track_runners(model, monkeypatch) -> list:
    made = []
    new_runner = model.engine.new_runner

    def spy():
        runner = new_runner()
        made.append([weakref.ref(runner), *(weakref.ref(b) for b in _buffers(runner))])
        return runner

    monkeypatch.setattr(model.engine, "new_runner", spy)
    return made


@pytest.mark.parametrize("how", ["close", "drop", "break", "error"])
def test_a_cancelled_stream_frees_its_cache(model, monkeypatch, how):
    made = _track_runners(model, monkeypatch)
    stream = model.stream("Hi", max_new_tokens=200, sampling=GREEDY, ignore_eos=True)
    if how == "break":
        for i, _ in enumerate(stream):
            if i == 3:
                break
    elif how == "error":
        with pytest.raises(ZeroDivisionError):
            for i, _ in enumerate(stream):
                if i == 3:
                    1 / 0
    else:
        for _ in range(3):
            next(stream)
    if how == "close":
        stream.close()
    del stream
    freed_without_gc = all(ref() is None for ref in made[0])
    gc.collect()
    assert len(made) == 1 and all(ref() is None for ref in made[0])
    FIGURES.setdefault("cancelled streams freed by refcount alone", []).append((how, freed_without_gc))


# -- long runs -----------------------------------------------------------------------------------------------------

def test_500_generations_keep_memory_and_file_handles_flat(model):
    process = psutil.Process()
    prompts = ["Hi", "What is 2 + 2?", [{"role": "user", "content": "Tell me a story"}]]

    def one(i):
        if i % 5 == 4:  # some requests are abandoned midway, as an app does when its user taps stop
            stream = model.stream(prompts[i % 3], max_new_tokens=16, sampling=GREEDY, ignore_eos=True)
            next(stream)
            stream.close()
        else:
            model.generate(prompts[i % 3], max_new_tokens=16, sampling=SamplingParams(temperature=0.8, seed=i))

    for i in range(50):  # warm-up: arenas, caches and lazy imports settle
        one(i)
    gc.collect()
    fds, threads = process.num_fds(), process.num_threads()
    points = []
    for i in range(500):
        one(i)
        if i % 25 == 24:
            points.append((i + 1, process.memory_info().rss))
    gc.collect()
    x, rss = np.array(points, dtype=np.float64).T
    slope = float(np.polyfit(x, rss, 1)[0])
    figure("500 generations: RSS slope (bytes/generation)", round(slope, 1))
    figure("500 generations: RSS first/last (MiB)", (round(float(rss[0]) / 2**20, 1), round(float(rss[-1]) / 2**20, 1)))
    figure("500 generations: fds before/after, threads before/after",
           (fds, process.num_fds(), threads, process.num_threads()))
    assert slope < 4096  # a leak of one KV cache (256 KiB here) per request would show as ~50000
    assert process.num_fds() == fds and process.num_threads() == threads


def test_print_figures():
    """Last in the file: the figures gathered above, in one place (shown with -s)."""
    for name, value in FIGURES.items():
        print(f"[reliability] {name}: {value}")
