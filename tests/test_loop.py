"""The engine's loops (sparselearning.loop): host syncs, the non-finite-loss stop, fp16 loss scaling with
Masking, EDST's dense gradient (no BatchNorm side effect, scaled under fp16), and the speed flags."""
import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from helpers import timeless, write_fashion_mnist
from models import get_model
from sparselearning import checkpoint as ckpt
from sparselearning.cli import build_parser, parser_defaults, validate
from sparselearning.core import Masking
from sparselearning.loop import (NonFiniteLossError, compiled_for_training, dense_gradients, evaluate_model,
                                 speed_settings, to_channels_last, train_one_epoch)
from sparselearning.recipes import cifar_plan, main
from sparselearning.train import Run, start_run

SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class HostSyncs(TorchFunctionMode):
    """Counts the tensor calls that make the host wait for the device, by the step they happen in."""

    def __init__(self):
        super().__init__()
        self.where = "start"
        self.calls: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCS:
            self.calls.setdefault(self.where, []).append(func.__name__)
        return func(*args, **(kwargs or {}))

    def hooks(self) -> dict:
        return {"before_step": lambda i: setattr(self, "where", i),
                "after_step": lambda i, loss: setattr(self, "where", ("after", i))}


def small_cnn(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def batches(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 6, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def sparse_setup(update_frequency, seed=0):
    model = small_cnn(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mask = Masking(opt, death_rate=0.3, growth_mode="gradient", update_frequency=update_frequency, seed=1)
    mask.add_module(model, density=0.5, sparse_init="uniform")
    return model, opt, mask


# ----------------------------------------------------------------------------------- host syncs
def test_dense_training_syncs_only_at_the_checks():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    syncs = HostSyncs()
    with syncs:
        train_one_epoch(model, batches(8), opt, None, None, progress=False, check_every=3, **syncs.hooks())
    # steps 3 and 6 (i = 2, 5) check the loss, and the end reads the flag and the sums; nothing else
    assert set(syncs.calls) == {2, 5, ("after", 7)}, syncs.calls


def test_sparse_training_syncs_only_at_checks_and_the_topology_update():
    model, opt, mask = sparse_setup(update_frequency=5)
    syncs = HostSyncs()
    with syncs:
        train_one_epoch(model, batches(8), opt, mask, None, progress=False, check_every=100, **syncs.hooks())
    assert mask.num_updates == 1  # step 5 (i = 4) was the update; it checks the loss first
    assert set(syncs.calls) == {4, ("after", 7)}, syncs.calls
    assert "__int__" in syncs.calls[4]  # ... the non-finite check, before the update's own work


def test_evaluation_syncs_once_and_matches_a_reference():
    model = small_cnn()
    model.eval()
    data = batches(5, size=7, seed=3)
    syncs = HostSyncs()
    with syncs:
        got = evaluate_model(model, data, topk=(1, 2))
    assert sum(map(len, syncs.calls.values())) == 1  # one copy of all the sums
    with torch.no_grad():
        out = torch.cat([model(x) for x, _ in data]).numpy().astype(np.float64)
    y = torch.cat([y for _, y in data]).numpy()
    logp = out - np.log(np.exp(out).sum(1, keepdims=True))
    order = np.argsort(-out, axis=1)
    assert got["images"] == 35
    assert got["loss"] == pytest.approx(-logp[np.arange(35), y].mean(), rel=1e-5)
    assert got["acc"] == pytest.approx((order[:, 0] == y).mean())
    assert got["top2"] == pytest.approx((order[:, :2] == y[:, None]).any(1).mean())


def test_epoch_means_equal_a_plain_loop():
    data = batches(6, size=5)
    model, ref = small_cnn(), small_cnn()
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (model, ref))
    stats = train_one_epoch(model, data, opt, None, None, progress=False, check_every=2)
    losses, hits = [], 0
    for x, y in data:
        ref_opt.zero_grad()
        out = ref(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        ref_opt.step()
        losses.append(loss.item() * 5)
        hits += int((out.argmax(1) == y).sum())
    assert stats["loss"] == sum(losses) / 30  # the same float64 sum, in the same order
    assert stats["acc"] == hits / 30
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------------- non-finite loss
def poisoned(data, index):
    return [(torch.full_like(x, float("nan")) if i == index else x, y) for i, (x, y) in enumerate(data)]


def test_nonfinite_loss_names_its_first_step_though_checked_later():
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(NonFiniteLossError, match=r"the loss became nan at epoch 3, step 2;.*intact"):
        train_one_epoch(model, poisoned(batches(6), 1), opt, None, None, progress=False, epoch=3, check_every=100)


def test_nonfinite_loss_stops_before_a_topology_update():
    model, opt, mask = sparse_setup(update_frequency=4)
    with pytest.raises(NonFiniteLossError, match="step 2;"):
        train_one_epoch(model, poisoned(batches(8), 1), opt, mask, None, progress=False, check_every=100)
    assert mask.steps == 3 and mask.num_updates == 0  # steps 1-3 ran; step 4, the update, never did


# ----------------------------------------------------------------------------------- fp16 loss scaling
class GradBomb(nn.Module):
    """Identity whose backward turns the gradient into inf on the given forward calls (an fp16 overflow)."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def forward(self, x):
        self.count += 1
        if self.count in self.calls:
            x.register_hook(lambda g: g * float("inf"))
        return x


def test_a_step_the_scaler_skips_is_no_masking_step():
    model, opt, mask = sparse_setup(update_frequency=3)
    net = nn.Sequential(model[0], GradBomb({3}), *model[1:])  # the third step's conv gradients overflow
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    train_one_epoch(net, batches(5), opt, mask, None, scaler=scaler, progress=False)
    assert scaler.get_scale() == 2.0 ** 9  # one skipped step, seen by scaler.update()
    assert mask.steps == 4  # 5 steps, one skipped
    assert mask.num_updates == 1  # the update came on the next real step
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dense_training_with_a_scaler_skips_the_overflowing_step():
    model = small_cnn()
    net = nn.Sequential(model[0], GradBomb({2}), *model[1:])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    data = batches(2)
    before = [p.detach().clone() for p in model.parameters()]
    train_one_epoch(net, data[:1], opt, None, None, scaler=scaler, progress=False)
    after_first = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before, after_first))
    train_one_epoch(net, data[1:], opt, None, None, scaler=scaler, progress=False)
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), after_first))  # skipped
    assert scaler.get_scale() == 2.0 ** 9


# ----------------------------------------------------------------------------------- EDST's dense gradient
def trained_a_little(model):
    model.train()
    with torch.no_grad():
        for x, _ in batches(3, seed=9):
            model(x)  # running statistics away from their initial values
    return model


def buffers(model):
    return {n: b.clone() for n, b in model.named_buffers()}


def test_dense_gradients_keep_batchnorm_statistics_and_equal_autograd():
    model = trained_a_little(small_cnn())
    x, y = batches(1, size=16, seed=4)[0]
    ref = copy.deepcopy(model)
    ref_buffers = buffers(ref)
    ref_grads = torch.autograd.grad(F.cross_entropy(ref(x), y), list(ref.parameters()))
    assert not all(torch.equal(b, ref_buffers[n]) for n, b in ref.named_buffers())  # a plain forward moves them
    before = buffers(model)
    dense_gradients(model, (x, y))
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.equal(p.grad, g)


def test_dense_gradients_under_a_scaler_equal_the_unscaled():
    model = trained_a_little(small_cnn())
    batch = batches(1, size=16, seed=4)[0]
    ref = copy.deepcopy(model)
    dense_gradients(ref, batch)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    dense_gradients(model, batch, scaler=scaler)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    assert scaler.get_scale() == 2.0 ** 16  # untouched: the next training step scales as before


def fp16(device="cpu"):
    return lambda: torch.autocast(device, dtype=torch.float16)


def test_dense_gradients_in_fp16_do_not_underflow():
    """Gradients below fp16's range vanish unscaled; with the scaler's scale they survive and are right."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    batch = (torch.randn(64, 10), torch.randint(0, 4, (64,)))

    def tiny(out, y):  # a loss 1e-6 of cross-entropy: its gradients are below fp16's smallest (6e-8)
        return F.cross_entropy(out, y) * 1e-6

    ref = copy.deepcopy(model)
    ref_grads = torch.autograd.grad(tiny(ref(batch[0]), batch[1]), list(ref.parameters()))
    dense_gradients(model, batch, autocast=fp16(), criterion=tiny)
    assert all(int(torch.count_nonzero(p.grad)) == 0 for p in model[0].parameters())  # the bug: all zero
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    dense_gradients(model, batch, autocast=fp16(), criterion=tiny, scaler=scaler)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, rtol=2e-2, atol=2e-2 * float(g.abs().max()))


def test_dense_gradients_halve_a_scale_that_overflows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    batch = (torch.randn(8, 10), torch.randint(0, 4, (8,)))
    ref = copy.deepcopy(model)
    ref_grads = torch.autograd.grad(F.cross_entropy(ref(batch[0]), batch[1]), list(ref.parameters()))
    overflow = copy.deepcopy(model)
    with fp16()():
        loss = F.cross_entropy(overflow(batch[0]), batch[1])
    (loss * 2.0 ** 22).backward()  # fp16's largest is 65504: the scaled gradients overflow
    assert not all(torch.isfinite(p.grad).all() for p in overflow.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 22)
    dense_gradients(model, batch, autocast=fp16(), scaler=scaler)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad, g, rtol=2e-2, atol=2e-2 * float(g.abs().max()))
    assert scaler.get_scale() == 2.0 ** 22


# ----------------------------------------------------------------------------------- speed flags
SPEED = ["--channels-last", "--compile", "--no-tf32"]


@pytest.mark.parametrize("script", ["individual", "DST", "EDST", "PF"])
def test_speed_flags_are_no_resume_difference(script, tmp_path):
    base = ["--model", "cnn-small", "--sparse", "--output-dir", str(tmp_path),
            *(["--pretrained", "x.pth"] if script == "PF" else [])]
    parser = build_parser(script)
    plain, fast = parser.parse_args(base), parser.parse_args(base + SPEED)
    for a in (plain, fast):
        validate(script, a)
    assert fast.channels_last and fast.compile and fast.no_tf32
    saved = Run(cifar_plan(script, plain, parser_defaults(parser))).fingerprint()
    run = Run(cifar_plan(script, fast, parser_defaults(parser)))
    assert run.fingerprint_differences(saved) == []
    assert run.plan.wrap_model is not None  # --compile compiles the training module


def test_imagenet_accepts_the_speed_flags(tmp_path):
    from ImageNet.main import parse

    args, _, _ = parse([*SPEED, "--output-dir", str(tmp_path), str(tmp_path)])
    assert args.channels_last and args.compile and args.no_tf32


def test_speed_settings_on_cuda_and_the_cpu(capsys):
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        speed_settings(torch.device("cpu"), tf32=False)
        assert "--no-tf32 applies on CUDA only" in capsys.readouterr().out
        assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32) == saved  # nothing changed on the CPU
        speed_settings(torch.device("cuda"), tf32=True)  # only torch's flags: no CUDA call is made
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
        speed_settings(torch.device("cuda"), tf32=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert capsys.readouterr().out == ""
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = saved


def test_channels_last_model_and_inputs():
    plain = small_cnn()
    model = to_channels_last(copy.deepcopy(plain))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    model[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(4, 1, 6, 6)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    assert seen == [True]
    assert list(model.state_dict()) == list(plain.state_dict())


def fmnist_args(data_dir, out, *extra):
    return ["--model", "cnn-small", "--data", "fashionmnist", "--data-dir", str(data_dir), "--batch-size", "32",
            "--test-batch-size", "64", "--output-dir", str(out), "--no-progress", "--seed", "1", "--sparse",
            "--density", "0.3", "--update-frequency", "4", "--epochs", "2", *extra]


@pytest.mark.slow
def test_compiled_run_saves_plain_tickets_with_the_same_numbers(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=100, n_test=20)
    parser = build_parser("DST")
    runs = {}
    for name, extra in (("plain", []), ("compiled", ["--compile"]), ("both", ["--compile", "--channels-last"])):
        args = parser.parse_args(fmnist_args(data, tmp_path / name, *extra))
        validate("DST", args)
        plan = cifar_plan("DST", args, parser_defaults(parser))
        if args.compile:  # the eager backend: torch.compile's graph capture without a C++ build
            plan = dataclasses.replace(plan, wrap_model=compiled_for_training(backend="eager"))
        run = Run(plan)
        runs[name] = (start_run(run), run)
    (plain, _), (compiled, run), (both, _) = runs["plain"], runs["compiled"], runs["both"]
    assert type(run.parts.net.compiled).__name__ == "OptimizedModule"  # inside the dynamic-batch wrapper
    assert timeless(compiled["history"]) == timeless(plain["history"])  # the eager backend runs the same kernels
    folder = run.run_dir
    ticket = ckpt.load_ticket(folder / "model.pth")
    state = ckpt.ticket_state_dict(ticket)
    assert not any("_orig_mod" in k for k in state)
    get_model("cnn-small", num_classes=10, in_channels=1, image_size=28).load_state_dict(state)  # strict
    last = ckpt.safe_load(folder / "last.pth")
    assert not any("_orig_mod" in k for k in last["model"])
    for a, b in zip(plain["history"], both["history"]):  # channels_last: other kernels, other rounding
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["density"] == pytest.approx(b["density"])


@pytest.mark.slow
def test_compile_with_the_real_backend_saves_a_plain_ticket(tmp_path):
    data = write_fashion_mnist(tmp_path / "data", n_train=200, n_test=50)
    out = tmp_path / "out"
    main("DST", fmnist_args(data, out, "--compile", "--epochs", "1"))
    folder = out / "cnn-small/fashionmnist/density_0.3/DST/seed=1"
    get_model("cnn-small", num_classes=10, in_channels=1, image_size=28).load_state_dict(
        ckpt.ticket_state_dict(ckpt.load_ticket(folder / "model.pth")))
