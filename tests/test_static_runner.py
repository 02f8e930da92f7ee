"""StaticRunner's bound buffers (CacheBuffers): the same numbers as feeding session.run, with nothing reallocated.

Runs qnn packages on the CPU EP; tests/test_qnn.py runs them on the HTP simulator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.package import load_package
from edgeinfer.static_runner import CacheBuffers, StaticEngine, StaticRunner

from .conftest import STATIC_CHUNK as CHUNK, export_tiny



@pytest.fixture
def packages(static_packages) -> dict[str, Path]:
    return static_packages


def engine(package: Path) -> StaticEngine:
    return StaticEngine(get_backend("cpu"), load_package(package), BackendOptions())


def fed_runner(engine: StaticEngine) -> StaticRunner:
    """The same sessions fed numpy arrays through session.run (no buffers)."""
    m = engine.manifest
    return StaticRunner(engine.sessions_for(m.context_length), m.graphs, m.spec, m.context_length, engine.embeddings)


def greedy_steps(runner: StaticRunner, prompt: list[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
    """Logits (copied) after PROMPT and after each greedy token fed back."""
    rows = [runner.forward(prompt, 0).copy()]
    tokens = []
    for position in range(len(prompt), len(prompt) + steps):
        tokens.append(int(np.argmax(rows[-1])))
        rows.append(runner.forward([tokens[-1]], position).copy())
    return rows, tokens


PROMPT = np.random.default_rng(0).integers(0, 256, size=21).tolist()  # two prefill chunks, the second padded


@pytest.mark.parametrize("precision", ["w4a16", "fp32"])
def test_bound_runner_computes_what_session_run_computes(packages, precision):
    loaded = engine(packages[precision])
    bound, fed = loaded.new_runner(), fed_runner(loaded)
    assert bound.buffers is not None and fed.buffers is None
    ours, our_tokens = greedy_steps(bound, PROMPT, 8)
    theirs, their_tokens = greedy_steps(fed, PROMPT, 8)
    assert our_tokens == their_tokens
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)  # the same kernels on the same inputs: bit for bit
    for a, b in zip(bound.cache_arrays(), fed.cache_arrays()):
        np.testing.assert_array_equal(a, b)


def test_parts_chain_their_hidden_states_through_one_buffer(tmp_path, monkeypatch):
    from edgeinfer.export import static_graph

    monkeypatch.setattr(static_graph, "PART_BYTES", 20_000)  # one tiny layer per part
    loaded = engine(export_tiny("preset:tiny-qwen2", tmp_path / "parts", target="qnn", prefill_chunk=CHUNK))
    assert len(loaded.sessions_for(loaded.manifest.context_length)["decode"]) == 2
    bound = loaded.new_runner()
    values = bound.buffers.values
    assert ("decode", "hidden_out", 0) in values and ("decode", "hidden_out", 1) not in values
    ours, tokens = greedy_steps(bound, PROMPT, 6)
    theirs, reference = greedy_steps(fed_runner(loaded), PROMPT, 6)
    assert tokens == reference
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_buffers_are_allocated_once_and_read_in_place(packages):
    runner = engine(packages["w4a16"]).new_runner()
    values = runner.buffers.values
    before = {key: value.data_ptr() for key, value in values.items()}
    cache = [a.ctypes.data for a in runner.cache_arrays()]
    assert cache == [values[("cache", slot)].data_ptr() for slot in runner.cache]  # the host's cache is the bound memory
    greedy_steps(runner, PROMPT, 4)
    assert {key: value.data_ptr() for key, value in values.items()} == before
    assert [a.ctypes.data for a in runner.cache_arrays()] == cache
    logits = runner.last_logits()
    assert np.shares_memory(logits, runner.buffers.views["decode"]["logits"])  # read where the graph wrote it



def test_a_write_into_the_host_cache_is_what_the_next_step_reads(packages):
    loaded = engine(packages["w4a16"])
    bound, fed = loaded.new_runner(), fed_runner(loaded)
    for runner in (bound, fed):
        runner.forward(PROMPT, 0)
    untouched = bound.forward([3], len(PROMPT)).copy()
    for runner in (bound, fed):
        runner.cache["key.0"][:, :, : len(PROMPT) // 2] = 7  # far from the slot's zero point
    np.testing.assert_array_equal(bound.forward([3], len(PROMPT)), fed.forward([3], len(PROMPT)))
    assert not np.array_equal(bound.last_logits(), untouched)


def test_buffers_in_memory_from_an_allocator_onnxruntime_holds(packages):
    """The route a device's shared memory takes (Backend.shared_memory -> OrtValue allocated with its memory info),
    over a plain CPU allocator registered with onnxruntime's environment (process-wide; sessions use it only when
    they opt in with session.use_env_allocators)."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(memory, None)
    except Exception as exc:  # registered already by an earlier test in this process
        assert "already" in str(exc)
    loaded = engine(packages["w4a16"])
    m = loaded.manifest
    buffers = CacheBuffers(loaded.sessions_for(m.context_length), m.graphs, m.spec, m.context_length, memory)
    runner = StaticRunner(loaded.sessions_for(m.context_length), m.graphs, m.spec, m.context_length, loaded.embeddings, buffers)
    ours, tokens = greedy_steps(runner, PROMPT, 6)
    theirs, reference = greedy_steps(fed_runner(loaded), PROMPT, 6)
    assert tokens == reference
    np.testing.assert_array_equal(ours[-1], theirs[-1])


