"""Every family against transformers on the same tiny random checkpoint: fp32 exports from the HF folder on the cpu
target and through the static (qnn) graph on the CPU EP, the same from a GGUF written from the same weights, and
W4A16 against transformers on the dequantized 4-bit weights.

Each check feeds a 20-token prompt, then 20 greedy tokens one at a time through edgeinfer's own generator (logits
within 1e-3 of transformers' full forward pass at every step), and separately generates 32 greedy tokens that must
equal transformers' own greedy decoding through its cache (logits within 1e-3 of its cached ones at every step). Packages and references are built once per session and shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import SourceError
from edgeinfer.hf_config import spec_from_hf_config

from .conftest import export_tiny, needs_gpu
from .family_checkpoints import CHECKPOINTS, Reference, make_family_checkpoint

FAMILIES = ["llama3", "qwen3", "gemma3", "phi4-mini", "smollm3", "mistral"]
GGUF_FAMILIES = ["llama3", "qwen3", "gemma3", "phi4-mini", "smollm3"]  # llama.cpp's GGUF has no Mistral window
PROMPT = np.random.default_rng(7).integers(3, 256, size=20).tolist()  # longer than Gemma's window, > 1 static chunk
DECODE_STEPS, GREEDY_TOKENS, TOLERANCE = 20, 32, 1e-3
STATIC = dict(target="qnn", precision="fp32", context_length=64, prefill_chunk=16, context_buckets=())


class Session:
    """Checkpoints, references and packages, each made once per test session on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.made: dict[tuple, object] = {}

    def _once(self, key: tuple, make):
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def checkpoint(self, family: str) -> Path:
        return self._once(("hf", family), lambda: make_family_checkpoint(self.root / family, family))

    def reference(self, family: str) -> Reference:
        return self._once(("ref", family), lambda: Reference(self.checkpoint(family)))

    def gguf(self, family: str) -> Path:
        from .gguf_fixtures import write_gguf_from_hf

        return self._once(("gguf", family), lambda: write_gguf_from_hf(self.checkpoint(family), self.root / f"{family}.gguf"))

    def package(self, family: str, kind: str) -> Path:
        """KIND: cpu (fp32 from the HF folder), grouped (the same with grouped attention), static (fp32 qnn graphs),
        gguf (fp32 from the GGUF)."""
        def make():
            out = self.root / f"{family}-{kind}"
            if kind in ("cpu", "grouped"):
                attention = "grouped" if kind == "grouped" else None
                return export_tiny(self.checkpoint(family), out, precision="fp32", all_logits=True, attention=attention)
            if kind == "static":
                return export_tiny(self.checkpoint(family), out, **STATIC)
            return export_tiny(self.gguf(family), out, precision="fp32", all_logits=True)

        return self._once(("pkg", family, kind), make)


@pytest.fixture(scope="session")
def families(tmp_path_factory) -> Session:
    return Session(tmp_path_factory.mktemp("families"))


def check_against_transformers(package: Path, reference: Reference, all_prompt_rows: bool, device: str = "cpu",
                               tolerance: float = TOLERANCE) -> None:
    """Prompt, then DECODE_STEPS greedy tokens through edgeinfer's generator: logits within TOLERANCE of transformers'
    (every prompt row where the package returns them); then GREEDY_TOKENS greedy tokens equal to transformers'.
    Below fp32 (the GPU's fp16 activations) a token may differ only where transformers' top two are within reach of
    the tolerance; the comparison stops there, since the sequences part."""
    model = edgeinfer.load(package, device=device)
    generator = model.generator(edgeinfer.GREEDY)
    generator.append(PROMPT)
    expected = reference.logits(PROMPT)
    if all_prompt_rows:
        got = generator.runner.last_logits(all_rows=True)
        assert np.abs(got - expected).max() <= tolerance, "prompt rows"
    assert np.abs(generator.logits - expected[-1]).max() <= tolerance, "prefill"
    sequence = list(PROMPT)
    for step in range(DECODE_STEPS):
        sequence.append(int(np.argmax(generator.logits)))
        generator.append(sequence[-1:])
        difference = np.abs(generator.logits - reference.logits(sequence)[-1]).max()
        assert difference <= tolerance, f"decode step {step}: max abs diff {difference:.2e}"
    greedy = model.generator(edgeinfer.GREEDY)
    greedy.append(PROMPT)
    tokens, rows = reference.greedy(PROMPT, GREEDY_TOKENS)
    for step, row in enumerate(rows):  # transformers' cached logits too: past longrope's switch they are the ones
        difference = np.abs(greedy.logits - row).max()
        assert difference <= tolerance, f"greedy step {step}: max abs diff {difference:.2e}"
        token = greedy.next_token()
        if token != tokens[step]:
            top_two = np.sort(row)[-2:]
            assert top_two[1] - top_two[0] <= 2 * tolerance, f"greedy step {step}: {token} != {tokens[step]}"
            return
        greedy.append([token])
    assert greedy.tokens[len(PROMPT):] == tokens


