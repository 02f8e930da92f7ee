"""`edgeinfer`: a thin command line over the Python API. Errors print as one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import EdgeInferError

# `edgeinfer run` with no arguments: the embedded tiny preset, exported in a second; its weights are random.
DEFAULT_RUN_MODEL = "preset:tiny-qwen2"
DEFAULT_PROMPT = "Hello! What can you do?"


def _export(args) -> None:
    from .export.exporter import export
    from .export.options import ExportOptions

    # --rounding given: cpu/cuda weights quantized from floats round that way; qnn takes gptq or not from it.
    # Not given: the defaults (cpu/cuda round to nearest, qnn rounds by GPTQ).
    rounding = {} if args.rounding is None else dict(activation_aware=args.rounding != "nearest", gptq=args.rounding == "gptq")
    options = ExportOptions(
        precision=args.precision, target=args.target, context_length=args.context, block_size=args.block_size,
        symmetric=args.symmetric, mixed_bits=not args.uniform_bits, lm_head_bits=args.lm_head_bits,
        eight_bit_rule=args.eight_bit,
        accuracy_level=args.accuracy_level, all_logits=args.all_logits,
        quantize_embeddings=not args.float_embeddings, prefill_chunk=args.prefill_chunk, attention=args.attention,
        requantize=args.requantize, embedding_block_size=args.embedding_block_size, **rounding,
        exact_speculation=args.exact_speculation,
    )
    export(args.source, args.output, options, force=args.force, follow_symlinks=args.follow_symlinks)
    if args.compile:
        from .model import load

        started = time.perf_counter()
        load(args.output, device=args.target, verify=False).engine.open_all()  # every context bucket's binaries
        print(f"compiled for {args.target} in {time.perf_counter() - started:.1f} s")


def _verify(args) -> None:
    from .verify import format_report, verify, write_json

    text = None
    if args.text:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgeInferError(f"cannot read --text {args.text}: {exc.__class__.__name__}: pass a UTF-8 text file") from None
    result = verify(Path(args.package), Path(args.reference) if args.reference else None, text, args.positions,
                    args.device, verify_files=not args.no_verify)
    print(format_report(result))
    if args.json:
        write_json(result, Path(args.json))


def _eval(args) -> None:
    from .eval import compare, read_text, write_json

    name, text = read_text(args.text) if args.text else (None, None)
    reports = compare(args.packages, text, name, args.reference, args.context, None if args.chunks == 0 else args.chunks,
                      args.threads, devices=args.device, batched=args.batched)
    print("\n\n".join(report.markdown() for report in reports))
    if args.json:
        write_json(reports, args.json)


def _sampling(args):
    from .sampler import SamplingParams

    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )


def _backend_options(args):
    from .backends import BackendOptions

    return BackendOptions(threads=args.threads, allow_fallback=args.allow_fallback)


def _load(args):
    """The model for ARGS.package: a package folder, or a source exported once into the cache first."""
    from .backends import get_backend
    from .export.cached import resolve_package
    from .model import load

    from .bench.cli import speculation_from

    package = resolve_package(args.package, get_backend(args.device).target)
    model = load(package, device=args.device, options=_backend_options(args))
    model.speculation = speculation_from(args, args.device, _backend_options(args))
    if package != Path(args.package) and model.manifest.source.get("random_weights"):  # a preset, exported just now
        print(f"edgeinfer: {args.package} has random weights (its text is noise; it shows the path, not a model): "
              "export a real checkpoint for real text", file=sys.stderr)
    return model


def _run(args) -> None:
    model = _load(args)
    pieces = model.stream(args.prompt, args.max_new_tokens, _sampling(args), tuple(args.stop), args.raw,
                          ignore_eos=args.ignore_eos)
    if args.json:
        for _ in pieces:
            pass
        payload = pieces.result.to_dict()
        payload["timings"]["load_s"] = model.load_s
        print(json.dumps(payload, ensure_ascii=False))
        return
    for piece in pieces:
        print(piece, end="", flush=True)
    result = pieces.result
    t = result.timings
    speculated = (f", {t.speculate}: {t.acceptance_rate:.0%} of {t.proposed_tokens} proposed tokens kept, "
                  f"{t.tokens_per_pass:.2f} tokens per pass" if t.speculate != "off" else "")
    print(f"\n[{t.prompt_tokens} prompt tokens, TTFT {t.ttft_s * 1000:.0f} ms, {t.new_tokens} new tokens at "
          f"{t.decode_tokens_per_s:.1f} tok/s{speculated}, stopped by {result.finish_reason}]", file=sys.stderr)


def _chat(args) -> None:
    from .chat_session import ChatSession

    model = _load(args)
    session = ChatSession(model, _sampling(args), args.max_new_tokens)
    print(f"edgeinfer chat: {args.package} on {args.device} (context {model.context_length}); "
          "/reset clears history, /quit or Ctrl-D ends", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            session.reset()
            continue
        if not line.strip():
            continue
        for piece in session.send(line):
            print(piece, end="", flush=True)
        print()


def _serve(args) -> None:
    try:
        from .serve.server import run_server
        from .serve.settings import ServeSettings
    except ImportError as exc:
        raise EdgeInferError(f"edgeinfer serve needs the [serve] extra ({exc.name} is missing): "
                             "pip install 'edgeinfer[serve]'") from None
    for name, value, least in (("--parallel", args.parallel, 1), ("--queue", args.queue, 0),
                               ("--read-timeout", args.read_timeout, 0.1), ("--shutdown-timeout", args.shutdown_timeout, 0),
                               ("--max-body-mb", args.max_body_mb, 0.001), ("--cache-mb", args.cache_mb, 0)):
        if value is not None and not value >= least:
            raise EdgeInferError(f"{name} must be at least {least}, got {value}")
    model = _load(args)
    source = Path(args.package)
    settings = ServeSettings(
        model_id=args.alias or (source.name if source.is_dir() else args.package), host=args.host, port=args.port,
        parallel=args.parallel, queue=args.parallel * 4 if args.queue is None else args.queue, api_key=args.api_key,
        read_timeout_s=args.read_timeout, shutdown_timeout_s=args.shutdown_timeout,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), cache_bytes=int(args.cache_mb * (1 << 20)),
    )

    def announce(url: str) -> None:
        print(f"edgeinfer serve: {settings.model_id} on {args.device} at {url} (parallel {settings.parallel}, "
              f"queue {settings.queue}{', API key required' if settings.api_key else ''}); Ctrl-C stops", flush=True)
        if not settings.api_key and settings.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"edgeinfer: {settings.host} is reachable from other machines and no --api-key is set: "
                  "anyone who can reach it can use the model", file=sys.stderr, flush=True)

    run_server(model, settings, announce)


def _devices(args) -> None:
    from .backends import backend_names, get_backend

    for base in backend_names():
        for name in [base, *(f"{base}:{v}" for v in get_backend(base).variants)]:
            backend = get_backend(name)
            status = backend.availability()
            detail = backend.device_description() if status.ok else str(status)
            print(f"{name:13} {'available' if status.ok else 'not available':14} {detail}")


def _bench(args) -> None:
    from .bench.cli import run_bench

    run_bench(args)


def _table(args) -> None:
    from .bench.results import load_results, markdown_table

    print(markdown_table(load_results(args.files)))


def build_parser() -> argparse.ArgumentParser:
    from .backends import backend_names
    from .export.options import ATTENTIONS, EIGHT_BIT_RULES, PRECISIONS, TARGETS
    from .bench.cli import add_speculate_argument
    from .sampler import SamplingParams

    DEFAULTS = SamplingParams()  # noqa: N806 - the one place sampling defaults live
    parser = argparse.ArgumentParser(prog="edgeinfer", description="On-device LLM runtime: export, run, chat, bench.")
    parser.add_argument("--version", action="version", version=f"edgeinfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "export", help="export a checkpoint to an ONNX package",
        description="Export a checkpoint to an ONNX package. Checkpoints from strangers are untrusted: files in a "
        "checkpoint folder that are links to places outside it (outside the repo's cache folder for hub ids) are "
        "refused unless --follow-symlinks; -o must lie outside the source, and --force replaces only an earlier "
        "edgeinfer package or an empty folder.",
    )
    p.add_argument("source", help="Hugging Face folder, .gguf file, preset:NAME, or hub id ORG/NAME")
    p.add_argument("-o", "--output", required=True, help="package folder to write")
    p.add_argument("--precision", default="w4a16", choices=PRECISIONS)
    p.add_argument("--target", default="cpu", choices=TARGETS)
    p.add_argument("--context", type=int, default=None,
                   help="context length (KV cache size) in tokens (default: 4096, or the model's limit if smaller)")
    p.add_argument("--block-size", type=int, help="4-bit block size (default: 128 on cpu/cuda, the fastest; 16 on qnn, the most faithful; 32 on openvino, "
                   "a GGUF Q4_K sub-block)")
    p.add_argument("--symmetric", action="store_true", help="4-bit without zero points (default: asymmetric)")
    p.add_argument("--uniform-bits", action="store_true", help="4 bits everywhere (default: 8-bit v/down in some layers)")
    p.add_argument("--rounding", choices=["gptq", "search", "nearest"],
                   help="w4a16 weights quantized from floats: nearest (cpu/cuda default) = round to nearest; gptq = scales "
                        "searched for the inputs seen on real text and GPTQ's error compensation; search = the "
                        "searched scales, rounded to nearest (gptq/search: 3x the export time, no end-to-end gain "
                        "measured yet, bench/results/awq-qwen2.5-coder-1.5b.md)")
    p.add_argument("--embedding-block-size", type=int,
                   help="4-bit embedding table's block (cpu/cuda; default: --block-size; a gather reads it, so no speed cost)")
    p.add_argument("--eight-bit", choices=EIGHT_BIT_RULES,
                   help="w4a16 from floats: which matmuls keep 8 bits (q4km: v/down in llama.cpp Q4_K_M's layers; "
                        "attention-down: q|k|v, o and down in every layer, lm_head 4-bit; default: attention-down on "
                        "cpu, q4km elsewhere)")
    p.add_argument("--lm-head-bits", type=int, choices=[0, 4, 8],
                   help="lm_head weights (0 = float; default: 4 under attention-down from a float source, else 8)")
    p.add_argument("--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4], help="MatMulNBits compute type (4 = int8)")
    p.add_argument("--all-logits", action="store_true", help="prefill returns logits for every position")
    p.add_argument("--requantize", action="store_true",
                   help="quantized GGUF: dequantize and quantize again to --block-size (default: keep the file's own "
                   "Q4_0/Q4_1/Q8_0/Q4_K/Q5_K/Q6_K blocks, lossless)")
    p.add_argument("--float-embeddings", action="store_true", help="keep the embedding table in float")
    p.add_argument("--prefill-chunk", type=int, default=128, help="qnn, openvino: tokens per static prefill run")
    p.add_argument("--attention", choices=ATTENTIONS, default=None,
                   help="cpu/cuda attention: gqa (onnxruntime's GroupQueryAttention) or grouped (cpu only: keys and "
                        "values read once per kv head); default: the target's (gqa)")
    p.add_argument("--exact-speculation", action=argparse.BooleanOptionalAction, default=None,
                   help="cpu: decode's attention takes a padding row so that greedy speculation gives plain decoding's "
                        "tokens bit for bit (decode ~2%% slower at 128 cached tokens, 11-16%% at 4064); default: on where "
                        "the matmuls allow exactness (a GGUF's own blocks, or blocks of 16/32)")
    p.add_argument("--compile", action="store_true", help="qnn: also compile the context binaries on this host (openvino: its compiled blobs)")
    p.add_argument("--force", action="store_true",
                   help="replace OUTPUT if it is an edgeinfer package (never another folder, never the source)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="read checkpoint files that link outside the checkpoint folder (only for links you trust)")
    p.set_defaults(func=_export)

    def generation_args(p):
        p.add_argument("--device", default="cpu", help=", ".join(backend_names()))
        p.add_argument("--max-new-tokens", type=int, default=512)
        p.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="0 = greedy")
        p.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="0 = off")
        p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
        p.add_argument("--min-p", type=float, default=DEFAULTS.min_p)
        p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty)
        p.add_argument("--seed", type=int, default=DEFAULTS.seed)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--allow-fallback", action="store_true", help="qnn: run unsupported nodes on the CPU")
        add_speculate_argument(p, default=["auto"], note="lookup where it measures faster, plain decoding elsewhere; "
                               "the output is the same either way")

    p = sub.add_parser("run", help="generate a reply to one prompt")
    p.add_argument("package", nargs="?", default=DEFAULT_RUN_MODEL,
                   help=f"package folder, or a source to export into the cache first (default: {DEFAULT_RUN_MODEL})")
    p.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT)
    generation_args(p)
    p.add_argument("--raw", action="store_true", help="feed the prompt as the tokenizer encodes it, no chat template")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.add_argument("--ignore-eos", action="store_true", help="generate exactly --max-new-tokens (benchmarking)")
    p.set_defaults(func=_run)

    p = sub.add_parser("chat", help="interactive chat with history")
    p.add_argument("package", help="package folder, or a source to export into the cache first")
    generation_args(p)
    p.set_defaults(func=_chat)

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the [serve] extra)",
                       description="Serve one model over OpenAI's API: /v1/chat/completions, /v1/completions, "
                       "/v1/models, /health. Sampling defaults are the run command's; requests override them.")
    p.add_argument("package", help="package folder, or a source to export into the cache first")
    p.add_argument("--device", default="cpu", help=", ".join(backend_names()))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8080, help="0: any free port (the URL is printed)")
    p.add_argument("--parallel", type=int, default=4, help="requests that generate at once, each with its own KV cache")
    p.add_argument("--queue", type=int, default=None, help="requests that wait for a slot; beyond them, 503 "
                   "(default: 4 x --parallel)")
    p.add_argument("--api-key", default=os.environ.get("EDGEINFER_API_KEY"),
                   help="require `Authorization: Bearer KEY` on every route but /health (default: $EDGEINFER_API_KEY)")
    p.add_argument("--alias", help="the model name /v1/models lists (default: the package folder's name)")
    p.add_argument("--cache-mb", type=float, default=1024, help="memory for kept KV caches of earlier requests, "
                   "whose prompts a conversation's next turn reuses (0: off)")
    p.add_argument("--max-body-mb", type=float, default=8, help="largest request body")
    p.add_argument("--read-timeout", type=float, default=30, help="seconds a client gets to send a request's "
                   "headers, and again its body")
    p.add_argument("--shutdown-timeout", type=float, default=10, help="on Ctrl-C or SIGTERM, seconds running "
                   "requests get to finish before they are cancelled")
    p.add_argument("--threads", type=int, default=None)
    add_speculate_argument(p, default=["auto"], note="lookup where it measures faster for greedy requests")
    p.add_argument("--allow-fallback", action="store_true", help="qnn: run unsupported nodes on the CPU")
    p.set_defaults(func=_serve)

    p = sub.add_parser("verify", help="a qnn package's numerics beside a float reference, on real text")
    p.add_argument("package")
    p.add_argument("--reference", help="a float package of the same weights: `--target qnn --precision fp32` gives "
                   "per-layer SQNR too, a cpu fp32 package the logits only")
    p.add_argument("--text", help="a UTF-8 text file (default: the source of Python's textwrap and argparse)")
    p.add_argument("--positions", type=int, default=512, help="scored positions after the first prefill chunk")
    p.add_argument("--device", default="cpu", help="also run the package here (qnn, openvino) and compare it with the CPU EP")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the package files")
    p.set_defaults(func=_verify)

    p = sub.add_parser("eval", help="perplexity over a text; top-1 agreement and KL divergence against a reference",
                       description="Perplexity of PACKAGE over a text and, with --reference, the figures llama.cpp's "
                       "llama-perplexity --kl-divergence prints (same top token, mean KLD, PPL ratio), with its "
                       "chunking: chunks of --context tokens from an empty cache, the second half of each scored.")
    p.add_argument("packages", nargs="+", metavar="PACKAGE", help="one or more packages, scored on the same chunks")
    p.add_argument("--text", help="a UTF-8 text file (default: the source of Python's textwrap and argparse)")
    p.add_argument("--reference", help="a package (a --precision fp32 export of the same source), or a GGUF file or "
                   "Hugging Face folder that transformers runs in float32")
    p.add_argument("--context", type=int, default=512, help="tokens per chunk (llama-perplexity -c; default 512)")
    p.add_argument("--chunks", type=int, default=5, help="chunks to score (default 5: 1,275 tokens; 0 = all)")
    p.add_argument("--device", action="append", help="where the packages run (default cpu): once for all, or once per "
                   "package in order (the reference runs on the CPU EP)")
    p.add_argument("--batched", action="store_true", help="score each chunk's second half in one run that returns a "
                   "row per token (speculation's verify path) instead of one decode step per token: many times faster "
                   "on a long text; packages exported with --all-logits run whole chunks anyway")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the figures to this file (with each chunk's own figures)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("devices", help="list backends and whether they can run here")
    p.set_defaults(func=_devices)

    from .bench.cli import add_bench_arguments

    p = sub.add_parser("bench", help="measure TTFT, prefill and decode speed; fill the Performance Reference table")
    add_bench_arguments(p)
    p.set_defaults(func=_bench)

    p = sub.add_parser("table", help="merge bench result JSON files into one reference table")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EdgeInferError as exc:
        print(f"edgeinfer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nedgeinfer: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
