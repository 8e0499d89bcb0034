"""The search engine against the bare Optuna loop, pruning against none, TPE against random.

Three comparisons on real MNIST (a small subset, so that each takes minutes on 2 CPU cores),
each side by side in this one process, all trials training the same small convnet with the
pipeline's own loop:

1. Overhead: a 10-trial search by ``pipeline.search.engine.run_search`` (SQLite storage,
   spec validation per trial, run folders, the report with its plots) against a hand-written
   Optuna loop around the same ``pipeline.train.loop.train`` call (SQLite too), both sides
   training the same 10 points (enqueued: what a sampler proposes decides what a trial
   costs). Goal: at most 1.1x the wall time.
2. Pruning: the same 16-trial random search (8 epochs a trial) without a pruner and with each
   of median, successive halving and Hyperband. Goal: at least 40% fewer epochs trained, the
   best validation accuracy within 0.2 points.
3. TPE (5 random startup trials) against random search: the best validation accuracy so far
   after each of 20 trials, for sampler seeds 0, 1 and 2.

Run: ``PIPELINE_DATA_MIRROR=../shared/datasets .venv/bin/python benchmarks/search.py``
(``--quick`` for a smoke run with fewer trials, ``--only pruning`` for one part, ``--only
overhead --epochs 16`` for the overhead with longer trials, ``--only plots`` for the report's
plots drawn one after the other against the drawing process).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PIPELINE_ORCHESTRATION", "off")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
import yaml

from pipeline import runtime
from pipeline.search.engine import run_search
from pipeline.search.load import load_search

SPEC = """\
name: bench
seed: 0
data:
  dataset: mnist
  subset: {train_per_class: 300, test_per_class: 20}
  validation: {fraction: 0.25}
  normalize: standardize
model:
  defaults:
    conv2d: {kernel_size: 3, activation: relu}
  layers:
    - {type: conv2d, filters: 8}
    - {type: max_pool2d}
    - {type: conv2d, filters: 16}
    - {type: max_pool2d}
    - {type: flatten}
    - {type: dropout, rate: 0.2}
    - {type: dense, units: 32, activation: relu}
    - {type: dense, units: 10, activation: softmax}
