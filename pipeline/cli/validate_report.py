"""The ``validate`` command's reports: text (problems on stderr, a line per spec), JSON, JUnit."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pipeline.spec.errors import Problem

Results = list[tuple[Path, list[Problem]]]


def _errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def text(results: Results) -> str:
    """Each problem on stderr as it is found; returns a line per spec: ok, or FAILED (n errors)."""
    out = ""
    for path, problems in results:
        errors = _errors(problems)
        for p in problems:
            print(p.format(), file=sys.stderr)
        out += (
            f"{path}: {'FAILED' if errors else 'ok'}"
            + (f" ({len(errors)} error{'s' if len(errors) > 1 else ''})" if errors else "")
            + "\n"
        )
    return out


def as_json(results: Results) -> str:
    return (
        json.dumps(
            [
                {
                    "spec": str(path),
                    "ok": not _errors(ps),
                    "problems": [p.as_dict() for p in ps],
                }
                for path, ps in results
            ],
            indent=2,
        )
        + "\n"
    )


def junit(results: Results) -> str:
    cases = []
    failures = 0
    for path, problems in results:
        errors = _errors(problems)
        body = ""
        if errors:
            failures += 1
            msg = "\n".join(p.format(source=False) for p in errors)
            body = f"<failure message={quoteattr(errors[0].message)}>{escape(msg)}</failure>"
        cases.append(f'  <testcase classname="specs" name={quoteattr(str(path))}>{body}</testcase>')
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuite name="pipeline validate" tests="{len(results)}" failures="{failures}">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )


FORMATS = {"text": text, "json": as_json, "junit": junit}