@pytest.mark.parametrize("kind", ["cpu", "grouped"])
@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_cpu_export_matches_transformers(families, family, kind):
    check_against_transformers(families.package(family, kind), families.reference(family), all_prompt_rows=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_static_graph_on_the_cpu_ep_matches_transformers(families, family):
    package = families.package(family, "static")
    assert json.loads((package / "manifest.json").read_text())["graph_flavour"] == "static"
    check_against_transformers(package, families.reference(family), all_prompt_rows=False)


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_fp32_export_from_gguf_matches_transformers(families, family):
    package = families.package(family, "gguf")
    from_gguf, from_hf = load_spec(package), load_spec(families.package(family, "cpu"))
    # The GGUF said what the HF config did (whether the rope tables agree, the parity check shows).
    assert from_gguf.windows() == from_hf.windows() and len(from_gguf.ropes()) == len(from_hf.ropes())
    assert [from_gguf.layer_rope(i) for i in range(from_hf.num_layers)] == [from_hf.layer_rope(i) for i in range(from_hf.num_layers)]
    assert (from_gguf.rotary_dims, from_gguf.tie_word_embeddings) == (from_hf.rotary_dims, from_hf.tie_word_embeddings)
    check_against_transformers(package, families.reference(family), all_prompt_rows=True)


CUDA_TOLERANCE = 2e-2  # fp16 activations on the GPU (test_cuda's GPU-vs-CPU tolerance)


@needs_gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_kernels_match_transformers(families, family, tmp_path):
    """The cuda package on the GPU's own kernels (fp16 GroupQueryAttention with each family's windows, rotary and
    norms; CUDA graphs on, as shipped) against transformers in fp32."""
    package = export_tiny(families.checkpoint(family), tmp_path / "cuda", target="cuda", precision="fp32",
                          context_length=64)
    check_against_transformers(package, families.reference(family), all_prompt_rows=False, device="cuda",
                               tolerance=CUDA_TOLERANCE)


def load_spec(package: Path):
    return edgeinfer.load(package, device="cpu", verify=False).spec


@pytest.mark.parametrize("family", FAMILIES)
def test_w4a16_matches_transformers_on_the_dequantized_weights(families, family, tmp_path):
    """With fp32 compute (accuracy level 0) the only difference from transformers is the 4-bit rounding itself
    (the tolerance of test_export_parity's W4A16 test)."""
    import torch

    from edgeinfer.export.quantize import dequantize_blocks, quantize_blocks

    folder = families.checkpoint(family)
    package = export_tiny(folder, tmp_path / "w4", precision="w4a16", all_logits=True, block_size=16, accuracy_level=0,
                          lm_head_bits=4, mixed_bits=False, activation_aware=False, embedding_block_size=16)
    reference = Reference(folder)
    with torch.no_grad():
        for _, param in reference.model.named_parameters():
            if param.dim() == 2:
                q = quantize_blocks(param.numpy(), 16, False, 4)
                param.copy_(torch.from_numpy(dequantize_blocks(q, param.shape[1])))
    generator = edgeinfer.load(package).generator(edgeinfer.GREEDY)
    ids = np.random.default_rng(2).integers(0, 256, size=32).tolist()
    generator.append(ids)
    assert np.abs(generator.runner.last_logits(all_rows=True) - reference.logits(ids)).max() <= 1e-3


def test_the_tiny_checkpoints_exercise_what_they_test(families):
    """A window, a scaling or a NoPE layer the prompt never reaches would pass the checks above unused: each
    family's reference logits move when its feature is switched off."""
    import torch

    def moved(family: str, switch_off) -> float:
        reference = families.reference(family)
        plain = Reference(families.checkpoint(family))
        switch_off(plain.model)
        with torch.no_grad():
            return float(np.abs(plain.logits(PROMPT + PROMPT[:12]) - reference.logits(PROMPT + PROMPT[:12])).max())

    def no_window(model):
        model.config.sliding_window = 10**6
        for layer in model.model.layers:
            if getattr(layer.self_attn, "sliding_window", None):
                layer.self_attn.sliding_window = 10**6

    def plain_rope(model):
        theta = model.config.rope_parameters["rope_theta"]
        model.model.rotary_emb.inv_freq.copy_(1.0 / (theta ** (torch.arange(0, 16, 2).float() / 16)))

    def rope_everywhere(model):
        for layer in model.model.layers:
            layer.self_attn.use_rope = 1

    assert moved("gemma3", no_window) > 1e-2
    assert moved("mistral", no_window) > 1e-2
    assert moved("llama3", plain_rope) > 1e-2
    assert moved("smollm3", rope_everywhere) > 1e-2


def test_config_readings_of_each_family(families):
    """What spec_from_hf_config makes of the special keys (the parity tests above prove they are used right)."""
    spec = lambda family: spec_from_hf_config(json.loads((families.checkpoint(family) / "config.json").read_text()))  # noqa: E731
    gemma = spec("gemma3")
    assert gemma.layer_types == ("sliding_attention",) * 5 + ("full_attention",) and gemma.sliding_window == 6
    assert gemma.ropes() == [(1e6, {"rope_type": "linear", "factor": 2.0}), (10000.0, None)]
    assert gemma.layer_rope(0) == 1 and gemma.layer_rope(5) == 0 and gemma.windows() == [6, None]
    assert gemma.q_size == 128 and gemma.embedding_scale == 8.0
    assert spec("gemma3-scalar").query_scale == pytest.approx(24 ** -0.5)
    assert spec("qwen3").head_dim == 32 and spec("qwen3").q_size == 128 and spec("qwen3").tie_word_embeddings
    assert spec("llama3").rope_scaling["rope_type"] == "llama3"
    phi = spec("phi4-mini")
    assert phi.rotary_dim == 48 and phi.rope_scaling["rope_type"] == "longrope" and phi.sliding_window is None
    assert spec("smollm3").layers_without_rope == (3,)
    assert spec("mistral").windows() == [5]
    assert spec("ministral").windows() == [5, None]


@pytest.mark.parametrize("config,nearest", [
    ({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}, "gemma3"),
    ({"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"]}, "qwen3"),
    ({"model_type": "phi", "architectures": ["PhiForCausalLM"]}, "phi3"),
    ({"model_type": "mixtral", "architectures": ["MixtralForCausalLM"]}, "mistral"),
])
def test_an_unknown_family_is_one_line_naming_the_nearest(config, nearest):
    with pytest.raises(SourceError) as caught:
        spec_from_hf_config({**config, "hidden_size": 64})
    message = str(caught.value)
    assert "\n" not in message and f"the nearest is {nearest}," in message


