"""The CUDA backend: what can be checked without a GPU (provider options, errors, the binding plan, the
fixed-address decode path run on the CPU), and on a GPU the same tokens as the CPU with and without graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgeinfer
from edgeinfer.backends import BackendOptions, get_backend
from edgeinfer.backends import cuda as cuda_backend
from edgeinfer.candidates import CandidateHead
from edgeinfer.errors import BackendError, GenerationError
from edgeinfer.graph_contract import GREEDY_OUTPUT
from edgeinfer.generator import Generator
from edgeinfer.dynamic_runner import VERIFY_WIDTH, DynamicRunner, binding_plan
from edgeinfer.package import load_manifest
from edgeinfer.sampler import GREEDY, SamplingParams

from .conftest import CUDA, export_tiny, needs_gpu


@pytest.fixture(scope="module")
def cuda_pkg(qwen2_dir, tmp_path_factory):
    return export_tiny(qwen2_dir, tmp_path_factory.mktemp("pkg") / "qwen2-cuda", precision="fp32", target="cuda",
                       context_length=128)


@pytest.fixture(scope="module")
def cuda_all_logits_pkg(qwen2_dir, tmp_path_factory):
    return export_tiny(qwen2_dir, tmp_path_factory.mktemp("pkg") / "qwen2-cuda-all", precision="w4a16", target="cuda",
                       context_length=64, all_logits=True)


# -- backend: options, errors, description ------------------------------------------------------------------
def test_provider_options_capture_graphs_unless_turned_off():
    backend = get_backend("cuda")
    name, options = backend.providers(BackendOptions())[0]
    assert name == "CUDAExecutionProvider"
    assert options["enable_cuda_graph"] == "1" and options["device_id"] == "0"
    assert backend.graph_capture(BackendOptions())
    off = BackendOptions(provider_options={"enable_cuda_graph": "0", "device_id": 1})
    assert not backend.graph_capture(off)
    assert backend.providers(off)[0][1]["device_id"] == "1"  # user values win, as strings
    assert backend.providers(off)[-1] == "CPUExecutionProvider"
    assert not get_backend("cpu").graph_capture(BackendOptions())


def test_missing_cuda_provider_says_what_to_install(monkeypatch, qwen2_fp32):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    status = get_backend("cuda").availability()
    assert not status.ok
    assert "has no CUDA execution provider" in str(status) and "pip install 'edgeinfer[cuda]'" in str(status)
    with pytest.raises(BackendError, match=r"backend cuda is not available: onnxruntime .* has no CUDA execution provider"):
        edgeinfer.load(qwen2_fp32, device="cuda")


def test_no_visible_gpu_is_its_own_reason(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(cuda_backend.shutil, "which", lambda _name: None)
    status = get_backend("cuda").availability()
    assert not status.ok and "no NVIDIA GPU" in status.reason
    assert get_backend("cuda").device_description() == "no CUDA GPU"


def test_gpu_description_and_versions(monkeypatch):
    answers = {
        True: "NVIDIA H100 80GB HBM3, 81559, 580.159.04\n",
        False: "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   CUDA Version: 13.0     |\n",
    }
    monkeypatch.setattr(cuda_backend.shutil, "which", lambda _name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(cuda_backend, "_nvidia_smi", lambda *args: answers[bool(args)])
    info = cuda_backend.gpu_info()
    assert info == {"name": "NVIDIA H100 80GB HBM3", "memory_mib": "81559", "driver": "580.159.04", "cuda": "13.0"}
    backend = get_backend("cuda")
    assert backend.device_description() == "NVIDIA H100 80GB HBM3 (80 GiB, driver 580.159.04, CUDA 13.0)"
    versions = backend.versions()
    assert versions["onnxruntime"] == ort.__version__
    assert versions["gpu"] == "NVIDIA H100 80GB HBM3" and versions["cuda_driver"] == "580.159.04"
    assert set(versions) >= {"onnxruntime_cuda", "cuda_driver_api", "gpu_memory_mib"}


def test_session_errors_name_the_fix():
    missing = "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file"
    assert "pip install 'edgeinfer[cuda]'" in cuda_backend._hint(missing, graph_capture=True)
    assert "enable_cuda_graph=0" in cuda_backend._hint("This session cannot use the CUDA graph feature", graph_capture=True)
    assert cuda_backend._hint("some other failure", graph_capture=True) == ""


# -- export: the greedy output is on cuda packages only -----------------------------------------------------
def test_cuda_packages_add_a_greedy_output_cpu_packages_do_not(cuda_pkg, qwen2_fp32):
    cuda_outputs = load_manifest(cuda_pkg).graphs["decoder"]["outputs"]
    cpu_outputs = load_manifest(qwen2_fp32).graphs["decoder"]["outputs"]
    assert cuda_outputs == [*cpu_outputs, GREEDY_OUTPUT]
    session = ort.InferenceSession(str(cuda_pkg / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == cuda_outputs


# -- the binding plan ----------------------------------------------------------------------------------------
def test_cuda_plan_fixes_decode_inputs_and_names_graphs(cuda_pkg):
    manifest = load_manifest(cuda_pkg)
    plan = binding_plan(manifest, "cuda", graph_id=3)
    assert plan.fixed_decode_inputs and plan.graph_capture and plan.decode_graph_id == 3
    assert plan.decode_total_length == manifest.context_length == plan.cache_shape[2]
    assert plan.greedy_output == GREEDY_OUTPUT and plan.cache_dtype == "float16"
    assert plan.cache[0] == ("past_key_values.0.key", "present.0.key") and len(plan.cache) == 2 * manifest.spec.num_layers
    assert plan.run_config(decode=True) == {"gpu_graph_id": "3"}
    assert plan.run_config(decode=False) == {"gpu_graph_id": "-1"}  # prefill: new shapes each time, never captured
    # Verify runs of the fixed width replay their own graph; logits_start feeds the Slice directly from the host (a
    # node between them would run off the GPU and keep the steps from being captured)
    assert plan.rows_input == "logits_start" and plan.verify_width == VERIFY_WIDTH and plan.verify_graph_id == 4
    assert plan.run_config(decode=False, verify=True) == {"gpu_graph_id": "4"}
    graph = onnx.load(str(cuda_pkg / "model.onnx"), load_external_data=False).graph
    start = [n for n in graph.node if "logits_start" in n.input]
    assert [n.op_type for n in start] == ["Slice"] and list(start[0].input).index("logits_start") == 1
    eager = binding_plan(manifest, "cuda")
    assert eager.fixed_decode_inputs and not eager.graph_capture and eager.run_config(decode=True) == {}


def test_cpu_plan_is_the_plain_one(qwen2_fp32):
    manifest = load_manifest(qwen2_fp32)
    plan = binding_plan(manifest, "cpu")
    assert not plan.fixed_decode_inputs and not plan.graph_capture and plan.greedy_output is None
    assert plan.decode_total_length is None and plan.run_config(decode=True) == {}
    kv = manifest.kv_cache
    assert plan.cache_layout == "BNSH" and plan.cache_shape == (1, kv["num_kv_heads"], kv["length"], kv["head_dim"])


def test_a_row_cache_package_plans_rows_on_the_cpu_and_is_refused_on_a_gpu(qwen2_dir, tmp_path):
    manifest = load_manifest(export_tiny(qwen2_dir, tmp_path / "grouped", precision="fp32", attention="grouped"))
    kv = manifest.kv_cache  # grouped attention's rows
    plan = binding_plan(manifest, "cpu")
    assert plan.cache_layout == "SH" and plan.cache_shape == (kv["length"], kv["num_kv_heads"] * kv["head_dim"])
    with pytest.raises(GenerationError, match="layout SH runs on the cpu only"):
        binding_plan(manifest, "cuda")


def test_all_logits_packages_never_replay_a_graph(cuda_all_logits_pkg):
    plan = binding_plan(load_manifest(cuda_all_logits_pkg), "cuda", graph_id=1)
    assert not plan.fixed_decode_inputs and plan.decode_graph_id is None
    assert plan.run_config(decode=True) == plan.run_config(decode=False) == {"gpu_graph_id": "-1"}


def test_graph_ids_need_a_gpu_and_skip_zero(cuda_pkg):
    manifest = load_manifest(cuda_pkg)
    with pytest.raises(GenerationError, match="needs a GPU device"):
        binding_plan(manifest, "cpu", graph_id=1)
    with pytest.raises(GenerationError, match="0 is onnxruntime's own"):
        binding_plan(manifest, "cuda", graph_id=0)


# -- the fixed-address decode path, run on the CPU ------------------------------------------------------------
def _cpu_runner(package, head: bool = False, **plan_options) -> DynamicRunner:
    """PACKAGE's runner on the CPU EP; HEAD: with a candidates head on the CPU EP, as the GPU runs one."""
    manifest = load_manifest(package)
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    candidates = CandidateHead(manifest.spec.vocab_size, np.dtype(manifest.activation_dtype), ["CPUExecutionProvider"]) if head else None
    return DynamicRunner(session, manifest, "cpu", plan=binding_plan(manifest, "cpu", **plan_options), head=candidates)