def test_cpu_backend_binds_plain_host_memory(packages):
    runner = engine(packages["fp32"]).new_runner()
    assert get_backend("cpu").shared_memory() is None and runner.buffers.memory is None


def test_a_conversation_grows_through_the_context_buckets(tmp_path):
    """Starting in the smallest context and moving up as it fills gives the tokens of the full-context runner."""
    from edgeinfer.static_runner import GrowingRunner

    package = export_tiny("preset:tiny-qwen2", tmp_path / "buckets", target="qnn", prefill_chunk=CHUNK, context_buckets=(64, 128))
    loaded = engine(package)
    assert loaded.contexts == [64, 128, 256] and set(loaded._sessions) == {64}  # larger contexts open when needed
    growing = loaded.new_runner()
    assert isinstance(growing, GrowingRunner) and growing.context == 64 and growing.capacity == 256
    full = loaded.runner_for(256)
    prompt = np.random.default_rng(5).integers(0, 256, size=50).tolist()
    ours, tokens = greedy_steps(growing, prompt, 90)  # 50 + 90 positions: through 64 and 128 into 256
    theirs, reference = greedy_steps(full, prompt, 90)
    assert growing.context == 256 and set(loaded._sessions) == {64, 128, 256}
    assert tokens == reference
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-4 * (1 + np.abs(b).max()))


def test_a_package_calibrated_over_a_smaller_context_is_retargeted_to_its_own(tmp_path, monkeypatch):
    """The W4A16 graphs are built and calibrated over CALIBRATION_CONTEXT slots, then retargeted: over the slots
    both have, the package computes what the one exported at that context does, and it runs past them."""
    from edgeinfer.export import static_graph

    monkeypatch.setattr(static_graph, "CALIBRATION_CONTEXT", 128)
    small = engine(export_tiny("preset:tiny-qwen2", tmp_path / "c128", target="qnn", prefill_chunk=CHUNK, context_length=128))
    large = engine(export_tiny("preset:tiny-qwen2", tmp_path / "c256", target="qnn", prefill_chunk=CHUNK, context_length=256))
    assert large.manifest.graphs["quantization"]["calibration"] == small.manifest.graphs["quantization"]["calibration"] | {
        k: large.manifest.graphs["quantization"]["calibration"][k] for k in ("seconds", "collect_seconds", "encode_seconds")}
    ours, tokens = greedy_steps(large.new_runner(), PROMPT, 180)  # to position 201, past the calibration context
    theirs, reference = greedy_steps(small.new_runner(), PROMPT, 100)
    assert tokens[:100] == reference
    np.testing.assert_allclose(ours[50], theirs[50], atol=1e-4 * (1 + np.abs(theirs[50]).max()))


def test_open_all_opens_every_context_bucket(tmp_path):
    """`export --compile` opens every context's sessions (QNN: compiles each bucket's binaries on the host)."""
    loaded = engine(export_tiny("preset:tiny-qwen2", tmp_path / "b", target="qnn", prefill_chunk=CHUNK, context_buckets=(64,)))
    assert set(loaded._sessions) == {64}
    loaded.open_all()
    assert set(loaded._sessions) == {64, 256}