@pytest.mark.parametrize("variant", ["ministral", "gemma3-scalar"])
def test_family_variants_match_transformers(families, variant):
    """Ministral's sliding layers interleaved with full ones; Gemma 3 with query_pre_attn_scalar apart from head_dim."""
    check_against_transformers(families.package(variant, "cpu"), families.reference(variant), all_prompt_rows=True)


NEW_PRESETS = ["llama-3.2-1b", "llama-3.2-3b", "qwen3-0.6b", "qwen3-1.7b", "gemma-3-1b", "phi-4-mini", "smollm2-1.7b",
               "smollm3-3b", "mistral-7b-v0.1"]
TINY_PRESETS = ["tiny-llama3", "tiny-qwen3", "tiny-gemma3", "tiny-phi3", "tiny-smollm3", "tiny-mistral"]


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_real_shape_presets_are_specs_a_checkpoint_could_give(name):
    """The families' real shapes pass the checks a config.json goes through and survive the manifest's JSON."""
    from edgeinfer.architecture import ArchSpec, checked_spec
    from edgeinfer.export.dynamic_graph import check_rotary_fits
    from edgeinfer.export.presets import PRESETS
    from edgeinfer.hf_config import HF_FIELDS

    spec = PRESETS[name].spec
    values = spec.to_dict()
    assert checked_spec("preset", HF_FIELDS, **values) == spec
    assert ArchSpec.from_dict(json.loads(json.dumps(values))) == spec
    check_rotary_fits(spec)  # every one runs on cpu/cuda's GroupQueryAttention


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_presets_export_and_generate_on_every_graph(name, tmp_path):
    """Each family's tiny preset as a W4A16 cpu package and a W4A16 QDQ qnn package (calibrated; GPTQ off for speed),
    both generating on the CPU EP."""
    cpu = export_tiny(f"preset:{name}", tmp_path / "cpu")
    qnn = export_tiny(f"preset:{name}", tmp_path / "qnn", target="qnn", context_length=64, prefill_chunk=16, gptq=False)
    for package in (cpu, qnn):
        generator = edgeinfer.load(package).generator(edgeinfer.GREEDY)
        generator.append(PROMPT)
        assert len(generator.extend(4)) == 4 and np.isfinite(generator.logits).all()


