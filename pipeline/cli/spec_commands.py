"""Commands on specs alone: validate, schema, docs, checks. None imports torch or Prefect, so
``pipeline validate`` answers in a fraction of a second."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.cli.common import add_overrides


def add_commands(sub: Any) -> None:
    p = sub.add_parser("validate", help="check specs: schema, shapes and cross-field rules")
    p.add_argument("specs", nargs="+", type=Path)
    add_overrides(p)
    p.add_argument(
        "--resolved",
        action="store_true",
        help="print the resolved spec (extends, overrides, defaults applied) as YAML",
    )
    p.add_argument("--format", choices=["text", "json", "junit"], default="text")
    p.add_argument("-o", "--output", type=Path, help="write the report (or resolved spec) here")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.set_defaults(handler=validate)

    p = sub.add_parser("schema", help="write the spec's (or a search file's) JSON Schema")
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--search", action="store_true", help="the search file's schema instead")
    p.set_defaults(handler=schema)

    p = sub.add_parser(
        "docs",
        help="regenerate spec.schema.json, search.schema.json, docs/spec-reference.md and (when "
        "timm or its list changed) the timm backbone table",
    )
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--check", action="store_true", help="exit 1 if they are out of date")
    p.set_defaults(handler=docs)

    sub.add_parser("checks", help="list the cross-field checks").set_defaults(handler=checks)


def validate(args: argparse.Namespace) -> int:
    from pipeline import atomic
    from pipeline.cli.validate_report import FORMATS, Results
    from pipeline.spec.errors import SpecError
    from pipeline.spec.load import load_spec, to_yaml

    results: Results = []
    resolved = []
    for path in args.specs:
        try:
            spec = load_spec(path, args.overrides)
            problems = spec.warnings
            resolved.append(to_yaml(spec))
        except SpecError as err:
            problems = err.problems
        if args.strict:
            for p in problems:
                p.severity = "error"
        results.append((path, problems))
    failed = any(p.severity == "error" for _, ps in results for p in ps)

    text = "---\n".join(resolved) if args.resolved and not failed else FORMATS[args.format](results)
    if args.output and not (args.resolved and failed):  # no half-made resolved spec (dvc.yaml)
        atomic.write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 1 if failed else 0


def schema(args: argparse.Namespace) -> int:
    from pipeline import atomic

    if args.search:
        from pipeline.search.load import search_schema_text as schema_text
    else:
        from pipeline.spec.reference import schema_text

    if args.output:
        atomic.write_text(args.output, schema_text())
    else:
        sys.stdout.write(schema_text())
    return 0


def docs(args: argparse.Namespace) -> int:
    from pipeline.search.load import SCHEMA_FILE, search_schema_text
    from pipeline.spec.reference import stale_files, write_generated
    from pipeline.spec.timm_table import TABLE_FILE, is_current

    search_file = args.root / SCHEMA_FILE
    if args.check:
        stale = [] if is_current(args.root) else [TABLE_FILE]
        stale += stale_files(args.root)
        if not search_file.is_file() or search_file.read_text() != search_schema_text():
            stale.append(SCHEMA_FILE)
        for name in stale:
            print(f"{name} is out of date: run `pipeline docs`", file=sys.stderr)
        return 1 if stale else 0
    if not is_current(args.root):
        from pipeline.model.timm_table import write_table  # timm and torch: only for this

        # the schema's backbone names come from the table: it first, then the rest in a fresh
        # process (this one loaded the old table)
        print(f"measuring the timm architectures for {write_table(args.root)} ...")
        return subprocess.call([sys.executable, "-m", "pipeline", "docs", "--root", args.root])
    written = write_generated(args.root)
    search_file.write_text(search_schema_text())
    print("wrote " + ", ".join([*written, SCHEMA_FILE]))
    return 0


def checks(_: argparse.Namespace) -> int:
    from pipeline.spec.checks import CHECKS

    for info in CHECKS.values():
        print(f"{info.name:28} {info.doc}")
    return 0