def _greedy_run(runner, prompt, steps=24):
    gen = Generator(runner, runner.vocab_size, GREEDY)
    gen.append(prompt)
    tokens, rows = [], []
    for _ in range(steps):
        rows.append(gen.logits.copy())
        tokens.append(gen.next_token())
        gen.append([tokens[-1]])
    return tokens, np.array(rows)


def test_fixed_decode_inputs_give_the_same_logits(cuda_pkg):
    """The GPU's decode binding (buffers updated in place, total length = capacity) on the CPU EP."""
    prompt = [5, 17, 99, 3, 250, 42, 8]
    plain_tokens, plain_rows = _greedy_run(_cpu_runner(cuda_pkg, fixed_decode_inputs=False), prompt)
    fixed_tokens, fixed_rows = _greedy_run(_cpu_runner(cuda_pkg, fixed_decode_inputs=True), prompt)
    assert fixed_tokens == plain_tokens
    np.testing.assert_allclose(fixed_rows, plain_rows, atol=2e-3)


def test_greedy_token_is_the_argmax_of_the_last_row(cuda_pkg):
    runner = _cpu_runner(cuda_pkg, fixed_decode_inputs=True)
    runner.run(np.array([1, 2, 3]), 0)
    assert runner.greedy_token() == int(np.argmax(runner.last_logits()))
    runner.run(np.array([4]), 3)  # the decode binding
    assert runner.greedy_token() == int(np.argmax(runner.last_logits()))


