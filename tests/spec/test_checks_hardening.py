"""Cross-field checks that stop at validate time what used to fail (or run wrongly) later:
memory, run length, empty epochs, layer selectors, freeze/unfreeze order, the best checkpoint,
the output activation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.spec import SpecError, load_spec, load_spec_text, machine
from pipeline.spec.checks import CHECKS
from pipeline.spec.sizes import split_sizes
from tests.spec.conftest import BASE

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def errors_of(text: str, overrides=(), base_dir: Path | None = None) -> list:
    with pytest.raises(SpecError) as err:
        load_spec_text(text, overrides, base_dir=base_dir)
    return err.value.problems


def codes(problems) -> set[tuple[str, str]]:
    return {(p.code, p.severity) for p in problems}


# ---- 1. memory -------------------------------------------------------------------------------

HUGE = """\
name: huge
data: {dataset: mnist}
model:
  layers:
    - {type: flatten}
    - {type: dense, units: 1000000}
    - {type: dense, units: 1000000}
    - {type: dense, units: 10}
"""


def test_a_model_that_cannot_fit_in_memory_is_refused_with_figures():
    (p,) = errors_of(HUGE)
    assert p.code == "fits-in-memory" and p.severity == "error"
    # each layer a size under the 2**20 cap: 784 * 1e6 + 1e6, 1e6 * 1e6 + 1e6, 1e6 * 10 + 10
    # weights, fp32, x4 with gradients and adam's 2 moments
    weights = 784 * 10**6 + 10**6 + 10**12 + 10**6 + 10**7 + 10
    # per sample: the input (784), the 1e6, 1e6 and 10 outputs (flatten is a view); batch 64
    activations = 64 * (784 + 2 * 10**6 + 10)
    needs = (weights * 4 + activations) * 4 / GIB
    assert f"needs ~{needs:,.1f} GiB" in p.message
    assert f"{weights * 4 / GIB:,.1f} GiB of fp32 weights, x4" in p.message
    have = machine.memory_for("auto")
    assert have is not None and f"this machine has {have.bytes / GIB:,.1f} GiB" in p.message
    assert p.path == ("model", "layers")


def test_the_memory_check_reads_the_real_machine():
    ram = machine.memory_for("cpu")
    meminfo = Path("/proc/meminfo").read_text().split()
    total = int(meminfo[meminfo.index("MemTotal:") + 1]) * 1024
    assert ram is not None and 0 < ram.bytes <= total and "RAM" in ram.what


def test_a_cgroup_limit_below_the_ram_is_what_the_machine_has(tmp_path):
    (tmp_path / "memory.max").write_text("1073741824\n")
    assert machine.cgroup_limit(tmp_path) == 1 << 30
    (tmp_path / "memory.max").write_text("max\n")
    assert machine.cgroup_limit(tmp_path) is None


def test_nvidia_smi_output_is_read_per_visible_device():
    text = "0, GPU-aaa, 81559\n1, GPU-bbb, 143771\n"
    assert machine.gpu_memory(text, "cuda:1", visible=None) == 143771 << 20
    assert machine.gpu_memory(text, "cuda", visible="1") == 143771 << 20
    assert machine.gpu_memory(text, "cuda:0", visible="GPU-bbb") == 143771 << 20
    assert machine.gpu_memory(text, "cuda:2", visible=None) is None
    assert machine.gpu_memory(text, "cuda", visible="MIG-xyz") is None


def test_an_ordinary_model_fits():
    spec = load_spec(ROOT / "specs" / "mnist_convnet.yaml")
    assert "fits-in-memory" not in {p.code for p in spec.warnings}


def test_the_new_checks_are_listed_by_pipeline_checks():
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "checks"], capture_output=True, text=True, check=True
    ).stdout
    for name in (
        "fits-in-memory",
        "run-length",
        "batches-per-epoch",
        "freeze-and-unfreeze",
        "best-checkpoint-kept",
        "batch-per-process",
        "output-activation",
        "layer-selectors",
    ):
        assert name in CHECKS and f"\n{name} " in "\n" + out, name


# ---- 2. run length -------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["train.epochs=1e9", "train.phases=[{epochs: 1e9}]"])
def test_an_endless_number_of_epochs_is_refused(override):
    (p,) = errors_of(BASE, [override])
    assert "10000" in p.message and "epochs" in str(p.path)


def test_epochs_that_add_up_past_the_limit_are_refused():
    found = errors_of(BASE, ["train.phases=[{epochs: 6000}, {epochs: 6000}]"])
    assert codes(found) == {("run-length", "error")}
    assert "12,000 epochs" in found[0].message


def test_too_many_optimizer_steps_are_refused():
    # 54,001 training samples (MNIST less its stratified 10% validation) at batch 1
    found = errors_of(BASE, ["train.batch_size=1", "train.epochs=5000"])
    assert codes(found) == {("run-length", "error")}
    assert "5,000 epochs of 54,001 batches are 270,005,000 optimizer steps" in found[0].message


def test_a_schedule_longer_than_any_run_is_refused():
    (p,) = errors_of(BASE + "schedule: {type: step, step_size: 1e12}\n")
    assert p.path == ("schedule", "step_size")


# ---- 3. empty epochs -----------------------------------------------------------------------

SMALL = BASE.replace(
    "validation: {fraction: 0.1}", "subset: {train_per_class: 3}, validation: {fraction: 0.1}"
)


def test_drop_last_with_a_batch_larger_than_the_split_is_refused():
    (p,) = errors_of(SMALL, ["train.drop_last=true"])
    assert p.code == "batches-per-epoch" and p.path == ("train", "batch_size")
    # 3 per class, 10 classes, after 10% validation (round(5923 * 0.1) etc.) -> still 3 each
    assert "30 samples" in p.message and "batch_size 64" in p.message


def test_without_drop_last_a_large_batch_is_one_partial_batch():
    load_spec_text(SMALL)


def test_a_global_batch_that_does_not_split_between_the_processes_is_refused():
    (p,) = errors_of(BASE, ["train.nproc=3"])  # batch_size 64
    assert p.code == "batch-per-process" and p.path == ("train", "batch_size")
    assert "does not divide by train.nproc 3" in p.message and "63 or 66" in p.hint
    load_spec_text(BASE, ["train.nproc=4"])  # 16 each


@pytest.mark.parametrize(
    ("data", "train", "val", "test"),
    [
        ("{dataset: mnist}", 60000, None, 10000),
        ("{dataset: mnist, validation: {first: 5000}}", 55000, 5000, 10000),
        ("{dataset: mnist, classes: {keep: [0, 1]}, validation: {fraction: 0.1}}",
         5331 + 6068, 592 + 674, 980 + 1135),
        ("{dataset: fashion_mnist, classes: {drop: [0]}, subset: {train_per_class: 10, "
         "test_per_class: 5}}", 90, None, 45),
        ("{dataset: cifar100, subset: {train_per_class: 1000}}", 50000, None, 10000),
        ("{dataset: mnist, validation: {first: 5000}, subset: {train_per_class: 10}}",
         None, 5000, 10000),
    ],
)  # fmt: skip
def test_split_sizes_are_known_before_prepare(data, train, val, test):
    spec = load_spec_text(
        f"name: t\ndata: {data}\nmodel: {{layers: [{{type: flatten}}]}}\n", check=False
    )
    sizes = split_sizes(spec.data)
    assert (sizes.train, sizes.val, sizes.test) == (train, val, test)


def test_image_folder_sizes_are_unknown():
    spec = load_spec_text(
        "name: t\ndata: {dataset: image_folder, path: x, image_size: 8}\n"
        "model: {layers: [{type: flatten}]}\n",
        check=False,
    )
    assert split_sizes(spec.data) is None


# ---- 4. layer selectors --------------------------------------------------------------------

SOURCE = """\
name: a
data: {dataset: mnist}
model:
  layers:
    - {type: flatten, name: h0}
    - {type: dense, units: 32, name: h1, activation: relu}
    - type: residual
      name: res
      layers: [{type: dense, units: 32, name: h2}]
    - {type: dense, units: 32, name: h3}
    - {type: dense, units: 10, name: out}
