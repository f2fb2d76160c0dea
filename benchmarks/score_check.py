"""Score `idempotent check` against hand-made labels of public projects.

Each file in ``benchmarks/check_labels/`` names a public repository, the commit that was read,
and every state-changing handler (``path:Qualname`` -> HTTP methods) found by reading its code.
Checkouts are not part of this repository: put one directory per project (named like the
label file) under a directory of your choice and point this script at it::

    python benchmarks/score_check.py /tmp/checkouts            # every project found there
    python benchmarks/score_check.py /tmp/checkouts --json score.json --show

For each project it prints recall, precision, the number of files and files per second (wall
clock, and per second of CPU time, which a busy machine does not skew), and
with ``--show`` the missed handlers and the findings that are not labelled.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from idempotent.check.config import DEFAULT_METHODS, CheckConfig
from idempotent.check.runner import check

LABELS = Path(__file__).with_name("check_labels")


def score(checkout: Path, labels: dict[str, list[str]]) -> dict[str, object]:
    """Run the checker on one checkout and compare its IDEM001 findings (handler and methods)
    with the labels."""
    expected = {h: set(m) & DEFAULT_METHODS for h, m in labels.items() if set(m) & DEFAULT_METHODS}
    started, cpu_started = time.perf_counter(), time.process_time()
    report = check(["."], CheckConfig(), cwd=checkout)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    found = {f"{f.path}:{f.handler}": set(f.methods) for f in report.findings if f.code == "IDEM001"}
    # A hit names the labelled handler with the labelled methods.
    hits = {h for h, methods in found.items() if expected.get(h) == methods}
    return {
        "files": report.files,
        "seconds": round(elapsed, 3),
        "files_per_second": round(report.files / elapsed, 1) if elapsed else 0.0,
        # CPU time: on a shared machine the wall clock measures the other processes too.
        "files_per_cpu_second": round(report.files / cpu, 1) if cpu else 0.0,
        "labelled": len(expected),
        "found": len(found),
        "recall": round(len(hits) / len(expected), 4) if expected else 1.0,
        "precision": round(len(hits) / len(found), 4) if found else 1.0,
        "missed": sorted(h for h in expected if h not in hits),
        "unexpected": sorted(h for h in found if h not in hits),
        "skipped_files": len(report.warnings),
    }


def main(argv: list[str] | None = None) -> int:
    """Score every labelled project whose checkout is present; exit 1 if none is."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkouts", type=Path, help="directory holding one checkout per project")
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--json", type=Path, help="also write the scores to this file")
    parser.add_argument("--show", action="store_true", help="list missed and unexpected handlers")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, object]] = {}
    for label_file in sorted(args.labels.glob("*.json")):
        data = json.loads(label_file.read_text(encoding="utf-8"))
        checkout = args.checkouts / data["project"]
        if not checkout.is_dir():
            print(f"skip {data['project']}: no checkout at {checkout}", file=sys.stderr)
            continue
        result = score(checkout, data["handlers"])
        result["commit"] = data["commit"]
        results[data["project"]] = result
    if not results:
        print("no checkout found; see the docstring", file=sys.stderr)
        return 1
    columns = ("files", "labelled", "found", "recall", "precision", "files/s", "/cpu-s")
    header = f"{'project':30} " + " ".join(f"{c:>9}" for c in columns)
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:30} {r['files']:>9} {r['labelled']:>9} {r['found']:>9} {r['recall']:>9.3f} "
            f"{r['precision']:>9.3f} {r['files_per_second']:>9.0f} {r['files_per_cpu_second']:>9.0f}"
        )
        if args.show:
            for handler in r["missed"]:  # type: ignore[attr-defined]
                print(f"    missed      {handler}")
            for handler in r["unexpected"]:  # type: ignore[attr-defined]
                print(f"    unexpected  {handler}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of this process: {peak:.0f} MiB")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
