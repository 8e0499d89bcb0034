"""Every optimizer and schedule builds from a spec and steps; rates match the closed forms."""

import math

import pytest
import torch

from pipeline.spec.base import OPTIMIZERS, SCHEDULES
from pipeline.spec.optim import OptimizerBase
from pipeline.train.optim import build_optimizer, clip_gradients
from pipeline.train.schedules import planned

ADAM = OPTIMIZERS.kinds["sgd"](lr=0.1)


def sched(**kw):
    return SCHEDULES.kinds[kw["type"]].model_validate(kw)


def lrs(schedule, steps_per_epoch=1, epochs=10, opt=ADAM):
    return [r["lr"] for r in planned(schedule, opt, steps_per_epoch=steps_per_epoch, epochs=epochs)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS.kinds))
def test_every_optimizer_builds_and_steps(name):
    o: OptimizerBase = OPTIMIZERS.kinds[name](lr=0.05)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer(o, [w])
    (w**2).sum().backward()
    opt.step()
    assert (w.detach().abs() < torch.tensor([1.0, 2.0])).all(), name


def test_keras_defaults_reach_torch():
    rms = build_optimizer(OPTIMIZERS.kinds["rmsprop"](), [torch.nn.Parameter(torch.zeros(1))])
    assert rms.defaults["alpha"] == 0.9 and rms.defaults["eps"] == 1e-7
    adam = build_optimizer(OPTIMIZERS.kinds["adam"](), [torch.nn.Parameter(torch.zeros(1))])
    assert adam.defaults["eps"] == 1e-7 and adam.defaults["betas"] == (0.9, 0.999)


def test_param_group_lr_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(ADAM, [{"params": [a]}, {"params": [b], "lr_scale": 0.1}])
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.1), pytest.approx(0.01)]


def test_clipping_by_value_and_norm():
    w = torch.nn.Parameter(torch.zeros(4))
    w.grad = torch.tensor([3.0, -4.0, 0.5, 0.0])
    clip_gradients(OPTIMIZERS.kinds["sgd"](clip_value=1.0), [w])
    assert w.grad.tolist() == [1.0, -1.0, 0.5, 0.0]
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    clip_gradients(OPTIMIZERS.kinds["sgd"](clip_norm=1.0), [w])
    assert w.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_exponential_is_eta0_times_point1_to_t_over_s():
    got = lrs(sched(type="exponential", decay_steps=20, interval="step"), 5, 10)
    assert got == pytest.approx([0.1 * 0.1 ** (t / 20) for t in range(50)])


def test_power_is_eta0_over_one_plus_t_over_s_to_c():
    got = lrs(sched(type="power", decay_steps=10, power=2, interval="step"), 4, 10)
    assert got == pytest.approx([0.1 / (1 + t / 10) ** 2 for t in range(40)])


def test_piecewise_constant_follows_keras_boundaries():
    got = lrs(
        sched(type="piecewise_constant", boundaries=[5, 15], values=[0.01, 0.005, 0.001]), 1, 20
    )
    assert got == pytest.approx([0.01] * 6 + [0.005] * 10 + [0.001] * 4)


def test_step_and_multistep_per_epoch():
    per_epoch = lrs(sched(type="step", step_size=3, gamma=0.5), 2, 7)[::2]
    assert per_epoch == pytest.approx([0.1 * 0.5 ** (e // 3) for e in range(7)])
    ms = lrs(sched(type="multi_step", milestones=[2, 5]), 1, 7)
    assert ms == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001])


def test_one_cycle_rises_to_max_then_anneals_far_below_start():
    got = lrs(sched(type="one_cycle", max_lr=1.0), 10, 10)
    peak = got.index(max(got))
    assert max(got) == pytest.approx(1.0) and 25 <= peak <= 35
    assert got[0] == pytest.approx(1.0 / 25) and got[-1] < got[0] / 1000


def test_cyclic_triangular_period():
    got = lrs(sched(type="cyclic", base_lr=0.01, max_lr=0.1, step_size_up=5), 20, 1)
    assert got[0] == pytest.approx(0.01) and got[5] == pytest.approx(0.1)
    assert got[10] == pytest.approx(0.01) and got[15] == pytest.approx(0.1)


def test_cosine_with_warmup():
    got = lrs(sched(type="cosine", warmup=10, min_lr=0.0), 10, 11)
    assert got[0] == pytest.approx(0.01) and got[9] == pytest.approx(0.1)
    t = 60
    assert got[t] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (t - 10) / 100)))


@pytest.mark.parametrize("name", sorted(SCHEDULES.kinds))
def test_every_schedule_plans(name):
    required = {
        "step": {"step_size": 2},
        "multi_step": {"milestones": [2]},
        "piecewise_constant": {"boundaries": [2], "values": [0.1, 0.01]},
        "exponential": {"decay_steps": 2},
        "power": {"decay_steps": 2},
        "one_cycle": {"max_lr": 0.5},
        "cyclic": {"base_lr": 0.01, "max_lr": 0.1},
    }
    got = lrs(sched(type=name, **required.get(name, {})), 3, 4)
    assert len(got) == 12 and all(v > 0 for v in got)