@pytest.mark.qnn
@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_presets_run_whole_on_the_htp(name, tmp_path):
    """Every node of each family's W4A16 QDQ graphs on the HTP (the simulator on x86-64; fallback disabled), its
    logits near the CPU EP's on the same package, teacher-forced on the CPU EP's greedy tokens. Measured gaps: 0.004-
    0.009 for most families; Gemma 3's norms on the branch outputs leave 0.02 (logit std ~0.17), not yet explained."""
    from edgeinfer.backends import get_backend

    available = get_backend("qnn").availability()
    if not available.ok:
        pytest.skip(f"qnn backend not available: {available}")
    from .test_qnn import cpu_static_generator

    package = export_tiny(f"preset:{name}", tmp_path / "qnn", target="qnn", context_length=64, prefill_chunk=16, gptq=False)
    ours, reference = edgeinfer.load(package, device="qnn").generator(edgeinfer.GREEDY), cpu_static_generator(package)
    ours.append(PROMPT)
    reference.append(PROMPT)
    for _ in range(8):
        assert np.abs(ours.logits - reference.logits).max() < 0.05
        token = int(np.argmax(reference.logits))
        ours.append([token])
        reference.append([token])


@pytest.mark.parametrize("switch", [{"final_logit_softcapping": 30.0}, {"attention_bias": True}, {"mlp_bias": True}])
def test_config_switches_the_graphs_lack_are_refused(families, switch):
    config = json.loads((families.checkpoint("gemma3") / "config.json").read_text())
    with pytest.raises(SourceError, match=f"sets {next(iter(switch))}") as caught:
        spec_from_hf_config({**config, **switch})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("naming", ["published", "transformers-5"])
