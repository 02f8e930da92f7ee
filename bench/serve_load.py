"""`edgeinfer serve` under load beside the Python API: TTFT, decode tok/s and memory with 1 and N clients at once.

    python bench/serve_load.py [SOURCE_OR_PACKAGE] [--clients 1 4] [--prompt-tokens 128] [--new-tokens 64] [--rounds 2]

Default source: preset:deepseek-r1-distill-qwen-1.5b (random weights, the real shape), exported once into the
cache. Each round starts C requests at once (a barrier), each with its own random prompt (so no request reuses
another's cache), greedy, exactly --new-tokens tokens (ignore_eos):
- api: C threads call `model.stream_ids` on one loaded model in this process;
- server: C threads stream `/v1/completions` (token-id prompts, SSE) from `edgeinfer serve --parallel 4
  --cache-mb 0` in a subprocess.
TTFT is measured by the caller (request sent -> first text piece); decode tok/s is each request's own (tokens
after the first over the time from the first to the last, edgeinfer's definition: the server's `timings`, the
API's `result.timings`); "aggregate" is every request's tokens over the round's wall time. Memory: the peak
RSS of the process holding the model during a round, minus its RSS when idle after a warm-up request, per
request of the round. Then a chat's second turn is timed on a server with the prefix cache on and off.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_SOURCE = "preset:deepseek-r1-distill-qwen-1.5b"


class PeakRSS:
    """The largest resident set of process PID while a `with` block runs (sampled every 20 ms)."""

    def __init__(self, pid: int):
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()

    def rss(self) -> int:
        return self.process.memory_info().rss

    def __enter__(self) -> "PeakRSS":
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def at_once(count: int, request) -> tuple[list[dict], float]:
    """Run REQUEST(i) in COUNT threads released together; their records and the wall time until the last ends."""
    barrier, records = threading.Barrier(count + 1), [None] * count

    def worker(i: int) -> None:
        barrier.wait()
        records[i] = request(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return records, time.perf_counter() - started


def api_request(model, ids: list[int], new_tokens: int) -> dict:
    from edgeinfer.sampler import GREEDY

    started, first = time.perf_counter(), None
    stream = model.stream_ids(ids, new_tokens, GREEDY, ignore_eos=True)
    for _ in stream:
        first = first or time.perf_counter()
    t = stream.result.timings
    return {"ttft_ms": (first - started) * 1e3, "engine_ttft_ms": t.ttft_s * 1e3, "new_tokens": t.new_tokens,
            "decode_tokens_per_s": t.decode_tokens_per_s, "prefill_tokens_per_s": t.prefill_tokens_per_s}


class SSEClient:
    """One kept-alive HTTP connection per simulated client, as an app holds one (http.client: no client-side
    machinery of its own between the socket and the timings)."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=1800)

    def completion(self, ids: list[int], new_tokens: int) -> dict:
        body = json.dumps({"prompt": ids, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True, "stream": True})
        started, first, timings = time.perf_counter(), None, None
        self.connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
        while line := response.readline():
            if not line.startswith(b"data: {"):
                if line.startswith(b"data: [DONE]"):
                    response.read()  # the chunked body's end: the connection is ready for the next request
                    break
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                first = first or time.perf_counter()
            timings = chunk.get("timings", timings)
        return {"ttft_ms": (first - started) * 1e3, "engine_ttft_ms": timings["ttft_ms"],
                "new_tokens": timings["predicted_n"], "decode_tokens_per_s": timings["predicted_per_second"],
                "prefill_tokens_per_s": timings["prompt_per_second"]}


