"""`edgeinfer verify`: a qnn package's numerics beside a float reference, on real text.

Both packages read the same tokens: the text as a chat user message, the first PREFILL tokens through the prefill
graph, then one token at a time through the decode graph (each keeps its own KV cache, so errors compound as they do
in generation). Each step's logits are scored against the reference (top-1 agreement, perplexity on the text's next
tokens, logits SQNR), and with a static (qnn) reference, the residual stream after every layer (the last row of each
step) gives a per-layer SQNR: where the quantization noise enters. With `--device qnn` the package also runs on the
NPU, and its logits are compared with the CPU EP's on the same package: the agreement the HTP must keep.

The reference is any package of the same model: `--target qnn --precision fp32` (per-layer figures), or a cpu fp32
package (logits only). A package whose residual stream is rotated (export/rotation.py) is compared after undoing the
rotation its manifest records.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends import BackendOptions, get_backend
from .errors import PackageError
from .graph_contract import describe_step_bytes, static_step_bytes
from .package import Package, load_package

DEFAULT_TEXT_MODULES = ("textwrap", "argparse")  # stdlib sources: real text every Python has, unseen by calibration
RESIDUAL = "model.layers.{i}.mlp_residual/out"


def default_text() -> str:
    import importlib

    return "\n".join(inspect.getsource(importlib.import_module(name)) for name in DEFAULT_TEXT_MODULES)


def text_ids(package: Package, text: str, count: int) -> list[int]:
    """The first COUNT tokens of TEXT sent as a user message in the model's chat template (the template's opening,
    then the text's own tokens): the first token of a chat becomes the model's attention sink, as in real use."""
    from .chat import ChatFormat
    from .tokenizer import TextTokenizer

    tok = package.manifest.tokenizer
    tokenizer = TextTokenizer.from_package(package, tok["bos_token_id"], tok["add_bos_token"])
    body = tokenizer.encode(text, parse_special=False, add_bos=False)
    if len(body) < count:
        raise PackageError(f"the text gives {len(body)} tokens, {count} are needed: pass a longer --text or fewer --positions")
    chat = ChatFormat(tokenizer, tok["chat_template"], tok["chat_format"], package.manifest.context_length)
    return chat.encode(text)[:count]  # opening + text: the template's closing lies past COUNT


class TappedSession:
    """A CPU EP session of one graph with extra outputs (the residual stream after each of its layers); run() has
    InferenceSession's signature and keeps the last row of each tap."""

    def __init__(self, package: Package, part: dict):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        path = package.graph(part["file"], "a graph")
        model = onnx.load(str(path), load_external_data=False)
        produced = {out for node in model.graph.node for out in node.output}
        self.taps: dict[int, str] = {}
        for layer in range(*part["layers"]):
            name = RESIDUAL.format(i=layer)
            for candidate in (f"{name}_DequantizeLinear_Output", name):  # a QDQ graph's consumers read the DQ output
                if candidate in produced:
                    self.taps[layer] = candidate
                    model.graph.output.append(helper.make_tensor_value_info(candidate, TensorProto.FLOAT, None))
                    break
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # The copy lives in memory; its weights stay in the package's files, found through this folder.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(path.parent))
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.seen: list[dict[int, np.ndarray]] = []

    def run(self, names, feed):
        out = self.session.run([*names, *self.taps.values()], feed)
        self.seen.append({layer: a[0, -1].astype(np.float64) for layer, a in zip(self.taps, out[len(names):])})
        return out[: len(names)]


@dataclass
class Run:
    """One package's logits at every scored step, and (static packages on the CPU EP) its residual stream."""

    logits: np.ndarray
    hidden: list[dict[int, np.ndarray]] = field(default_factory=list)