def test_gemma3_multimodal_checkpoint_exports_its_language_model(families, naming, tmp_path):
    """Gemma 3 4B and up ship as Gemma3ForConditionalGeneration: the text_config (here without the keys that have
    transformers' defaults, as published configs leave them out) and the language model's tensors under
    language_model.model. (published) or model.language_model. (saved by transformers 5); the vision tower stays."""
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "gemma3-4b-like"
    shutil.copytree(families.checkpoint("gemma3-multimodal"), folder)
    config = json.loads((folder / "config.json").read_text())
    for key in ("rope_parameters", "rms_norm_eps", "max_position_embeddings"):
        del config["text_config"][key]
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_file(folder / "model.safetensors")
    assert "language_model.model.embed_tokens.weight" in tensors  # how transformers writes it, as published
    if naming == "transformers-5":
        renamed = {k.replace("language_model.model.", "model.language_model.", 1): v for k, v in tensors.items()}
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    package = export_tiny(folder, tmp_path / "pkg", precision="fp32", all_logits=True)
    assert load_spec(package).max_position_embeddings == 131072  # transformers' default, where the config says none
    check_against_transformers(package, Reference(folder), all_prompt_rows=True)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_the_cuda_graph_in_fp16_agrees_with_fp32_on_the_cpu_ep(name, tmp_path):
    """No GPU here: the cuda package's fp16 graph (its ops have CPU kernels too) against the fp32 cpu package, prompt
    and 8 decode steps on the fp32 package's greedy tokens, through onnxruntime directly."""
    import onnxruntime as ort

    from edgeinfer.graph_contract import cache_rows
    from edgeinfer.package import load_manifest

    def logits(package: Path, dtype, tokens: list[int] | None = None) -> tuple[list[np.ndarray], list[int]]:
        manifest, rows = load_manifest(package), []
        session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
        kv = manifest.kv_cache
        past = {n: np.zeros((1, kv["num_kv_heads"], cache_rows(kv), kv["head_dim"]), dtype)
                for n in manifest.graphs["decoder"]["inputs"] if n.startswith("past_key_values.")}
        rows_input = {"logits_start": np.array([-1], np.int64)} if "logits_start" in manifest.graphs["decoder"]["inputs"] else {}
        sequence, fed, picked = list(PROMPT), 0, []
        for step in range(9):
            feeds = {"input_ids": np.array([sequence[fed:]], np.int64), "seqlens_k": np.array([len(sequence) - 1], np.int32),
                     "total_sequence_length": np.array(len(sequence), np.int32), **rows_input, **past}
            out = session.run(None, feeds)
            past = dict(zip(past, out[1 : 1 + len(past)]))
            rows.append(out[0][0, -1].astype(np.float32))
            picked.append(tokens[step] if tokens else int(np.argmax(rows[-1])))
            fed = len(sequence)
            sequence.append(picked[-1])
        return rows, picked

    # attention="gqa": the same attention op as the cuda graph, and the BNSH cache this driver feeds whole
    cpu = export_tiny(f"preset:{name}", tmp_path / "cpu", precision="fp32", context_length=64, attention="gqa")
    fp32, tokens = logits(cpu, np.float32)
    cuda = export_tiny(f"preset:{name}", tmp_path / "cuda", target="cuda", precision="fp16", context_length=64)
    fp16, _ = logits(cuda, np.float16, tokens)
    for a, b in zip(fp16, fp32):
        assert np.abs(a - b).max() < 5e-3


@pytest.mark.parametrize("field,value", [("layer_types", 3), ("layer_types", ["full_attention"]), ("rope_scaling", [0]),
                                         ("rope_scaling", {"rope_type": "llama3"}), ("rotary_dim", 10**12),
                                         ("sliding_window", "ab"), ("layers_without_rope", [99]), ("family", []),
                                         ("local_rope_theta", -1), ("target", "cpu\n")])
def test_a_manifest_with_a_damaged_family_fact_is_refused_in_one_line(families, tmp_path, field, value):
    """The static runner builds its rotary tables and masks from these: a crafted manifest is one PackageError."""
    import shutil

    from edgeinfer.errors import PackageError

    package = tmp_path / "pkg"
    shutil.copytree(families.package("gemma3", "static"), package)
    manifest = json.loads((package / "manifest.json").read_text())
    (manifest if field == "target" else manifest["architecture"])[field] = value
    (package / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError) as caught:
        edgeinfer.load(package).generate("Hi", max_new_tokens=2)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnxruntime_genai_runs_each_family_as_exported(families, family):
    """Each family's package folder is an onnxruntime-genai model folder: genai's Generator, on its own view of the
    decoder (genai_model.onnx), picks transformers' greedy tokens, as edgeinfer does."""
    import onnxruntime_genai as og

    from edgeinfer.graph_contract import GENAI_CONFIG

    package = families.package(family, "cpu")
    config = json.loads((package / GENAI_CONFIG).read_text())
    tokens, _ = families.reference(family).greedy(PROMPT, GREEDY_TOKENS)
    model = og.Model(str(package))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=config["search"]["max_length"])
    generator = og.Generator(model, params)
    generator.append_tokens(PROMPT)
    picked = []
    while not generator.is_done() and len(picked) < GREEDY_TOKENS:  # genai stops at an eos, transformers' greedy not
        generator.generate_next_token()
        picked.append(int(generator.get_next_tokens()[0]))
    assert len(picked) > 4 and picked == tokens[: len(picked)]
    assert len(picked) == GREEDY_TOKENS or picked[-1] in config["model"]["eos_token_id"]