optimizer: {type: adam, lr: 1.0e-3}
train: {epochs: 4, batch_size: 32}
"""

PARTS = ["overhead", "pruning", "samplers", "plots"]
ROUNDS = 5  # of the overhead comparison: the median of the rounds' ratios
PRUNE_EPOCHS = 8
PRUNERS = {  # each as a search file declares it
    "median": {"type": "median", "warmup_epochs": 1, "startup_trials": 3},
    "halving": {"type": "halving", "warmup_epochs": 1},
    "hyperband": {"type": "hyperband", "warmup_epochs": 1},
}

SPACE = {
    "optimizer.lr": {"type": "float", "low": 1e-5, "high": 3e-1, "log": True},
    "train.batch_size": {"type": "choice", "values": [16, 32, 64, 128]},
    "model.layers[6].units": {"type": "int", "low": 8, "high": 128, "log": True},
    "model.layers[5].rate": {"type": "float", "low": 0.0, "high": 0.6},
}


def _quiet(_m: str) -> None:
    pass


def project(root: Path) -> Path:
    (root / "pyproject.toml").write_text("")
    (root / "specs").mkdir()
    (root / "specs" / "bench.yaml").write_text(SPEC)
    (root / "searches").mkdir()
    return root


def search_file(root: Path, name: str, **body) -> Path:
    path = root / "searches" / f"{name}.yaml"
    doc = {"base": "../specs/bench.yaml", "space": SPACE, "dvc": False, **body}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def proposals(seed: int, n: int) -> list[dict]:
    """``n`` points of SPACE, the same for both sides of the overhead comparison (what a
    sampler proposes decides a trial's cost: batch 16 trains several times slower than 128)."""
    import random

    rng = random.Random(seed)
    return [
        {
            "optimizer.lr": 10 ** rng.uniform(-5, math.log10(3e-1)),
            "train.batch_size": rng.choice([16, 32, 64, 128]),
            "model.layers[6].units": round(2 ** rng.uniform(3, 7)),
            "model.layers[5].rate": rng.uniform(0.0, 0.6),
        }
        for _ in range(n)
    ]


def engine_search(
    root: Path, name: str, points: list[dict] | None = None, **body
) -> tuple[float, optuna.Study]:
    loaded = load_search(search_file(root, name, **body))
    began = time.perf_counter()
    if points:  # the study made first, holding the points: the engine's trials take them
        loaded.folder.mkdir(parents=True, exist_ok=True)
        made = optuna.create_study(storage=loaded.storage, study_name=name, direction="maximize")
        for point in points:
            made.enqueue_trial(point)
    run_search(loaded, log=_quiet)
    took = time.perf_counter() - began
    study = optuna.load_study(study_name=name, storage=loaded.storage)
    return took, study


def bare_loop(
    root: Path,
    name: str,
    trials: int,
    seed: int,
    points: list[dict] | None = None,
    epochs: int | None = None,
) -> tuple[float, optuna.Study]:
    """What one writes by hand around the same training function."""
    from pipeline.data.prepare import prepare
    from pipeline.spec.load import load_spec
    from pipeline.train.loop import train

    base = root / "specs" / "bench.yaml"

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("optimizer.lr", 1e-5, 3e-1, log=True)
        batch = trial.suggest_categorical("train.batch_size", [16, 32, 64, 128])
        units = trial.suggest_int("model.layers[6].units", 8, 128, log=True)
        rate = trial.suggest_float("model.layers[5].rate", 0.0, 0.6)
        spec = load_spec(
            base,
            [f"optimizer.lr={lr}", f"train.batch_size={batch}", f"model.layers[6].units={units}",
             f"model.layers[5].rate={rate}", *([f"train.epochs={epochs}"] if epochs else [])],
        )  # fmt: skip
        result = train(spec, prepared=prepare(spec), out=root / name / str(trial.number),
                       log=_quiet)  # fmt: skip
        trial.set_user_attr("epochs", len(result.history))
        return result.history[(result.best_epoch or len(result.history)) - 1]["val_accuracy"]

    db = root / f"{name}.db"
    began = time.perf_counter()
    study = optuna.create_study(
        storage=f"sqlite:///{db}",
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
    )
    for point in points or ():
        study.enqueue_trial(point)
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - began, study


def plots_part(root: Path, rounds: int) -> dict:
    from pipeline import proc
    from pipeline.search import plot_server, plots

    points = proposals(0, 10)
    _, study = engine_search(
        root, "plotted", points, sampler={"type": "tpe", "seed": 0}, budget={"trials": 10},
        overrides=["train.epochs=2"],
    )  # fmt: skip
    names, _ = plots.plan(study, multi=False)
    snap = plots.snapshot(study, ["val_accuracy"])
    for name in names:  # the in-process side's imports and first draw, off the clock
        plot_server._draw_here(snap, name, str(root / "warm" / name))
    here, there = [], []
    for r in range(rounds):
        began = time.perf_counter()
        for name in names:
            plot_server._draw_here(snap, name, str(root / f"here{r}" / name))
        here.append(time.perf_counter() - began)
        plot_server.warm()
        time.sleep(5)  # as after a search's trials: its imports made
        began = time.perf_counter()
        plot_server.draw_all(snap, names, root / f"there{r}")
        there.append(time.perf_counter() - began)
    ratio = statistics.median(t / h for t, h in zip(there, here, strict=True))
    print(f"4. the {len(names)} plots of 10 trials: one after the other "
          f"{[round(x, 2) for x in here]} s, the drawing process on {proc.cores()} cores "
          f"{[round(x, 2) for x in there]} s: {ratio:.2f}x")  # fmt: skip
    return {"here_s": here, "there_s": there, "ratio": ratio, "cores": proc.cores()}


def epochs_of(study: optuna.Study) -> int:
    return sum(t.user_attrs.get("epochs", 0) for t in study.trials)


def best_so_far(study: optuna.Study) -> list[float]:
    out, best = [], 0.0
    for t in sorted(study.trials, key=lambda t: t.number):
        if t.value is not None:
            best = max(best, t.value)
        out.append(best)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="fewer trials: a smoke run")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--only", choices=PARTS, action="append", help="run only these parts")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of the overhead part")
    p.add_argument(
        "--epochs", type=int, default=4, help="epochs a trial in the overhead part (its length)"
    )
    args = p.parse_args()
    parts = args.only or PARTS
    n_overhead, n_prune, n_sampler = (4, 6, 6) if args.quick else (10, 16, 20)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    figures: dict = {"cpu": runtime.cpu_model(), "threads": __import__("torch").get_num_threads()}
    print(f"CPU: {figures['cpu']}, torch threads {figures['threads']}")
    with tempfile.TemporaryDirectory() as tmp:
        root = project(Path(tmp))
        os.chdir(root)
        os.environ.setdefault("PIPELINE_DATA_CACHE", str(root / "cache"))
        from pipeline.data.prepare import prepare
        from pipeline.spec.load import load_spec

        prepare(load_spec(root / "specs" / "bench.yaml"))  # both sides find it prepared

        # 1. overhead: a warm-up of each (imports, first allocations), then ROUNDS rounds
        # alternating which side goes first, both training the same points; the median ratio
        if "overhead" in parts:
            # 2 trials: the importances plot (fANOVA, scikit-learn) is drawn only from 2
            engine_search(root, "warm", sampler={"type": "tpe", "seed": 9}, budget={"trials": 2})
            bare_loop(root, "warm_bare", 1, 9)
            engine_s, bare_s = [], []
            for r in range(args.rounds):
                points = proposals(r, n_overhead)
                if r % 2:  # bare first this round
                    took, _ = bare_loop(root, f"bare{r}", n_overhead, r, points, args.epochs)
                    bare_s.append(took)
                took, _ = engine_search(
                    root, f"overhead{r}", points, sampler={"type": "tpe", "seed": r},
                    budget={"trials": n_overhead}, overrides=[f"train.epochs={args.epochs}"],
                )  # fmt: skip
                engine_s.append(took)
                if not r % 2:
                    took, _ = bare_loop(root, f"bare{r}", n_overhead, r, points, args.epochs)
                    bare_s.append(took)
            ratio = statistics.median(e / b for e, b in zip(engine_s, bare_s, strict=True))
            extra = statistics.median(e - b for e, b in zip(engine_s, bare_s, strict=True))
            figures["overhead"] = {"trials": n_overhead, "epochs": args.epochs,
                                   "engine_s": engine_s, "bare_s": bare_s, "ratio": ratio,
                                   "extra_s": extra}  # fmt: skip
            print(f"1. {n_overhead} trials of {args.epochs} epochs (the same points both sides): "
                  f"engine "
                  f"{[round(x, 1) for x in engine_s]} s, bare Optuna loop "
                  f"{[round(x, 1) for x in bare_s]} s: {ratio:.3f}x (goal <= 1.1x), "
                  f"{extra:.1f} s more")  # fmt: skip

        # 2. pruning: the same random proposals (seed 0), unpruned and with each pruner
        if "pruning" in parts:
            common = {
                "overrides": [f"train.epochs={PRUNE_EPOCHS}"],
                "sampler": {"type": "random", "seed": 0},
                "budget": {"trials": n_prune},
            }
            _, plain = engine_search(root, "unpruned", **common)
            e_plain = epochs_of(plain)
            figures["pruning"] = {"trials": n_prune, "epochs": PRUNE_EPOCHS,
                                  "epochs_unpruned": e_plain, "best_unpruned": plain.best_value,
                                  "pruners": {}}  # fmt: skip
            print(f"2. {n_prune} random trials of {PRUNE_EPOCHS} epochs: {e_plain} epochs "
                  f"unpruned, best val accuracy {plain.best_value:.4f}")  # fmt: skip
            for label, pruner in PRUNERS.items():
                _, pruned = engine_search(root, f"pruned_{label}", **common, pruner=pruner)
                e_pruned = epochs_of(pruned)
                saved = 1 - e_pruned / e_plain
                gap = 100 * (plain.best_value - pruned.best_value)
                figures["pruning"]["pruners"][label] = {
                    "pruner": pruner, "epochs": e_pruned, "fewer": saved,
                    "best": pruned.best_value, "points_behind": gap,
                    "pruned_trials": sum(t.state.name == "PRUNED" for t in pruned.trials),
                }  # fmt: skip
                print(
                    f"   {label}: {e_pruned} epochs ({saved:.0%} fewer, goal >= 40%); best "
                    f"{pruned.best_value:.4f} ({gap:+.2f} points behind, goal within 0.2)"
                )

        # 3. TPE against random, best so far, seeds 0-2
        if "samplers" in parts:
            curves: dict[str, list[list[float]]] = {"tpe": [], "random": []}
            for seed in range(3):
                for sampler in ("tpe", "random"):
                    startup = {"startup_trials": 5} if sampler == "tpe" else {}
                    chosen = {"type": sampler, "seed": seed, **startup}
                    _, study = engine_search(
                        root, f"{sampler}{seed}", sampler=chosen, budget={"trials": n_sampler}
                    )
                    curves[sampler].append(best_so_far(study))
            figures["samplers"] = curves
            for sampler, runs in curves.items():
                at = [5, 10, n_sampler] if n_sampler >= 10 else [n_sampler]
                cells = "; ".join(
                    f"after {k}: " + "/".join(f"{run[k - 1]:.4f}" for run in runs) for k in at
                )
                print(f"3. {sampler}: best val accuracy so far (seeds 0/1/2) {cells}")
        # 4. the report's plots of a 10-trial study: one after the other in this process
        # (imports made) against the drawing process split over the cores
        if "plots" in parts:
            figures["plots"] = plots_part(root, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
