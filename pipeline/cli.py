"""The ``pipeline`` command. Subcommands import only what they need: ``validate`` never imports
torch, so it answers in a fraction of a second."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pipeline.spec.errors import Problem, SpecError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a spec field, e.g. -S train.epochs=3 (as dvc exp run -S)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check specs: schema, shapes and cross-field rules")
    p.add_argument("specs", nargs="+", type=Path)
    _add_overrides(p)
    p.add_argument(
        "--resolved",
        action="store_true",
        help="print the resolved spec (extends, overrides, defaults applied) as YAML",
    )
    p.add_argument("--format", choices=["text", "json", "junit"], default="text")
    p.add_argument("-o", "--output", type=Path, help="write the report (or resolved spec) here")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")

    p = sub.add_parser("summary", help="a Keras-style table of the model: shapes, params, MACs")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("--expand", action="store_true", help="list a backbone's own layers too")

    p = sub.add_parser("schema", help="write the spec's JSON Schema")
    p.add_argument("-o", "--output", type=Path)

    p = sub.add_parser("docs", help="regenerate spec.schema.json and the README's spec reference")
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--check", action="store_true", help="exit 1 if they are out of date")

    sub.add_parser("checks", help="list the cross-field checks")
    return parser


def _validate(args: argparse.Namespace) -> int:
    from pipeline.spec.load import load_spec, to_yaml

    results: list[tuple[Path, list[Problem]]] = []
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

    if args.resolved and not failed:
        text = "---\n".join(resolved)
    elif args.format == "json":
        text = (
            json.dumps(
                [
                    {
                        "spec": str(path),
                        "ok": not any(p.severity == "error" for p in ps),
                        "problems": [p.as_dict() for p in ps],
                    }
                    for path, ps in results
                ],
                indent=2,
            )
            + "\n"
        )
    elif args.format == "junit":
        text = _junit(results)
    else:
        text = ""
        for path, problems in results:
            errors = [p for p in problems if p.severity == "error"]
            for p in problems:
                print(p.format(), file=sys.stderr)
            text += (
                f"{path}: {'FAILED' if errors else 'ok'}"
                + (f" ({len(errors)} errors)" if errors else "")
                + "\n"
            )
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 1 if failed else 0


def _junit(results: list[tuple[Path, list[Problem]]]) -> str:
    cases = []
    failures = 0
    for path, problems in results:
        errors = [p for p in problems if p.severity == "error"]
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


def _summary(args: argparse.Namespace) -> int:
    from pipeline.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides)
    for p in spec.warnings:
        print(p.format(), file=sys.stderr)
    from pipeline.model.summary import summarize

    print(summarize(spec, expand=args.expand).table())
    return 0


def _schema(args: argparse.Namespace) -> int:
    from pipeline.spec.reference import schema_text

    if args.output:
        args.output.write_text(schema_text())
    else:
        sys.stdout.write(schema_text())
    return 0


def _docs(args: argparse.Namespace) -> int:
    from pipeline.spec.reference import SCHEMA_FILE, readme_with_reference, schema_text, stale_files

    if args.check:
        stale = stale_files(args.root)
        for name in stale:
            print(f"{name} is out of date: run `pipeline docs`", file=sys.stderr)
        return 1 if stale else 0
    (args.root / SCHEMA_FILE).write_text(schema_text())
    readme = args.root / "README.md"
    readme.write_text(readme_with_reference(readme.read_text()))
    print(f"wrote {SCHEMA_FILE} and the spec reference in README.md")
    return 0


def _checks(_: argparse.Namespace) -> int:
    from pipeline.spec.checks import CHECKS

    for info in CHECKS.values():
        print(f"{info.name:28} {info.doc}")
    return 0


COMMANDS = {
    "validate": _validate,
    "summary": _summary,
    "schema": _schema,
    "docs": _docs,
    "checks": _checks,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as err:
        print(err.format(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
