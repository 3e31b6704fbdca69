"""Does `tagi.eval.metrics.rouge_l` reproduce Google's `rouge-score` (what SNI papers report)?

Scores the 1,100 real GPT-3 predictions in ../shared/data/rouge-check/ and compares each with the
stored `rougeL`. Usage: python benchmarks/rouge_check.py [cases.jsonl]
Exit status: 0 all within 1e-6, 1 some mismatches, 2 the case file is missing.
"""

import json
import sys
import time
from pathlib import Path

from tagi.eval.metrics import rouge_l

DEFAULT_CASES = Path(__file__).resolve().parents[1].parent / "shared/data/rouge-check/gpt3-ni-v1-cases.jsonl"
TOLERANCE = 1e-6


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_CASES
    if not path.is_file():
        print(f"rouge-check cases not found at {path} (they live in the shared/ checkout)", file=sys.stderr)
        return 2
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    start = time.perf_counter()
    diffs = [abs(rouge_l(c["prediction"], c["references"]) - c["rougeL"]) for c in cases]
    seconds = time.perf_counter() - start
    mismatches = sum(d > TOLERANCE for d in diffs)
    print(f"cases: {len(cases)}  ({seconds:.2f} s, {1e3 * seconds / len(cases):.2f} ms/case)")
    print(f"max abs diff: {max(diffs):.3e}")
    print(f"mean abs diff: {sum(diffs) / len(diffs):.3e}")
    print(f"mismatches > {TOLERANCE:g}: {mismatches}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
