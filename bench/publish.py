"""Rebuild the README's Performance Reference table from every result in bench/results/.

    python bench/publish.py            # rewrites the block between <!-- reference-table --> markers
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeinfer.bench.results import SCHEMA, load_results, markdown_table

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import json

    files = sorted(p for p in (ROOT / "bench" / "results").glob("*.json")
                   if json.loads(p.read_text()).get("schema") == SCHEMA)
    table = markdown_table(load_results(files)) if files else "(no results committed yet)"
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    block = f"<!-- reference-table -->\n{table}\n<!-- /reference-table -->"
    readme.write_text(re.sub(r"<!-- reference-table -->.*?<!-- /reference-table -->", lambda _: block, text, flags=re.S),
                      encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
