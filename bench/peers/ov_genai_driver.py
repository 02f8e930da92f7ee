"""Time openvino-genai's LLMPipeline on one OpenVINO IR folder; run by the peer venv's Python, prints JSON on stdout.

    python bench/peers/ov_genai_driver.py MODEL_DIR --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2
Each run: random prompt ids, batch 1, greedy, exactly GEN_LEN new tokens; TTFT and the time per output token from
the pipeline's own perf_metrics (decode rate = 1000 / TPOT ms). One warm-up run per prompt length. OpenVINO's CPU
defaults are kept (what its users get): the inference and KV cache precisions it chose are reported.
"""

import argparse
import json
import random

import numpy as np
import openvino as ov
import openvino_genai as genai


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-lens", type=int, nargs="+", required=True)
    ap.add_argument("--gen-len", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    pipe = genai.LLMPipeline(args.model_dir, "CPU", INFERENCE_NUM_THREADS=args.threads)
    config = genai.GenerationConfig(max_new_tokens=args.gen_len, min_new_tokens=args.gen_len, do_sample=False)
    rng = random.Random(0)
    runs = []
    for p in args.prompt_lens:
        for i in range(args.repeat + 1):
            ids = np.array([[rng.randrange(0, 150000) for _ in range(p)]], dtype=np.int64)  # below the special tokens
            inputs = genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
            result = pipe.generate(inputs, config)
            metrics = result.perf_metrics
            assert metrics.get_num_generated_tokens() == args.gen_len, metrics.get_num_generated_tokens()
            ttft_ms, tpot_ms = metrics.get_ttft().mean, metrics.get_tpot().mean
            if i:  # the first run warms up
                runs.append({"prompt_len": p, "ttft_ms": ttft_ms, "prefill_tok_s": p / ttft_ms * 1e3, "decode_tok_s": 1e3 / tpot_ms})
    core = ov.Core()
    precision = lambda name: core.get_property("CPU", name).to_string()  # noqa: E731  e.g. bf16, u8
    print(json.dumps({"openvino": ov.__version__.split("-")[0], "openvino_genai": genai.__version__.split("-")[0],
                      "inference_precision": precision("INFERENCE_PRECISION_HINT"),
                      "kv_cache_precision": precision("KV_CACHE_PRECISION"), "runs": runs}))


if __name__ == "__main__":
    main()