def measure(label: str, pid: int, request, prompts, clients: list[int], rounds: int, new_tokens: int) -> list[dict]:
    """Rows for each client count: medians over every request of ROUNDS rounds, and memory per request."""
    request(0, prompts(-1, 0))  # warm-up: sessions, arena, page cache
    idle = psutil.Process(pid).memory_info().rss
    rows = []
    for count in clients:
        records, walls, peaks = [], [], []
        for r in range(rounds):
            with PeakRSS(pid) as memory:
                batch, wall = at_once(count, lambda i, r=r: request(i, prompts(r, i)))
            records += batch
            walls.append(wall)
            peaks.append(memory.peak)
        median = lambda key: statistics.median(x[key] for x in records)  # noqa: E731
        rows.append({
            "interface": label, "clients": count, "requests": len(records),
            "ttft_ms": median("ttft_ms"), "ttft_ms_max": max(x["ttft_ms"] for x in records),
            "engine_ttft_ms": median("engine_ttft_ms"), "decode_tokens_per_s": median("decode_tokens_per_s"),
            "prefill_tokens_per_s": median("prefill_tokens_per_s"),
            "aggregate_tokens_per_s": count * new_tokens / statistics.median(walls),
            "idle_rss_mib": idle / 2**20, "peak_rss_mib": max(peaks) / 2**20,
            "mib_per_request": (max(peaks) - idle) / 2**20 / count,
            "records": records,
        })
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in rows[-1].items() if k != "records"}),
              flush=True)
    return rows