def test_greedy_decode_reads_no_logits_when_the_graph_has_an_argmax(cuda_pkg):
    runner = _cpu_runner(cuda_pkg, fixed_decode_inputs=True)
    fetched = []
    original = runner.last_logits
    runner.last_logits = lambda all_rows=False: fetched.append(1) or original(all_rows)
    gen = Generator(runner, runner.vocab_size, GREEDY)
    gen.append([1, 2, 3])
    for _ in range(4):
        gen.append([gen.next_token()])
    assert not fetched
    sampled = Generator(runner, runner.vocab_size, SamplingParams(temperature=0.6, seed=0))  # needs the row
    sampled.append([1, 2, 3])
    sampled.next_token()
    assert fetched


def test_sampled_decode_reads_no_logits_when_the_candidates_hold_the_kept_set(cuda_pkg):
    runner = _cpu_runner(cuda_pkg, head=True, fixed_decode_inputs=True)
    fetched = []
    original = runner.last_logits
    runner.last_logits = lambda all_rows=False: fetched.append(1) or original(all_rows)
    top_k = Generator(runner, runner.vocab_size, SamplingParams(temperature=0.6, top_k=20, seed=0))
    top_k.append([1, 2, 3])
    top_k.extend(4)
    assert not fetched  # every draw came from the 64 candidates
    unfiltered = Generator(runner, runner.vocab_size, SamplingParams(temperature=0.6, top_p=1.0, seed=0))
    unfiltered.append([1, 2, 3])
    unfiltered.next_token()
    assert fetched  # any token may be drawn: the whole row