def run_package(package: Package, ids: list[int], prefill: int, device: str = "cpu", taps: bool = True) -> Run:
    from .model import _engine
    from .static_runner import StaticEngine, StaticRunner

    manifest = package.manifest
    static = manifest.graph_flavour == "static"
    if static and taps and device == "cpu":
        sessions = {role: [TappedSession(package, part) for part in manifest.graphs[role]["parts"]] for role in ("prefill", "decode")}
        runner = StaticRunner(sessions, manifest.graphs, manifest.spec, manifest.context_length,
                              StaticEngine.host_embeddings(package))
    else:
        backend = get_backend(device)
        backend.require()
        runner = _engine(backend, package, backend.package_options(manifest.precision, BackendOptions())).new_runner()
        sessions = None
    rows = [runner.forward(ids[:prefill], 0).copy()]  # a bound runner's logits buffer is rewritten each run
    rows += [runner.forward([token], position).copy() for position, token in enumerate(ids[prefill:-1], start=prefill)]
    hidden = []
    if sessions:  # per step, the layers of all parts: the prefill's last chunk, then every decode step
        hidden.append({k: v for s in sessions["prefill"] for k, v in s.seen[-1].items()})
        for step in range(len(sessions["decode"][0].seen)):
            hidden.append({k: v for s in sessions["decode"] for k, v in s.seen[step].items()})
    return Run(np.stack(rows).astype(np.float64), hidden)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((test - ref) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(float(np.sum(ref**2)) / noise))


def perplexity(logits: np.ndarray, targets: np.ndarray) -> float:
    return float(np.exp(-log_softmax(logits)[np.arange(len(targets)), targets].mean()))


def compare_logits(test: np.ndarray, ref: np.ndarray, targets: np.ndarray) -> dict:
    ppl, ppl_ref = perplexity(test, targets), perplexity(ref, targets)
    return {"top1_agreement": float(np.mean(test.argmax(-1) == ref.argmax(-1))), "perplexity": ppl,
            "reference_perplexity": ppl_ref, "perplexity_ratio": ppl / ppl_ref, "logits_sqnr_db": sqnr_db(ref, test),
            "max_abs_logit_gap": float(np.abs(test - ref).max())}


def rotation_of(package: Package) -> np.ndarray | None:
    """The orthogonal matrix the package's residual stream is rotated by (None if it is not)."""
    from .hadamard import KIND, SEED, rotation

    plan = (package.manifest.graphs or {}).get("quantization") or {}
    recorded = plan.get("rotation")
    if not recorded:
        return None
    if not isinstance(recorded, dict) or recorded.get("kind") != KIND or recorded.get("seed") != SEED:
        raise PackageError(f"{package.folder}: rotation {recorded} is not one this edgeinfer builds: upgrade edgeinfer")
    return rotation(int(recorded["size"]))


def layer_sqnr(test: Run, ref: Run, test_rotation: np.ndarray | None, ref_rotation: np.ndarray | None) -> list[dict]:
    """Per layer, SQNR of the residual stream over all steps: raw (dominated by the few massive-activation channels)
    and per-token RMS-normalized (what the next layer's RMSNorm passes on). Both in the unrotated basis."""
    rows = []
    for layer in sorted(set(test.hidden[0]) & set(ref.hidden[0])):
        a = np.stack([s[layer] for s in ref.hidden])
        b = np.stack([s[layer] for s in test.hidden])
        a = a @ ref_rotation.T if ref_rotation is not None else a
        b = b @ test_rotation.T if test_rotation is not None else b
        normed = lambda x: x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6)  # noqa: E731
        rows.append({"layer": layer, "sqnr_db": sqnr_db(a, b), "normed_sqnr_db": sqnr_db(normed(a), normed(b))})
    return rows


