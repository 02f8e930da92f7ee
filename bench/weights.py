"""The real Qwen2 GGUF (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, the target's shape): one name for it everywhere.

EDGEINFER_QWEN_GGUF names the file; without it, weights/ in the repository (git-ignored), where
`bash bench/fetch_real_weights.sh` puts it (../shared/recipes/real-weights.md, pip only).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = "EDGEINFER_QWEN_GGUF"
NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
FETCH_HINT = f"bash bench/fetch_real_weights.sh (writes weights/{NAME}), or set {ENV} to the file"


def real_gguf() -> Path:
    """Where the real GGUF is expected (it may be absent: callers check and say FETCH_HINT)."""
    return Path(os.environ.get(ENV) or REPO / "weights" / NAME)