def test_candidates_are_the_top_of_the_row_at_the_temperature(cuda_pkg):
    runner = _cpu_runner(cuda_pkg, head=True, fixed_decode_inputs=True)
    for ids, position, temperature in (([1, 2, 3], 0, 0.7), ([4], 3, 0.7), ([5], 4, 1.3)):  # prefill, decode, new T
        runner.run(np.array(ids), position)
        top_ids, scaled, log_total = runner.candidates(temperature)
        logits = runner.last_logits().astype(np.float64)
        assert len(top_ids) == min(64, logits.size) and list(scaled) == sorted(scaled, reverse=True)
        np.testing.assert_allclose(scaled, logits[top_ids] / temperature, rtol=1e-6)
        assert scaled[-1] >= np.sort(logits)[-len(top_ids)] / temperature - 1e-6  # nothing better left out
        top = logits.max() / temperature
        assert log_total == pytest.approx(np.log(np.exp(logits / temperature - top).sum()) + top, rel=1e-6)


def test_sampling_from_candidates_draws_the_tokens_the_whole_row_draws(cuda_pkg):
    """Step by step, the same random number: the candidates' draw and the whole row's. They may differ only
    where fp16 logits tie at a filter's edge (the GPU's TopK and numpy break ties differently)."""
    from edgeinfer.sampler import sample

    for params in (SamplingParams(temperature=0.8, top_k=30, seed=4), SamplingParams(temperature=0.6, top_p=0.9, seed=5),
                   SamplingParams(temperature=1.0, top_p=1.0, min_p=0.1, seed=6)):
        runner = _cpu_runner(cuda_pkg, head=True, fixed_decode_inputs=True)
        gen = Generator(runner, runner.vocab_size, params)
        gen.append([9, 8, 7])
        same = 0
        for _ in range(40):
            state = gen.rng.bit_generator.state
            from_candidates = gen.next_token()
            gen.rng.bit_generator.state = state
            from_row = sample(runner.last_logits(), params, gen.rng)
            same += from_candidates == from_row
            gen.append([from_row])
        assert same >= 36, (params, same)


def test_cuda_package_matches_cpu_package_tokens(cuda_pkg, qwen2_fp32):
    """fp16 activations (cuda package) against fp32 (cpu package) on the same weights, both on the CPU EP."""
    prompt = [7, 70, 170, 17, 1]
    cuda_tokens, _ = _greedy_run(_cpu_runner(cuda_pkg, fixed_decode_inputs=True), prompt, steps=32)
    cpu_tokens, _ = _greedy_run(_cpu_runner(qwen2_fp32), prompt, steps=32)
    assert cuda_tokens == cpu_tokens


def test_a_runner_with_only_the_required_methods_drives_the_generator(qwen2_fp32):
    """The Runner interface's required part (run, last_logits, cache_arrays) is enough: no device-side argmax
    or candidates, so the sampler reads the logits row (as the static qnn runner does)."""
    from edgeinfer.runner import Runner

    inner = _cpu_runner(qwen2_fp32)

    class Minimal(Runner):
        capacity = inner.capacity

        def run(self, token_ids, position):
            inner.run(token_ids, position)

        def last_logits(self, all_rows=False):
            return inner.last_logits(all_rows).copy()

        def cache_arrays(self):
            return inner.cache_arrays()

    expected, _ = _greedy_run(_cpu_runner(qwen2_fp32), [3, 4, 5], steps=8)
    gen = Generator(Minimal(), inner.vocab_size, GREEDY)
    gen.append([3, 4, 5])
    tokens = []
    for _ in range(8):
        tokens.append(gen.next_token())
        gen.append([tokens[-1]])
    assert tokens == expected


