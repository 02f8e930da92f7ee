"""Rebuild the README's Performance Reference table from the headline results in bench/results/.

    python bench/publish.py [RESULT.json ...]   # rewrites the block between <!-- reference-table --> markers

With no arguments it uses HEADLINE: one current run per device (other files there are ablations and history).
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeinfer.bench.results import load_results, markdown_table

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = [
    "edgeinfer-cpu-epyc-2c.json",
    "cuda-h100/run4/edgeinfer_cuda_h100.json",
    "edgeinfer-qnn-htp-sim-tiny.json",
]


def main() -> None:
    import sys

    files = [Path(a) for a in sys.argv[1:]] or [ROOT / "bench" / "results" / name for name in HEADLINE]
    table = markdown_table(load_results(files))
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = f"<!-- reference-table -->\n{table}\n<!-- /reference-table -->"
    readme.write_text(re.sub(r"<!-- reference-table -->.*?<!-- /reference-table -->", lambda _: block, text, flags=re.S),
                      encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
