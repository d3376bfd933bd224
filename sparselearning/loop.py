"""The engine's loops over batches: one training epoch, one evaluation pass, EDST's dense gradient;
and the device settings they run under (device choice, mixed precision, cudnn/TF32, channels_last,
torch.compile).

Nothing here waits for the device on an ordinary training step: sums and the non-finite-loss flag
stay on the device and are read every ``check_every`` steps, before every topology update and at
the end of the epoch (a GPU keeps its queue full instead of draining it once per step).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .core.flops import FlopsAccountant
from .core.masking import Masking
from .errors import UsageError


class NonFiniteLossError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------- device settings
def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when supported, else fp16 (with a GradScaler); no-op on the CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def speed_settings(device: torch.device, *, tf32: bool = True, note: Callable[[str], None] | None = print) -> None:
    """On CUDA: cudnn autotuning (fixed input shapes) and TF32 for fp32 matmuls and convolutions unless
    ``tf32`` is False (--no-tf32). Process-wide torch settings; on other devices nothing changes."""
    if device.type != "cuda":
        if not tf32 and note is not None:
            note(f"note: --no-tf32 applies on CUDA only; {device.type} computes float32 in full precision")
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def _channels_last_input(module: nn.Module, inputs: tuple) -> tuple:
    x, *rest = inputs
    if torch.is_tensor(x) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


def to_channels_last(model: nn.Module) -> nn.Module:
    """--channels-last: the model's 4-D weights in channels_last, and every 4-D input batch converted on
    the way in (a forward pre-hook: training, validation and re-exploration alike; state_dict unchanged)."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_input)
    return model


class _DynamicBatch(nn.Module):
    """Calls `compiled` with the batch dimension of its input marked dynamic: one graph for every batch
    size (the epoch's partial last batch included) instead of a second, shape-specialised compile."""

    def __init__(self, compiled: nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x, *args, **kwargs):
        if torch.is_tensor(x) and x.dim() > 0:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.compiled(x, *args, **kwargs)

    @property
    def _orig_mod(self) -> nn.Module:  # what checkpoints save of a compiled module (checkpoint.py)
        return self.compiled._orig_mod


def compiled_for_training(wrap: Callable[[nn.Module], nn.Module] | None = None,
                          backend: str | Callable | None = None) -> Callable[[nn.Module], nn.Module]:
    """--compile: a RunPlan.wrap_model that torch.compiles the training module (after `wrap`, e.g. DDP),
    batch dimension dynamic (one compile for the whole run).

    The Run keeps the plain model for validation, tickets and last.pth, so nothing saved carries
    torch.compile's ``_orig_mod.`` prefix. backend: torch.compile's (default inductor).
    """
    def build(model: nn.Module) -> nn.Module:
        net = wrap(model) if wrap is not None else model
        return _DynamicBatch(torch.compile(net, **({"backend": backend} if backend else {})))
    return build


# ---------------------------------------------------------------------------------- one epoch
class _FirstNonFinite:
    """The step (1-based) and value of the first non-finite loss, kept on the device until check()."""

    def __init__(self, epoch: int):
        self.epoch, self.step, self.value = epoch, None, None

    def record(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss)
        if self.step is None:
            self.step, self.value = torch.where(bad, step, 0), loss.float()
            return
        first = bad & (self.step == 0)
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss.float(), self.value)

    def check(self) -> None:
        """One host sync; raises NonFiniteLossError if a recorded loss was non-finite."""
        if self.step is not None and int(self.step):
            raise NonFiniteLossError(f"the loss became {float(self.value)} at epoch {self.epoch}, step "
                                     f"{int(self.step)}; the last complete checkpoint and the saved tickets are "
                                     f"intact - lower --lr")