# -- on a GPU ---------------------------------------------------------------------------------------------------
def _model_tokens(model, prompt, steps=32):
    gen = model.generator(GREEDY)
    gen.append(prompt)
    return gen.extend(steps)


@needs_gpu
def test_gpu_tokens_equal_cpu_tokens_with_and_without_graphs(cuda_pkg, qwen2_fp32):
    prompt = [7, 70, 170, 17, 1]
    cpu = _model_tokens(edgeinfer.load(qwen2_fp32), prompt)
    graphs = edgeinfer.load(cuda_pkg, device="cuda")
    eager = edgeinfer.load(cuda_pkg, device="cuda", options=BackendOptions(provider_options={"enable_cuda_graph": "0"}))
    assert graphs.engine.graph_capture and not eager.engine.graph_capture
    assert _model_tokens(eager, prompt) == cpu
    assert _model_tokens(graphs, prompt) == cpu
    assert _model_tokens(graphs, prompt) == cpu  # a second generator: its own cache and graph


@needs_gpu
def test_gpu_requests_reuse_their_cache_and_graph(cuda_pkg, qwen2_fp32):
    """generate() after generate(): the second request runs on the first one's cache buffers and CUDA graph
    (no new device allocation, no new capture) and gives the CPU's tokens."""
    cpu = edgeinfer.load(qwen2_fp32)
    gpu = edgeinfer.load(cuda_pkg, device="cuda")

    def tokens(model, prompt):
        return model.generate(prompt, max_new_tokens=24, sampling=GREEDY, raw=True, ignore_eos=True).token_ids

    for prompt in ("one request", "and another", "one request"):
        assert tokens(gpu, prompt) == tokens(cpu, prompt)
    assert next(gpu.engine._graph_ids) == 3  # only graph 1 was ever handed out (ids step by 2: decode, verify)


@needs_gpu
def test_gpu_logits_match_cpu_logits(cuda_pkg):
    model = edgeinfer.load(cuda_pkg, device="cuda")
    reference = _cpu_runner(cuda_pkg)
    gen = model.generator(GREEDY)
    gen.append([1, 2, 3, 4])
    np.testing.assert_allclose(gen.logits, reference.forward(np.array([1, 2, 3, 4]), 0), atol=2e-2)
    gen.append([9])  # a graph replay
    np.testing.assert_allclose(gen.logits, reference.forward(np.array([9]), 4), atol=2e-2)


@needs_gpu
def test_gpu_speculation_replays_its_verify_graph_and_keeps_the_plain_tokens(cuda_pkg):
    """Lookup speculation on the GPU: verify runs of the fixed width replay their own CUDA graph beside the decode
    step's (a failed capture would drop the runner to uncaptured verify runs), and greedy output is the plain one."""
    from edgeinfer.generator import StopCriteria
    from edgeinfer.speculative import Speculation, speculative_loop

    model = edgeinfer.load(cuda_pkg, device="cuda")
    text = "def add(a, b):\n    return a + b\n"  # the tiny tokenizer's ids are about one per character
    prompt = model.encode_prompt(text, raw=True)
    plain = model.generate(text, 64, GREEDY, raw=True, ignore_eos=True, speculate="off").token_ids
    generator = model.generator(GREEDY)
    loop = speculative_loop(generator, prompt, StopCriteria(64, ignore_eos=True), Speculation("lookup"))
    assert list(loop) == plain
    assert loop.timings.accepted_tokens > 0 and loop.timings.forward_passes < 64
    assert model.engine.graph_capture and generator.runner.verify_width == VERIFY_WIDTH
