"""Turn the accounting lines of the fault and bad-input tests (tests/accounting.py) into the
markdown reliability table: fault or input class, cases tried, requests sent, lost, errors seen.

Usage:
    TIDESERVE_ACCOUNTING=/tmp/accounting.jsonl .venv/bin/python -m pytest TESTS...
    .venv/bin/python scripts/reliability_table.py /tmp/accounting.jsonl

The file is appended to, so a test run twice has two lines per fault: the last one counts. Rows
keep the order in which the tests first ran.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HEADER = ("fault or input class", "cases tried", "requests sent", "lost", "errors seen", "test")


def latest_entries(lines: list[str]) -> list[dict[str, Any]]:
    """One entry per test and fault, the last one written, in the order they first appear."""
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for line in lines:
        if line.strip():
            entry = json.loads(line)
            entries[(entry["test"], entry["fault"])] = entry
    return list(entries.values())


def errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {count:,}" for code, count in errors.items()) or "none"


def table(entries: list[dict[str, Any]]) -> str:
    rows = [HEADER, ("---", "---:", "---:", "---:", "---", "---")]
    for e in entries:
        test = e["test"].removeprefix("tests/")
        rows.append((e["fault"], f"{e['cases']:,}", f"{e['sent']:,}", f"{e['lost']:,}",
                     errors_text(e["errors"]), f"`{test}`" if test else ""))
    sent = sum(e["sent"] for e in entries)
    lost = sum(e["lost"] for e in entries)
    rows.append(("**all**", "", f"**{sent:,}**", f"**{lost:,}**", "", ""))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("accounting", type=Path, help="JSON lines written by the tests")
    args = parser.parse_args(argv)
    entries = latest_entries(args.accounting.read_text(encoding="utf-8").splitlines())
    if not entries:
        print(f"{args.accounting}: no accounting lines", file=sys.stderr)
        return 1
    sys.stdout.write(table(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
