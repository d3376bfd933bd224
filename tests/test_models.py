"""Tests for the model zoo in models/: registry, shapes, logits, parameter counts, WRN structure."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import MODEL_NAMES, ModelArgumentError, get_model

EXPECTED_NAMES = {
    "MLPCIFAR10", "lenet5", "lenet300-100", "alexnet-s", "alexnet-b", "vgg-c", "vgg-d", "vgg-like",
    "wrn-28-2", "wrn-28-10", "wrn-22-8", "wrn-16-8", "wrn-16-10", "resnet18", "resnet34", "resnet50",
    "cnn-small", "imagenet-resnet18", "imagenet-resnet34", "imagenet-resnet50", "imagenet-resnet101",
    "imagenet-resnet152",
}
# Models cheap enough to also build for 100 classes and run a train-mode forward/backward.
CHEAP = ["MLPCIFAR10", "lenet5", "lenet300-100", "alexnet-s", "vgg-like", "wrn-16-8", "cnn-small"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_linear_weights(model: nn.Module) -> dict[str, tuple]:
    return {f"{name}.weight": tuple(m.weight.shape) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

def test_registry_names_sorted_and_complete():
    assert set(MODEL_NAMES) == EXPECTED_NAMES
    assert list(MODEL_NAMES) == sorted(MODEL_NAMES)
    assert isinstance(MODEL_NAMES, tuple)


def test_unknown_name_raises_one_line_usage_error():
    with pytest.raises(ModelArgumentError) as info:
        get_model("foo", num_classes=10)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'foo'" in msg
    for name in ("wrn-28-10", "cnn-small", "lenet5", "vgg-d", "resnet18"):
        assert name in msg


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(num_classes=10, in_channels=0),
                                    dict(num_classes=10, image_size=-1), dict(num_classes=2.5),
                                    dict(num_classes=10, drop_rate=1.5),
                                    dict(num_classes=10, image_size=12, name="lenet5")])
def test_bad_arguments_raise_usage_error(kwargs):
    name = kwargs.pop("name", "cnn-small")
    with pytest.raises(ModelArgumentError) as info:
        get_model(name, **kwargs)
    assert "\n" not in str(info.value)


def test_drop_rate_only_for_wrn():
    with pytest.raises(ModelArgumentError, match="WideResNet"):
        get_model("resnet18", 10, drop_rate=0.3)
    model = get_model("wrn-16-8", 10, drop_rate=0.3)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # dropout inactive in eval
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))  # active in train


# ---------------------------------------------------------------------------------------------
# Every model: shapes, logits, masked-weight convention
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
@pytest.mark.parametrize("in_channels,image_size,num_classes", [(1, 28, 7), (3, 32, 10)])
def test_forward_shape_and_logits(name, in_channels, image_size, num_classes):
    model = get_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    model.eval()
    batch = 1 if name == "wrn-28-10" else 2
    x = torch.randn(batch, in_channels, image_size, image_size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()
    # Logits, not log-probabilities: exp(out) rows do not sum to 1.
    assert not torch.allclose(out.exp().sum(1), torch.ones(batch), atol=1e-3)
    assert not any(isinstance(m, (nn.LogSoftmax, nn.Softmax)) for m in model.modules())
    # Only Conv2d/Linear hold >1-D weights (the sparse engine masks exactly those).
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if p.dim() > 1:
                assert isinstance(mod, (nn.Conv2d, nn.Linear)), f"{mod_name}.{p_name} in {type(mod).__name__}"
    # The input layer follows in_channels and the classifier num_classes.
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers[-1].out_features == num_classes
    if isinstance(layers[0], nn.Conv2d):
        assert layers[0].in_channels == in_channels
    else:
        assert layers[0].in_features == in_channels * image_size ** 2


@pytest.mark.parametrize("name", CHEAP)
def test_cheap_models_100_classes_train_step(name):
    model = get_model(name, num_classes=100, in_channels=3, image_size=32)
    model.train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2,))
    out = model(x)
    assert out.shape == (2, 100)
    F.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_same_seed_same_weights_and_strict_reload():
    torch.manual_seed(1)
    a = get_model("wrn-16-8", 10)
    torch.manual_seed(1)
    b = get_model("wrn-16-8", 10)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = get_model("wrn-16-8", 10)
    c.load_state_dict(a.state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        get_model("wrn-16-8", 7).load_state_dict(a.state_dict(), strict=True)


# ---------------------------------------------------------------------------------------------
# Parameter counts (standard architectures, values known independently)
# ---------------------------------------------------------------------------------------------

def test_wrn28_10_counts(wrn28_10_shapes):
    model = get_model("wrn-28-10", num_classes=10)
    shapes = conv_linear_weights(model)
    assert shapes == wrn28_10_shapes  # same names and shapes as the reference layout
    assert sum(math.prod(s) for s in shapes.values()) == 36_461_232
    assert 36_400_000 <= n_params(model) <= 36_600_000
    # No conv has a bias; the classifier has one.
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.bias is not None


@pytest.mark.parametrize("name,kwargs,expected", [
    ("lenet300-100", dict(num_classes=10, in_channels=1, image_size=28), 266_610),
    ("lenet5", dict(num_classes=10, in_channels=1, image_size=28), 431_080),
    ("MLPCIFAR10", dict(num_classes=10), 3 * 32 * 32 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 10 + 10),
    ("resnet18", dict(num_classes=10), 11_173_962),
    ("wrn-28-2", dict(num_classes=10), 1_467_610),
])
def test_known_parameter_counts(name, kwargs, expected):
    assert n_params(get_model(name, **kwargs)) == expected


def test_vgg_classifier_inputs():
    assert get_model("vgg-c", 10).classifier[0].in_features == 2048
    assert get_model("vgg-d", 10).classifier[0].in_features == 512
    like = get_model("vgg-like", 10)
    assert like.classifier[0].in_features == 512
    assert sum(isinstance(m, nn.Linear) for m in like.classifier) == 2
    for name, n_1x1 in (("vgg-c", 3), ("vgg-d", 0), ("vgg-like", 0)):
        convs = [m for m in get_model(name, 10).modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 13
        assert sum(m.kernel_size == (1, 1) for m in convs) == n_1x1
        assert all(m.padding == (1, 1) for m in convs)


def test_alexnet_widths():
    for name, width in (("alexnet-s", 1024), ("alexnet-b", 2048)):
        model = get_model(name, 10)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert [m.out_channels for m in convs] == [96, 256, 384, 384, 256]
        assert all(m.stride == (2, 2) for m in convs)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert [m.out_features for m in linears] == [width, width, 10]


# ---------------------------------------------------------------------------------------------
# WideResNet structure and initialisation
# ---------------------------------------------------------------------------------------------

def test_wrn_init():
    torch.manual_seed(0)
    model = get_model("wrn-28-2", 10)
    w = model.block2.layer[1].conv1.weight  # 64x64x3x3
    expected_std = math.sqrt(2.0 / (3 * 3 * 64))
    assert w.mean().abs() < 0.1 * expected_std
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.fc.bias == 0)


def test_wrn_block_shortcuts_are_preactivation():
    model = get_model("wrn-16-8", 10)
    model.eval()
    # Equal widths: identity shortcut on the RAW input, so zeroing conv2 gives block(x) == x.
    block = model.block1.layer[1]
    assert block.convShortcut is None
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        block.conv2.weight.zero_()
        assert torch.allclose(block(x), x)
    # Width change: 1x1 strided conv applied to the PRE-ACTIVATED input.
    block = model.block2.layer[0]
    assert block.convShortcut.kernel_size == (1, 1) and block.convShortcut.stride == (2, 2)
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        block.bn1.running_mean.normal_()
        block.bn1.running_var.uniform_(0.5, 2.0)
        block.conv2.weight.zero_()
        expected = block.convShortcut(F.relu(block.bn1(x)))
        assert torch.allclose(block(x), expected, atol=1e-6)
        assert not torch.allclose(block(x), block.convShortcut(x), atol=1e-3)


def test_wrn_head_is_bn_relu_gap_linear():
    model = get_model("wrn-16-8", 10)
    model.eval()
    feats = {}
    model.block3.register_forward_hook(lambda m, i, o: feats.__setitem__("b3", o))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        b3 = feats["b3"]
        assert b3.shape == (2, 512, 8, 8)
        expected = model.fc(F.relu(model.bn1(b3)).mean(dim=(2, 3)))
    assert torch.allclose(out, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# cnn-small (the CPU demo model)
# ---------------------------------------------------------------------------------------------

def _conv_linear_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_cnn_small_size_and_cost():
    model = get_model("cnn-small", num_classes=10, in_channels=1, image_size=28)
    assert n_params(model) == 24_058
    assert n_params(model) < 100_000
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 32, 64]
    macs = _conv_linear_macs(model, torch.randn(1, 1, 28, 28))
    assert 1.5e6 <= macs <= 3e6


@pytest.mark.slow
def test_cnn_small_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = get_model("cnn-small", num_classes=10, in_channels=1, image_size=28)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
    assert loss.item() < 0.5 * first
