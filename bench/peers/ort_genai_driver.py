"""Time onnxruntime-genai on one exported model; run by the peer venv's Python, prints JSON on stdout.

    python bench/peers/ort_genai_driver.py MODEL_DIR --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2 [--device cuda]
Each run: random prompt ids, batch 1, greedy; TTFT = append_tokens + first generate_next_token,
decode rate = (N - 1) / (time of the last token - time of the first). One warm-up run per prompt length.
"""

import argparse
import json
import random
import time

import onnxruntime as ort
import onnxruntime_genai as og


def load(model_dir: str, threads: int, device: str = "cpu") -> og.Model:
    config = og.Config(model_dir)
    if device == "cpu":
        config.clear_providers()
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    # cuda: the folder's own provider options (an edgeinfer cuda package asks for CUDA graphs)
    return og.Model(config)


def one_run(model: og.Model, prompt: list[int], gen_len: int) -> tuple[float, float]:
    params = og.GeneratorParams(model)
    total = len(prompt) + gen_len
    # min_length keeps random weights from stopping at EOS before gen_len tokens.
    params.set_search_options(do_sample=False, max_length=total, min_length=total)
    generator = og.Generator(model, params)
    t0 = time.perf_counter()
    generator.append_tokens(prompt)
    generator.generate_next_token()
    t_first = time.perf_counter()
    for _ in range(gen_len - 1):
        generator.generate_next_token()
    t_last = time.perf_counter()
    assert generator.token_count() == total, (generator.token_count(), total)
    return (t_first - t0) * 1e3, (gen_len - 1) / (t_last - t_first)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-lens", type=int, nargs="+", required=True)
    ap.add_argument("--gen-len", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    model = load(args.model_dir, args.threads, args.device)
    rng = random.Random(0)
    runs = []
    for p in args.prompt_lens:
        for i in range(args.repeat + 1):
            prompt = [rng.randrange(0, 150000) for _ in range(p)]  # below the special tokens
            ttft_ms, decode = one_run(model, prompt, args.gen_len)
            if i:  # the first run warms up
                runs.append({"prompt_len": p, "ttft_ms": ttft_ms, "prefill_tok_s": p / ttft_ms * 1e3, "decode_tok_s": decode})
    print(json.dumps({"onnxruntime": ort.__version__, "onnxruntime_genai": og.__version__, "runs": runs}))


if __name__ == "__main__":
    main()