"""

REUSING = """\
name: b
data: {dataset: mnist}
model:
  layers:
    - {type: reuse, spec: a.yaml, name: base}
    - {type: dense, units: 10}
train:
  phases:
    - {epochs: 1}
    - {epochs: 1, unfreeze: [%s]}
"""


@pytest.mark.parametrize("name", ["base.h3", "base.res", "base.h2", "base.*", "{from: base.h3}"])
def test_layers_of_a_reused_model_can_be_selected(tmp_path, name):
    (tmp_path / "a.yaml").write_text(SOURCE)
    load_spec_text(REUSING % name, base_dir=tmp_path)


def test_an_unknown_reused_layer_is_still_an_error_with_a_suggestion(tmp_path):
    (tmp_path / "a.yaml").write_text(SOURCE)
    (p,) = errors_of(REUSING % "base.h4", base_dir=tmp_path)
    assert p.code == "layer-selectors" and p.hint == "did you mean 'base.h3'?"


RESIDUAL = BASE.replace(
    "    - {type: flatten}",
    "    - type: residual\n"
    "      layers: [{type: conv2d, filters: 8, kernel_size: 3, padding: same}]\n"
    "    - {type: flatten}",
)


@pytest.mark.parametrize(
    "name", ["residual_1.conv2d_2", "residual_1.shortcut", "conv2d_2", "residual_1.*"]
)
def test_the_summary_s_names_of_composite_children_can_be_selected(name):
    load_spec_text(RESIDUAL + f"train: {{freeze: [{name}]}}\n")


def test_backbone_top_layers_can_be_selected():
    text = """\
