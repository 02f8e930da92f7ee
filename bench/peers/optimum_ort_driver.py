"""Time optimum's ORTModelForCausalLM.generate on one export; run by the peer venv's Python, prints JSON.

    python bench/peers/optimum_ort_driver.py MODEL_DIR --prompt-lens 128 --gen-len 64 --repeat 3 --threads 2
Each run: random prompt ids, batch 1, greedy. A streamer stamps each token as generate() emits it:
TTFT = first new token, decode rate = (N - 1) / (last - first). One warm-up run per prompt length.
"""

import argparse
import json
import time
from importlib.metadata import version

import onnxruntime as ort
import torch
from optimum.onnxruntime import ORTModelForCausalLM
from transformers.generation.streamers import BaseStreamer


class Stamps(BaseStreamer):
    """Records when generate() hands over the prompt (first put) and each new token."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def one_run(model, prompt: torch.Tensor, gen_len: int) -> tuple[float, float]:
    stamps = Stamps()
    t0 = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=gen_len,
                         min_new_tokens=gen_len, pad_token_id=0, streamer=stamps)
    assert out.shape[1] == prompt.shape[1] + gen_len and len(stamps.times) == gen_len + 1
    first, last = stamps.times[1], stamps.times[-1]
    return (first - t0) * 1e3, (gen_len - 1) / (last - first)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-lens", type=int, nargs="+", required=True)
    ap.add_argument("--gen-len", type=int, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    model = ORTModelForCausalLM.from_pretrained(args.model_dir, session_options=options, use_cache=True)
    generator = torch.Generator().manual_seed(0)
    runs = []
    for p in args.prompt_lens:
        for i in range(args.repeat + 1):
            prompt = torch.randint(0, 150000, (1, p), generator=generator)  # below the special tokens
            ttft_ms, decode = one_run(model, prompt, args.gen_len)
            if i:  # the first run warms up
                runs.append({"prompt_len": p, "ttft_ms": ttft_ms, "prefill_tok_s": p / ttft_ms * 1e3, "decode_tok_s": decode})
    versions = {name: version(name) for name in ("onnxruntime", "optimum", "optimum-onnx", "transformers", "torch")}
    print(json.dumps({"versions": versions, "runs": runs}))


if __name__ == "__main__":
    main()