def train_one_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                    masking: Masking | None, flops: FlopsAccountant | None, *, autocast=contextlib.nullcontext,
                    scaler=None, criterion: Callable = F.cross_entropy,
                    before_step: Callable[[int], None] | None = None,
                    after_step: Callable[[int, torch.Tensor], None] | None = None, epoch: int = 0,
                    progress: bool = True, desc: str = "train", total: int | None = None,
                    check_every: int = 100) -> dict:
    """Train over `batches`; returns mean loss/accuracy and the last batch (for dense gradients).

    masking.step() replaces optimizer.step() for sparse models (with the GradScaler under fp16, so a
    step the scaler skips runs no topology update). A non-finite loss stops the run: it is looked
    for every `check_every` steps, before every topology update (NaN weights never reach one) and
    at the end, and the error names the step where it first appeared. before_step(i) runs before
    step i (e.g. a warm-up LR), after_step(i, loss) after it (the detached loss, still on the device).
    """
    model.train()
    loss_sum = correct = None  # on the device: no host sync per step
    nonfinite = _FirstNonFinite(epoch)
    seen = 0
    last = None
    bar = tqdm(batches, total=total, desc=desc, leave=False, disable=not progress, mininterval=1.0)
    for i, (x, y) in enumerate(bar):
        if before_step is not None:
            before_step(i)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
            loss = criterion(out, y)
        nonfinite.record(loss.detach(), i + 1)
        if (i + 1) % check_every == 0 or (masking is not None and masking.is_update_step()):
            nonfinite.check()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if masking is not None:
            updated = masking.step(scaler=scaler)
        else:
            scaler.step(optimizer) if scaler is not None else optimizer.step()
            updated = False
        if scaler is not None:
            scaler.update()
        if flops is not None:
            if updated:
                flops.add_step(x.shape[0], dense_grad=masking.needs_dense_gradient)
                flops.set_densities(masking.layer_densities())
            else:
                flops.add_step(x.shape[0])
        batch_loss = loss.detach().double() * x.shape[0]
        batch_correct = (out.detach().argmax(1) == y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        seen += x.shape[0]
        last = (x, y)
        if after_step is not None:
            after_step(i, loss.detach())
    bar.close()
    nonfinite.check()
    if loss_sum is None:
        return {"loss": 0.0, "acc": 0.0, "last_batch": None}
    loss_total, correct_total = torch.stack([loss_sum, correct.double()]).tolist()  # one host sync
    return {"loss": loss_total / seen, "acc": int(correct_total) / seen, "last_batch": last}


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: Iterable, *, autocast=contextlib.nullcontext,
                   criterion: Callable = F.cross_entropy, topk: tuple[int, ...] = (1,),
                   all_sum: Callable[[list[float]], list[float]] | None = None) -> dict:
    """Mean loss, top-1 accuracy ("acc") and "top<k>" for every other k in `topk`, and "images".

    Sums, so the last partial batch counts fully; kept on the device and read once at the end.
    `all_sum` (e.g. World.all_sum) adds the sums of every data-parallel rank, each evaluating its
    own shard, before the means are taken.
    """
    model.eval()
    ks = [k for k in topk if k != 1]
    sums, seen = None, 0  # [loss (float64), correct, hits of every k] on the device
    for x, y in batches:
        with autocast():
            out = model(x)
        batch = [criterion(out.float(), y, reduction="sum").double(), (out.argmax(1) == y).sum()]
        if ks:
            top = out.topk(min(max(ks), out.shape[1]), dim=1).indices
            batch += [(top[:, :k] == y[:, None]).any(1).sum() for k in ks]
        sums = batch if sums is None else [s + b for s, b in zip(sums, batch)]
        seen += x.shape[0]
    loss_sum, correct, *hits = [0.0] * (2 + len(ks)) if sums is None else torch.stack(
        [s.double() for s in sums]).tolist()  # one host sync
    correct, hits = int(correct), [int(h) for h in hits]
    if all_sum is not None:
        loss_sum, correct, *hits, seen = all_sum([loss_sum, correct, *hits, seen])
    n = max(seen, 1)
    return {"loss": loss_sum / n, "acc": correct / n, **{f"top{k}": h / n for k, h in zip(ks, hits)},
            "images": int(seen)}


# ---------------------------------------------------------------------------------- EDST's dense gradient
def _norm_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every BatchNorm buffer: running mean and variance, num_batches_tracked."""
    return [(b, b.clone()) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers(recurse=False)]


def dense_gradients(model: nn.Module, batch, *, autocast=contextlib.nullcontext, criterion=F.cross_entropy,
                    scaler=None, halvings: int = 4) -> None:
    """Fill every .grad with the dense gradient of one batch (for gradient growth at re-exploration).

    A train-mode forward, as in training (batch statistics), whose BatchNorm running statistics are
    put back afterwards: the gradient moves nothing else. Under fp16 (`scaler` enabled) the loss is
    multiplied by the scaler's current scale, so small gradients do not underflow to zero, and the
    float32 gradients are divided by it again; if that overflows, the scale is halved (up to
    `halvings` times, then no scaling). The scaler itself is left as it is for the next step.
    """
    model.train()
    saved = _norm_buffers(model)
    x, y = batch
    scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
    try:
        for attempt in range(halvings + 2):
            if attempt == halvings + 1:
                scale = 1.0  # the scale overflowed every time: the plain gradient, as without a scaler
            model.zero_grad(set_to_none=True)
            with autocast():
                loss = criterion(model(x), y)
            if scale == 1.0:
                loss.backward()
                return
            (loss * scale).backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
                torch._foreach_div_(grads, scale)  # a power of two: exact
                return
            scale /= 2
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)
