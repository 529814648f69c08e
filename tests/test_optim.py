"""Optimisers and schedules: by-hand updates, PyTorch as the oracle, checkpoints."""
import math

import numpy as np
import pytest

import minires
from minires import nn, optim


def _param(values):
    return nn.Parameter(np.array(values, dtype=np.float32))


def test_sgd_momentum_by_hand():
    p = _param([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [np.array([0.5, 1.0], np.float32), np.array([-1.0, 2.0], np.float32)]
    w, buf = np.array([1.0, -2.0]), None
    for g in grads:
        p.grad = minires.tensor(g)
        opt.step()
        d = g + 0.01 * w
        buf = d if buf is None else 0.9 * buf + d
        w = w - 0.1 * buf
    np.testing.assert_allclose(p.numpy(), w, rtol=1e-6)


def test_zero_grad_and_missing_grads_are_skipped():
    a, b = _param([1.0]), _param([2.0])
    opt = optim.SGD([a, b], lr=1.0)
    a.grad = minires.tensor(np.array([1.0], np.float32))
    opt.step()
    assert a.numpy()[0] == 0.0 and b.numpy()[0] == 2.0
    opt.zero_grad()
    assert a.grad is None


def test_invalid_arguments():
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([_param([1.0])], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([_param([1.0])], lr=-1)


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-4)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.3)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
]


@pytest.mark.parametrize("name, kwargs", CASES)
def test_matches_torch_for_ten_steps(name, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(s).astype(np.float32) for s in [(3, 4), (4,)]]
    ours = [nn.Parameter(w.copy()) for w in start]
    theirs = [torch.tensor(w.copy(), requires_grad=True) for w in start]
    opt_ours = getattr(optim, name)(ours, **kwargs)
    opt_theirs = getattr(torch.optim, name)(theirs, **kwargs)
    for _ in range(10):
        grads = [rng.standard_normal(w.shape).astype(np.float32) for w in start]
        for p, q, g in zip(ours, theirs, grads):
            p.grad = minires.tensor(g)
            q.grad = torch.tensor(g)
        opt_ours.step()
        opt_theirs.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kwargs", [CASES[2], CASES[5]])
def test_state_dict_resume_equals_uninterrupted(name, kwargs):
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(5).astype(np.float32) for _ in range(8)]

    def run(split):
        p = _param(np.linspace(-1, 1, 5))
        opt = getattr(optim, name)([p], **kwargs)
        for i, g in enumerate(grads):
            if i == split:  # rebuild the optimiser from its state dict, as a resumed run does
                saved = opt.state_dict()
                opt = getattr(optim, name)([p], **kwargs)
                opt.load_state_dict(saved)
            p.grad = minires.tensor(g)
            opt.step()
        return p.numpy()

    np.testing.assert_array_equal(run(split=None), run(split=4))


def test_load_state_dict_rejects_mismatch_and_changes_nothing():
    p, q = _param([1.0, 2.0]), _param([3.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = minires.tensor(np.ones(2, np.float32))
    opt.step()
    other = optim.SGD([q], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(opt.state_dict())
    assert other.state == {}


def test_multistep_and_cosine_by_hand():
    p = _param([1.0])
    opt = optim.SGD([p], lr=0.1)
    sched = optim.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.lr)
        sched.step()
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    opt = optim.SGD([p], lr=0.2)
    cos = optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.02)
    for t in range(12):
        expected = 0.02 + 0.18 * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2
        assert opt.lr == pytest.approx(expected)
        cos.step()


def test_warmup_linear_and_constant():
    p = _param([1.0])
    opt = optim.SGD([p], lr=0.1)
    warm = optim.LinearWarmup(opt, warmup=4, start_factor=0.1)
    seen = []
    for _ in range(6):
        seen.append(opt.lr)
        warm.step()
    np.testing.assert_allclose(seen, [0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1])
    opt = optim.SGD([p], lr=0.1)
    after = optim.MultiStepLR(opt, milestones=[2])
    paper = optim.LinearWarmup(opt, warmup=3, start_factor=0.1, mode="constant", after=after)
    seen = []
    for _ in range(7):
        seen.append(opt.lr)
        paper.step()
    np.testing.assert_allclose(seen, [0.01, 0.01, 0.01, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize("kind", ["multistep", "cosine"])
def test_schedules_match_torch(kind):
    torch = pytest.importorskip("torch")
    ours_opt = optim.SGD([_param([1.0])], lr=0.1)
    theirs_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    if kind == "multistep":
        ours = optim.MultiStepLR(ours_opt, [3, 7], 0.5)
        theirs = torch.optim.lr_scheduler.MultiStepLR(theirs_opt, [3, 7], 0.5)
    else:
        ours = optim.CosineAnnealingLR(ours_opt, 8, 0.001)
        theirs = torch.optim.lr_scheduler.CosineAnnealingLR(theirs_opt, 8, 0.001)
    for _ in range(9):
        assert ours.get_last_lr()[0] == pytest.approx(theirs.get_last_lr()[0], rel=1e-9)
        theirs_opt.step()
        ours.step()
        theirs.step()


def test_scheduler_state_roundtrip():
    opt = optim.SGD([_param([1.0])], lr=0.1)
    sched = optim.MultiStepLR(opt, [2], 0.1)
    for _ in range(3):
        sched.step()
    opt2 = optim.SGD([_param([1.0])], lr=0.1)
    sched2 = optim.MultiStepLR(opt2, [2], 0.1)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.lr == pytest.approx(0.01)


@pytest.mark.parametrize("name, kwargs, culprit", [
    ("SGD", dict(lr=-0.1), "lr"), ("SGD", dict(lr=0.1, momentum=-0.9), "momentum"),
    ("SGD", dict(lr=0.1, weight_decay=-1e-4), "weight_decay"), ("SGD", dict(lr=0.1, nesterov=True), "Nesterov"),
    ("Adam", dict(lr=-1e-3), "lr"), ("Adam", dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    ("Adam", dict(betas=(0.9, -0.1)), r"betas\[1\]"), ("Adam", dict(eps=-1e-8), "eps"),
    ("AdamW", dict(weight_decay=-0.01), "weight_decay"),
])
def test_refuses_what_torch_refuses(torch, name, kwargs, culprit):
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([torch.zeros(2, requires_grad=True)], **kwargs)
    with pytest.raises(ValueError, match=culprit):
        getattr(optim, name)([_param([0.0, 0.0])], **kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("hyper", ["lr", "momentum", "weight_decay"])
def test_refuses_non_finite_hyperparameters_torch_would_train_on(value, hyper):
    """PyTorch checks ``lr < 0`` only, so a NaN passes there and turns every weight into NaN at the first step."""
    with pytest.raises(ValueError, match=f"{hyper}.*finite"):
        optim.SGD([_param([0.0])], **dict(dict(lr=0.1), **{hyper: value}))


def test_accepts_the_edges_of_every_range():
    p = _param([1.0])
    optim.SGD([p], lr=0.0, momentum=0.0, dampening=1.0, weight_decay=0.0)
    optim.Adam([p], lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0)
    optim.LinearWarmup(optim.SGD([p], lr=0.1), 0, start_factor=1.0)
    optim.MultiStepLR(optim.SGD([p], lr=0.1), [0, 0])
    opt = optim.SGD([{"params": [p], "lr": np.float32(0.5)}], lr=0.1)
    assert opt.lr == 0.5 and type(opt.lr) is float  # numpy scalars become floats: checkpoints hold JSON