class ServerProcess:
    def __init__(self, package: Path, log: Path, *args: str):
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "edgeinfer.cli", "serve", str(package), "--port", "0", *args],
                                        stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not (found := re.search(r"at (http://[0-9.]+:[0-9]+)", log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        self.url = found.group(1)
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(120)


def second_turn(url: str, words: str, new_tokens: int) -> dict:
    """A chat's two turns; the second turn's usage and timings."""
    first = [{"role": "user", "content": words}]
    ask = {"max_tokens": new_tokens, "temperature": 0, "ignore_eos": True}
    one = httpx.post(f"{url}/v1/chat/completions", json={"messages": first, **ask}, timeout=1800).json()
    second = [*first, {"role": "assistant", "content": one["choices"][0]["message"]["content"] or "Fine."},
              {"role": "user", "content": "Say more about it."}]
    two = httpx.post(f"{url}/v1/chat/completions", json={"messages": second, **ask}, timeout=1800).json()
    t = two["timings"]
    return {"prompt_tokens": two["usage"]["prompt_tokens"], "cached_tokens": two["usage"]["prompt_tokens_details"]["cached_tokens"],
            "prefilled_tokens": t["prompt_n"], "prefill_ms": t["prompt_ms"], "ttft_ms": t["ttft_ms"]}


def cache_growth(model, vocab: int) -> dict:
    """This process's RSS growth (MiB) as generators are held: 4 fed 20 tokens each, then one fed 528, then none.
    A warm-up with both shapes first, so that onnxruntime's arena has grown already: what is left is the caches."""
    import gc

    from edgeinfer.bench.profiler import random_prompt
    from edgeinfer.sampler import GREEDY

    def fed(tokens: int, seed: int):
        generator = model.generator(GREEDY)
        generator.append(random_prompt(tokens, vocab, seed))
        return generator

    for tokens in (528, 20):
        fed(tokens, 0).extend(2)
    process = psutil.Process()
    gc.collect()
    base = process.memory_info().rss
    grown = lambda: (process.memory_info().rss - base) / 2**20  # noqa: E731
    held = [fed(20, seed) for seed in range(1, 5)]
    growth = {"4 generators x 20 tokens": grown()}
    held.append(fed(528, 9))
    growth["+1 generator x 528 tokens"] = grown()
    del held
    gc.collect()
    growth["all dropped"] = grown()
    return growth


def markdown(rows: list[dict], turns: dict, settings: dict) -> str:
    lines = [
        f"# `edgeinfer serve` under load: {settings['model']} on {settings['machine']}",
        "",
        f"`{settings['command']}`",
        "",
        f"Prompt {settings['prompt_tokens']} tokens (random ids, one per request), {settings['new_tokens']} new tokens "
        f"(greedy, ignore_eos), {settings['rounds']} rounds per row; server: `--parallel 4 --cache-mb 0`, "
        "`/v1/completions` streamed. Medians over every request of the rounds.",
        "",
        "| interface | clients | TTFT (client) | TTFT (engine) | decode tok/s per request | aggregate tok/s | "
        "RSS idle | RSS peak | memory per request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['interface']} | {r['clients']} | {r['ttft_ms']:.0f} ms | {r['engine_ttft_ms']:.0f} ms | "
                     f"{r['decode_tokens_per_s']:.1f} | {r['aggregate_tokens_per_s']:.1f} | {r['idle_rss_mib']:.0f} MiB | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['mib_per_request']:.0f} MiB |")
    growth = settings["cache_growth_mib"]
    lines += ["", f"KV cache per request by its tokens: {settings['kv_mib_per_request']:.1f} MiB "
              f"({settings['kv_bytes_per_token']} bytes per token x (prompt + new tokens)); a whole "
              f"{settings['context_length']}-token cache: {settings['kv_bytes_per_token'] * settings['context_length'] / 2**20:.0f} MiB. "
              "RSS growth of the API process while it holds generators, after a warm-up: "
              + ", ".join(f"{k} {v:+.0f} MiB" for k, v in growth.items()) + ".", "",
              "A chat's second turn (first turn: the same prompt length, as text; the second turn's server timings):", "",
              "| prefix cache | prompt tokens | cached | prefilled | prefill | TTFT |", "|---|---|---|---|---|---|"]
    for name, t in turns.items():
        lines.append(f"| {name} | {t['prompt_tokens']} | {t['cached_tokens']} | {t['prefilled_tokens']} | "
                     f"{t['prefill_ms']:.0f} ms | {t['ttft_ms']:.0f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", default=DEFAULT_SOURCE, help="package folder or export source")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = ap.parse_args()

    import edgeinfer
    from edgeinfer.backends import get_backend
    from edgeinfer.bench.profiler import random_prompt
    from edgeinfer.export.cached import resolve_package
    from edgeinfer.serve.prefix_cache import kv_bytes_per_token

    package = resolve_package(args.source, "cpu")
    model = edgeinfer.load(package, verify=False)
    vocab = model.spec.vocab_size

    def prompts(round_: int, client: int) -> list[int]:
        return random_prompt(args.prompt_tokens, vocab, seed=1000 * (round_ + 2) + client)

    growth = cache_growth(model, vocab)
    print(json.dumps({"cache_growth_mib": growth}), flush=True)
    rows = measure("api", psutil.Process().pid, lambda i, ids: api_request(model, ids, args.new_tokens),
                   prompts, args.clients, args.rounds, args.new_tokens)
    sentence = "The quick brown fox jumps over the lazy dog while the cat watches from the window. "
    words = model.tokenizer.decode(model.tokenizer.encode(sentence * args.prompt_tokens)[: args.prompt_tokens])
    kv_per_token = kv_bytes_per_token(model.manifest)
    context_length = model.context_length
    machine = get_backend("cpu").device_description()
    del model  # the server loads its own copy

    turns = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(package, Path(tmp) / "server.log", "--parallel", "4", "--cache-mb", "0")
        clients = [SSEClient(server.url) for _ in range(max(args.clients))]
        rows += measure("server", server.process.pid, lambda i, ids: clients[i].completion(ids, args.new_tokens),
                        prompts, args.clients, args.rounds, args.new_tokens)
        turns["off (--cache-mb 0)"] = second_turn(server.url, words, 32)
        server.stop()
        server = ServerProcess(package, Path(tmp) / "server-cache.log", "--parallel", "4")
        turns["on (default)"] = second_turn(server.url, words, 32)
        server.stop()
    print(json.dumps(turns), flush=True)

    settings = {
        "model": args.source, "package": str(package), "machine": machine, "platform": platform.platform(),
        "command": "python bench/serve_load.py " + " ".join(sys.argv[1:]), "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "kv_bytes_per_token": kv_per_token,
        "kv_mib_per_request": kv_per_token * (args.prompt_tokens + args.new_tokens) / 2**20,
        "context_length": context_length, "cache_growth_mib": growth,
    }
    text = markdown(rows, turns, settings)
    print(text)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows, "second_turn": turns},
                                                            indent=2))
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