name: t
data: {dataset: cifar10}
model:
  layers:
    - {type: backbone, arch: resnet18, include_top: true, name: base}
    - {type: dense, units: 10}
train: {freeze: [base.fc, avgpool]}
"""
    load_spec_text(text)


# ---- 5. freeze and unfreeze in one phase ---------------------------------------------------


def test_a_phase_that_freezes_and_unfreezes_a_layer_is_an_error():
    found = errors_of(
        BASE + "train: {phases: [{epochs: 1}, {name: tune, epochs: 1, freeze: [conv2d_1], "
        "unfreeze: [conv2d_1]}]}\n"
    )
    (p,) = found
    assert p.code == "freeze-and-unfreeze" and p.severity == "error"
    assert "conv2d_1" in p.message and "'tune'" in p.message
    assert p.path == ("train", "phases", 1, "freeze", 0)


def test_a_freeze_undone_by_unfreezing_what_contains_it_is_an_error():
    found = errors_of(
        RESIDUAL + "train: {phases: [{epochs: 1, freeze: [conv2d_2], unfreeze: [residual_1]}]}\n"
    )
    assert codes(found) == {("freeze-and-unfreeze", "error")}
    assert "conv2d_2" in found[0].message and "phase 1" in found[0].message


def test_unfreeze_may_narrow_a_wider_freeze():
    load_spec_text(BASE + "train: {phases: [{epochs: 1, freeze: ['*'], unfreeze: [dense_1]}]}\n")
    load_spec_text(
        RESIDUAL + "train: {phases: [{epochs: 1, freeze: [residual_1], unfreeze: [conv2d_2]}]}\n"
    )


# ---- 6. the best checkpoint ----------------------------------------------------------------


def test_restore_best_without_a_best_checkpoint_is_an_error():
    found = errors_of(
        BASE + "train: {early_stopping: {patience: 2}, checkpoint: {best: false}}\n"
        "evaluate: {checkpoint: last}\n"
    )
    assert codes(found) == {("best-checkpoint-kept", "error")}
    assert found[0].path == ("train", "early_stopping", "restore_best")


def test_evaluating_the_best_checkpoint_needs_one():
    found = errors_of(BASE + "train: {checkpoint: {best: false}}\n")
    assert codes(found) == {("best-checkpoint-kept", "error")}
    assert found[0].path == ("train", "checkpoint", "best") and "evaluate" in found[0].message


def test_no_best_checkpoint_is_only_a_warning_when_just_predict_and_export_need_it():
    spec = load_spec_text(
        BASE + "train: {checkpoint: {best: false}, early_stopping: {restore_best: false}}\n"
        "evaluate: {checkpoint: last}\n"
    )
    assert codes(spec.warnings) == {("best-checkpoint-kept", "warning")}


# ---- 7. the output activation --------------------------------------------------------------


def test_sigmoid_over_several_classes_is_an_error():
    found = errors_of(BASE.replace("units: 10}", "units: 10, activation: sigmoid}"))
    assert codes(found) == {("output-activation", "error")}
    assert "sum to 1" in found[0].message and "softmax" in found[0].hint


def test_a_sigmoid_layer_after_the_last_dense_is_the_same_mistake():
    found = errors_of(BASE + "    - {type: sigmoid}\n")
    assert codes(found) == {("output-activation", "error")}
    assert found[0].path == ("model", "layers", 3)


def test_softmax_over_one_unit_is_an_error():
    text = BASE.replace("dataset: mnist", "dataset: mnist, classes: {keep: [3, 5]}")
    found = errors_of(text.replace("units: 10}", "units: 1, activation: softmax}"))
    assert codes(found) == {("output-activation", "error")}
    assert "always 1" in found[0].message


def test_binary_cross_entropy_needs_one_output():
    found = errors_of(BASE + "train: {loss: binary_cross_entropy}\n")
    assert codes(found) == {("output-activation", "error")}


def test_one_sigmoid_unit_for_two_classes_and_softmax_over_ten_are_fine():
    load_spec_text(BASE.replace("units: 10}", "units: 10, activation: softmax}"))
    load_spec(ROOT / "specs" / "cats_dogs_convnet.yaml")


def test_the_validate_command_fails_on_the_sigmoid_even_without_strict(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE.replace("units: 10}", "units: 10, activation: sigmoid}"))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 1 and "FAILED" in done.stdout
    assert "sigmoid" in done.stderr and "Traceback" not in done.stderr
