"""--plot: decode tok/s against context length, and prefill tok/s per prompt length."""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgeInferError


def plot_result(result: dict, path: str | Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeInferError("--plot needs matplotlib: pip install 'edgeinfer[plot]'") from None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    sweep = result.get("sweep") or []
    contexts = [p["context"] for p in sweep]
    left.plot(contexts, [p["decode_tokens_per_s"]["median"] for p in sweep], marker="o")
    left.set(xscale="log", xlabel="context (tokens in cache)", ylabel="decode tok/s", title="Decode vs context")
    left.set_xticks(contexts, [str(c) for c in contexts])
    left.minorticks_off()
    left.set_ylim(bottom=0)
    tests = result["tests"]
    right.bar([str(t["prompt_tokens"]) for t in tests], [t["summary"]["prefill_tokens_per_s"]["median"] for t in tests])
    right.set(xlabel="prompt tokens", ylabel="prefill tok/s", title="Prefill")
    fig.suptitle(f"{result['device_description']} · {result['backend']} · {result['model']['precision']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
