"""The ``pipeline`` command. Subcommands import only what they need: ``validate`` never imports
torch, so it answers in a fraction of a second."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pipeline.errors import PipelineError
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

    p = sub.add_parser("docs", help="regenerate spec.schema.json and docs/spec-reference.md")
    p.add_argument("--root", type=Path, default=Path("."))
    p.add_argument("--check", action="store_true", help="exit 1 if they are out of date")

    sub.add_parser("checks", help="list the cross-field checks")

    p = sub.add_parser("prepare", help="prepare the spec's data (a no-op when already prepared)")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--force", action="store_true", help="prepare again even if present")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="prepare into exactly this folder (a DVC stage's output) instead of "
        "data/prepared/<dataset>-<hash>",
    )

    p = sub.add_parser("train", help="train the spec's model (writes runs/<name>/)")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("--resume", action="store_true", help="continue from runs/<name>/last.pt")
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="the prepared data folder to use (what 'prepare --out DIR' wrote), "
        "checked to match the spec's data section",
    )

    p = sub.add_parser("run", help="prepare, train and evaluate as one Prefect flow run")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("--resume", action="store_true")
    p.add_argument(
        "--data", type=Path, metavar="DIR", help="prepare into (or use) exactly this folder"
    )

    p = sub.add_parser("evaluate", help="test-split metrics of the trained model (metrics.json)")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="the prepared data folder to use (what 'prepare --out DIR' wrote), "
        "checked to match the spec's data section",
    )

    p = sub.add_parser("server", help="the local Prefect server the stage commands share")
    p.add_argument("action", choices=["start", "stop", "status", "url"])
    p.add_argument("--port", type=int, help="start: this port (default: a free one)")

    p = sub.add_parser("deploy", help="a Prefect deployment of the experiment flow on a work pool")
    p.add_argument("--name", default="local", help="deployment name (default: local)")
    p.add_argument(
        "--pool", default="pipeline-local", help="process work pool (created if missing)"
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        help="project folder runs work in (default: this one)",
    )

    p = sub.add_parser("export", help="TorchScript/ONNX files carrying classes and preprocessing")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=["torchscript", "onnx"],
        help="repeatable; default: evaluate.export, else torchscript",
    )
    p.add_argument("--fold", action="store_true", help="fold batch norm into conv/dense first")

    p = sub.add_parser("predict", help="classify image files with a trained spec or an export")
    p.add_argument("source", type=Path, help="a spec file, or an exported .pt/.onnx file")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--mc-samples", type=int, default=0, help="MC dropout passes (spec only)")
    p.add_argument("--json", action="store_true", help="print JSON lines")

    p = sub.add_parser("lr-find", help="learning-rate range test: loss vs lr, a suggested lr")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("-o", "--output", type=Path, help="folder for lr_find.csv/.png")

    p = sub.add_parser("schedule-preview", help="the planned learning rate per step, no training")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("-o", "--output", type=Path, help="folder for schedule.csv/.png")

    p = sub.add_parser("diagnose", help="per-layer activations and gradients at initialization")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("-o", "--output", type=Path, help="also write the table as CSV here")

    p = sub.add_parser("augment-preview", help="a PNG grid: originals and augmented versions")
    p.add_argument("spec", type=Path)
    _add_overrides(p)
    p.add_argument("-o", "--output", type=Path, default=Path("augment_preview.png"))
    p.add_argument("-n", type=int, default=8, help="images per row")
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
                + (f" ({len(errors)} error{'s' if len(errors) > 1 else ''})" if errors else "")
                + "\n"
            )
    if args.output and not (args.resolved and failed):  # no half-made resolved spec (dvc.yaml)
        args.output.parent.mkdir(parents=True, exist_ok=True)
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
    from pipeline.model.summary import summarize

    print(summarize(_load(args), expand=args.expand).table())
    return 0


def _schema(args: argparse.Namespace) -> int:
    from pipeline.spec.reference import schema_text

    if args.output:
        args.output.write_text(schema_text())
    else:
        sys.stdout.write(schema_text())
    return 0


def _docs(args: argparse.Namespace) -> int:
    from pipeline.spec.reference import stale_files, write_generated

    if args.check:
        stale = stale_files(args.root)
        for name in stale:
            print(f"{name} is out of date: run `pipeline docs`", file=sys.stderr)
        return 1 if stale else 0
    print("wrote " + ", ".join(write_generated(args.root)))
    return 0


def _checks(_: argparse.Namespace) -> int:
    from pipeline.spec.checks import CHECKS

    for info in CHECKS.values():
        print(f"{info.name:28} {info.doc}")
    return 0


def _load(args: argparse.Namespace):
    from pipeline.spec.load import load_spec

    spec = load_spec(args.spec, args.overrides)
    for p in spec.warnings:
        print(p.format(), file=sys.stderr)
    return spec


def _out(args: argparse.Namespace, spec: object, what: str) -> Path:
    from pipeline.run import Run

    return args.output or getattr(Run.of(spec), what)  # type: ignore[arg-type]


# The stage commands (dvc.yaml's cmds) run the Prefect flows through pipeline.orchestrate:
# PIPELINE_ORCHESTRATION=auto|server|ephemeral|off. Each loads the spec first, so a spec error is
# reported located, without a traceback, before any flow run exists.


def _prepare(args: argparse.Namespace) -> int:
    from pipeline import orchestrate
    from pipeline.data.prepare import report

    spec = _load(args)
    prepared = orchestrate.prepare(
        args.spec,
        args.overrides,
        spec,
        force=args.force,
        out=args.out,
        progress=lambda m: print(m, file=sys.stderr),
    )
    print(report(prepared, as_json=args.json))
    return 0


def _train(args: argparse.Namespace) -> int:
    from pipeline import orchestrate

    spec = _load(args)
    trained = orchestrate.train(args.spec, args.overrides, spec, resume=args.resume, data=args.data)
    print(
        f"trained {trained['epochs']} epochs; best epoch {trained['best_epoch']}; "
        f"outputs in {trained['run_dir']}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from pipeline import orchestrate

    spec = _load(args)
    metrics = orchestrate.experiment(
        args.spec, args.overrides, spec, resume=args.resume, data=args.data
    )
    print(f"test_accuracy {metrics['test_accuracy']:.4f}")
    return 0


def _server(args: argparse.Namespace) -> int:
    import os

    from pipeline import orchestrate

    if args.action == "start":
        server, started = orchestrate.ensure_server(port=args.port)
        print(
            f"{'started' if started else 'already running'}: {server.url} (pid {server.pid}; "
            f"UI {server.url.removesuffix('/api')}; log {server.log})"
        )
        return 0
    if args.action == "stop":
        server = orchestrate.stop_server()
        print(f"stopped {server.url} (pid {server.pid})" if server else "no server was running")
        return 0
    server = orchestrate.read_state()
    up = server is not None and server.healthy()
    if args.action == "url":
        if up:
            print(server.url)  # type: ignore[union-attr]
        return 0 if up else 1
    if server is None:
        print(f"no pipeline-managed Prefect server (state: {orchestrate.state_file()})")
    else:
        print(
            f"url      {server.url}\npid      {server.pid}\nhealthy  {'yes' if up else 'NO'}\n"
            f"home     {server.prefect_home}\nlog      {server.log}"
        )
    print(f"mode     {orchestrate.MODE_ENV}={orchestrate.mode()}")
    if os.environ.get("PREFECT_API_URL"):
        print(
            f"note     PREFECT_API_URL={os.environ['PREFECT_API_URL']} is set: the stage "
            "commands use that server while it answers"
        )
    return 0 if up else 1


def _deploy(args: argparse.Namespace) -> int:
    from pipeline import orchestrate

    deployment_id, url = orchestrate.deploy(args.dir, name=args.name, pool=args.pool)
    print(
        f"deployment experiment/{args.name} ({deployment_id}) on work pool {args.pool!r} at "
        f"{url}; runs work in {args.dir.resolve()}\n"
        f"start a worker:  PREFECT_API_URL={url} prefect worker start --pool {args.pool}\n"
        f"submit a run:    PREFECT_API_URL={url} prefect deployment run "
        f"experiment/{args.name} --param spec=specs/mnist_convnet.yaml "
        "--param overrides='[\"train.epochs=1\"]'"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from pipeline import orchestrate

    spec = _load(args)
    metrics = orchestrate.evaluate(args.spec, args.overrides, spec, data=args.data)
    for key, value in metrics.items():
        if "/" not in key:
            print(f"{key:24} {value:.4f}" if isinstance(value, float) else f"{key:24} {value}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pipeline.export import export_run

    spec = _load(args)
    formats = args.formats or list(spec.evaluate.export) or ["torchscript"]
    written = export_run(spec, formats, fold=args.fold or spec.evaluate.fold_batch_norm)
    for kind, path in written.items():
        print(f"{kind:12} {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from pipeline.predict import predict_files

    results = predict_files(args.source, args.images, mc_samples=args.mc_samples)
    for r in results:
        if args.json:
            print(json.dumps(r, default=str))
        elif r["error"]:
            print(f"{r['file']}: error: {r['error']}", file=sys.stderr)
        else:
            spread = f" (spread {r['spread']:.3f})" if "spread" in r else ""
            print(f"{r['file']}: {r['class']} {r['probability']:.3f}{spread}")
    return 1 if any(r["error"] for r in results) else 0


def _lr_find(args: argparse.Namespace) -> int:
    from pipeline.data.prepare import prepare
    from pipeline.train.explore import lr_find

    spec = _load(args)
    out = _out(args, spec, "lr_find")
    found = lr_find(spec, prepare(spec), out, steps=args.steps)
    print(
        f"suggested lr: {found['suggested_lr']:.3g} (steepest descent; loss was lowest at "
        f"{found['min_loss_lr']:.3g}) after {found['steps']} steps; plot: {out}/lr_find.png"
    )
    return 0


def _schedule_preview(args: argparse.Namespace) -> int:
    import math

    from pipeline.data.prepare import prepare
    from pipeline.train.explore import schedule_preview

    spec = _load(args)
    n = len(prepare(spec).split("train")[1])
    size = spec.train.batch_size
    batches = n // size if spec.train.drop_last else math.ceil(n / size)
    out = _out(args, spec, "schedule")
    rows = schedule_preview(spec, out, steps_per_epoch=batches)
    print(
        f"{len(rows)} steps ({batches} per epoch): lr from {rows[0]['lr']:.3g} to "
        f"{rows[-1]['lr']:.3g}, max {max(r['lr'] for r in rows):.3g}; plot: {out}/schedule.png"
    )
    return 0


def _diagnose(args: argparse.Namespace) -> int:
    import csv

    from pipeline.data.prepare import prepare
    from pipeline.train.explore import diagnose

    spec = _load(args)
    rows = diagnose(spec, prepare(spec))
    cols = ["layer", "act_mean", "act_std", "dead_fraction", "grad_norm"]
    print(f"{'layer':24}{'act mean':>12}{'act std':>12}{'dead ReLU':>12}{'grad norm':>12}")
    for r in rows:
        cells = [f"{r[c]:12.4g}" if isinstance(r.get(c), float) else f"{'':12}" for c in cols[1:]]
        print(f"{r['layer']:24}" + "".join(cells))
    if args.output:
        with args.output.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            writer.writeheader()
            writer.writerows({c: r.get(c) for c in cols} for r in rows)
    return 0


def _augment_preview(args: argparse.Namespace) -> int:
    from pipeline.data.augment import build_augment
    from pipeline.data.prepare import prepare
    from pipeline.data.preview import preview_grid

    spec = _load(args)
    augment = build_augment(spec.augment)
    if augment is None:
        print("the spec has no augmentation (augment.transforms is empty)", file=sys.stderr)
        return 1
    x, _ = prepare(spec).split("train")
    preview_grid(x[: args.n], augment, args.output, n=args.n, seed=spec.seed)
    print(f"wrote {args.output}")
    return 0


COMMANDS = {
    "validate": _validate,
    "summary": _summary,
    "schema": _schema,
    "docs": _docs,
    "checks": _checks,
    "prepare": _prepare,
    "train": _train,
    "evaluate": _evaluate,
    "run": _run,
    "server": _server,
    "deploy": _deploy,
    "export": _export,
    "predict": _predict,
    "lr-find": _lr_find,
    "schedule-preview": _schedule_preview,
    "diagnose": _diagnose,
    "augment-preview": _augment_preview,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PipelineError as err:  # a user's mistake: its message, no traceback
        print(err.report(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
