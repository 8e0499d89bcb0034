"""Commands around a spec's model and run that are not pipeline stages: summary, export,
predict, and the exploration tools (lr-find, schedule-preview, diagnose, augment-preview)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cli.common import add_overrides, load

if TYPE_CHECKING:
    pass


def add_commands(sub: Any) -> None:
    p = sub.add_parser("summary", help="a Keras-style table of the model: shapes, params, MACs")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("--expand", action="store_true", help="list a backbone's own layers too")
    p.set_defaults(handler=summary)

    p = sub.add_parser("export", help="ONNX/TorchScript files carrying classes and preprocessing")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=["onnx", "torchscript"],
        help="repeatable; default: evaluate.export, else onnx (TorchScript files are code: "
        "predict loads only the ones this project exported)",
    )
    p.add_argument("--fold", action="store_true", help="fold batch norm into conv/dense first")
    _checkpoint_option(p)
    p.set_defaults(handler=export)

    p = sub.add_parser("predict", help="classify image files with a trained spec or an export")
    p.add_argument("source", type=Path, help="a spec file, or an exported .pt/.onnx file")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--mc-samples", type=int, default=0, help="MC dropout passes (spec only)")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    _checkpoint_option(p, "(a spec only) ")
    p.add_argument(
        "--trust",
        action="store_true",
        help="load a TorchScript file this project did not export (it runs code when loaded: "
        "only a file you made; ONNX needs no trust)",
    )
    p.set_defaults(handler=predict)

    p = sub.add_parser("lr-find", help="learning-rate range test: loss vs lr, a suggested lr")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("-o", "--output", type=Path, help="folder for lr_find.csv/.png")
    p.set_defaults(handler=lr_find)

    p = sub.add_parser("schedule-preview", help="the planned learning rate per step, no training")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("-o", "--output", type=Path, help="folder for schedule.csv/.png")
    p.set_defaults(handler=schedule_preview)

    p = sub.add_parser("diagnose", help="per-layer activations and gradients at initialization")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("-o", "--output", type=Path, help="also write the table as CSV here")
    p.set_defaults(handler=diagnose)

    p = sub.add_parser("augment-preview", help="a PNG grid: originals and augmented versions")
    p.add_argument("spec", type=Path)
    add_overrides(p)
    p.add_argument("-o", "--output", type=Path, default=Path("augment_preview.png"))
    p.add_argument("-n", type=int, default=8, help="images per row")
    p.set_defaults(handler=augment_preview)


def summary(args: argparse.Namespace) -> int:
    from pipeline.model.summary import summarize

    print(summarize(load(args), expand=args.expand).table())
    return 0


def _checkpoint_option(p: argparse.ArgumentParser, which: str = "") -> None:
    p.add_argument(
        "--checkpoint",
        choices=["best", "last", "swa"],
        help=f"{which}the run's weights to use; default: the spec's evaluate.checkpoint (best "
        "unless set), the weights evaluate measured",
    )


def export(args: argparse.Namespace) -> int:
    from pipeline.export import DEFAULT_FORMAT, export_run

    spec = load(args)
    formats = args.formats or list(spec.evaluate.export) or [DEFAULT_FORMAT]
    fold = args.fold or spec.evaluate.fold_batch_norm
    written = export_run(spec, formats, fold=fold, checkpoint=args.checkpoint, log=print)
    for kind, path in written.items():
        print(f"{kind:12} {path}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from pipeline.predict import predict_files

    results = predict_files(
        args.source,
        args.images,
        mc_samples=args.mc_samples,
        checkpoint=args.checkpoint,
        trust=args.trust,
    )
    for r in results:
        if args.json:
            print(json.dumps(r, default=str))
        elif r["error"]:
            print(f"{r['file']}: error: {r['error']}", file=sys.stderr)
        else:
            spread = f" (spread {r['spread']:.3f})" if "spread" in r else ""
            print(f"{r['file']}: {r['class']} {r['probability']:.3f}{spread}")
    return 1 if any(r["error"] for r in results) else 0


def lr_find(args: argparse.Namespace) -> int:
    from pipeline.data.prepare import prepare
    from pipeline.run import Run
    from pipeline.train import explore

    spec = load(args)
    out = args.output or Run.of(spec).lr_find
    found = explore.lr_find(spec, prepare(spec), out, steps=args.steps)
    print(
        f"suggested lr: {found['suggested_lr']:.3g} (steepest descent; loss was lowest at "
        f"{found['min_loss_lr']:.3g}) after {found['steps']} steps; plot: {out}/lr_find.png"
    )
    return 0


def schedule_preview(args: argparse.Namespace) -> int:
    from pipeline.data.loader import batches_per_epoch
    from pipeline.data.prepare import prepare
    from pipeline.run import Run
    from pipeline.train import explore
    from pipeline.train.epoch import optimizer_steps

    spec = load(args)
    n = len(prepare(spec).split("train")[1])
    t = spec.train
    batches = batches_per_epoch(n, t.batch_size, t.drop_last, "the train split")
    per_epoch = optimizer_steps(batches, t.accumulate)  # the schedule counts optimizer steps
    steps = per_epoch * (sum(p.epochs for p in t.phases) if t.phases else t.epochs)
    out = args.output or Run.of(spec).schedule
    rows = explore.schedule_preview(spec, out, steps_per_epoch=per_epoch)
    shown = "" if len(rows) == steps else f", {len(rows):,} of them sampled"
    print(
        f"{steps:,} steps ({per_epoch:,} per epoch{shown}): lr from {rows[0]['lr']:.3g} to "
        f"{rows[-1]['lr']:.3g}, max {max(r['lr'] for r in rows):.3g}; plot: {out}/schedule.png"
    )
    return 0


def diagnose(args: argparse.Namespace) -> int:
    import csv

    from pipeline import atomic
    from pipeline.data.prepare import prepare
    from pipeline.train import explore

    spec = load(args)
    rows = explore.diagnose(spec, prepare(spec))
    cols = ["layer", "act_mean", "act_std", "dead_fraction", "grad_norm"]
    print(f"{'layer':24}{'act mean':>12}{'act std':>12}{'dead ReLU':>12}{'grad norm':>12}")
    for r in rows:
        cells = [f"{r[c]:12.4g}" if isinstance(r.get(c), float) else f"{'':12}" for c in cols[1:]]
        print(f"{r['layer']:24}" + "".join(cells))
    if args.output:
        with atomic.replacing(args.output) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            writer.writeheader()
            writer.writerows({c: r.get(c) for c in cols} for r in rows)
    return 0


def augment_preview(args: argparse.Namespace) -> int:
    from pipeline.data.augment import build_augment
    from pipeline.data.prepare import prepare
    from pipeline.data.preview import preview_grid

    spec = load(args)
    augment = build_augment(spec.augment)
    if augment is None:
        print("the spec has no augmentation (augment.transforms is empty)", file=sys.stderr)
        return 1
    x, _ = prepare(spec).split("train")
    preview_grid(x[: args.n], augment, args.output, n=args.n, seed=spec.seed)
    print(f"wrote {args.output}")
    return 0