def verify(package_path: Path, reference_path: Path | None = None, text: str | None = None, positions: int = 512,
           device: str = "cpu", verify_files: bool = True) -> dict:
    package = load_package(package_path, verify=verify_files)
    manifest = package.manifest
    if manifest.graph_flavour != "static":
        raise PackageError(f"{package_path} is a {manifest.target} package: verify compares qnn packages with a float reference "
                           "(for cpu and cuda packages use `edgeinfer eval PACKAGE --reference FLOAT_PACKAGE`)")
    prefill = manifest.graphs["prefill"]["tokens"]
    if positions < 2 or prefill + positions > manifest.context_length:
        raise PackageError(f"--positions {positions} does not fit: the context is {manifest.context_length} and the prefill "
                           f"chunk {prefill}; pass at most {manifest.context_length - prefill}")
    ids = text_ids(package, text if text is not None else default_text(), prefill + positions)
    targets = np.array(ids[prefill:])
    result: dict = {"package": str(package_path), "positions": positions - 1, "prefill": prefill,
                    "text_tokens": len(ids), "quantization": (manifest.graphs.get("quantization") or {}).get("weights"),
                    "kv_dtype": manifest.kv_cache["dtype"],
                    "decode_step_bytes": static_step_bytes(manifest.graphs, manifest.spec, manifest.context_length)}
    ours = run_package(package, ids, prefill)
    result["package_perplexity"] = perplexity(ours.logits, targets)
    ref = None
    if reference_path is not None:
        reference = load_package(reference_path, verify=verify_files)
        if reference.manifest.spec != manifest.spec:
            raise PackageError(f"{reference_path} is a different model than {package_path}: pass a float export of the same weights")
        ref = run_package(reference, ids, prefill)
        result["reference"] = str(reference_path)
        result["vs_reference"] = compare_logits(ours.logits, ref.logits, targets)
        if ours.hidden and ref.hidden:
            result["layers"] = layer_sqnr(ours, ref, rotation_of(package), rotation_of(reference))
    if device != "cpu":
        on_device = run_package(package, ids, prefill, device=device)
        result["device"] = device
        result["device_vs_cpu_ep"] = compare_logits(on_device.logits, ours.logits, targets)
        if ref is not None:  # two roundings of one quantized graph differ by about its quantization noise: the
            # device's own distance from the float reference says whether it is as good as the CPU EP
            result["device_vs_reference"] = compare_logits(on_device.logits, ref.logits, targets)
    return result


def format_report(result: dict) -> str:
    lines = [f"{result['package']}: {result['positions']} scored positions after a {result['prefill']}-token prefill "
             f"(weights: {result['quantization']})",
             describe_step_bytes(result["decode_step_bytes"], result["kv_dtype"])]
    if "layers" in result:
        lines += ["", "| layer | SQNR dB | normed SQNR dB |", "|---|---|---|"]
        lines += [f"| {r['layer']} | {r['sqnr_db']:.1f} | {r['normed_sqnr_db']:.1f} |" for r in result["layers"]]
    lines += ["", "| compared | top-1 agreement | perplexity | reference perplexity | ratio | logits SQNR dB |", "|---|---|---|---|---|---|"]
    if "vs_reference" in result:
        r = result["vs_reference"]
        lines.append(f"| package (CPU EP) vs {result['reference']} | {r['top1_agreement']:.1%} | {r['perplexity']:.4f} | "
                     f"{r['reference_perplexity']:.4f} | {r['perplexity_ratio']:.4f} | {r['logits_sqnr_db']:.1f} |")
    else:
        lines.append(f"| package (CPU EP), no reference given | - | {result['package_perplexity']:.4f} | - | - | - |")
    if "device_vs_reference" in result:
        r = result["device_vs_reference"]
        lines.append(f"| package ({result['device']}) vs {result['reference']} | {r['top1_agreement']:.1%} | {r['perplexity']:.4f} | "
                     f"{r['reference_perplexity']:.4f} | {r['perplexity_ratio']:.4f} | {r['logits_sqnr_db']:.1f} |")
    if "device_vs_cpu_ep" in result:
        r = result["device_vs_cpu_ep"]
        lines.append(f"| {result['device']} vs CPU EP, same package | {r['top1_agreement']:.1%} | {r['perplexity']:.4f} | "
                     f"{r['reference_perplexity']:.4f} | {r['perplexity_ratio']:.4f} | {r['logits_sqnr_db']:.1f} |")
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
