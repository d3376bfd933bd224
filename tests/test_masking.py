import copy
import itertools
import math

import pytest
import torch
from torch import nn

from sparselearning.core.masking import InvariantError, Masking, zero_outside


class TinyNet(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.emb = nn.Embedding(4, 6)  # never sparsified
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(x)


def batch(seed, n=16, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, classes, (n,), generator=g)


def make(opt="sgd", death_mode="magnitude", growth_mode="gradient", redistribution="none", freq=3,
         density=0.3, init="ERK", seed=0, schedule="constant", total=0):
    torch.manual_seed(seed)
    model = TinyNet()
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    elif opt == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    mask = Masking(optimizer, death_rate=0.5, death_mode=death_mode, growth_mode=growth_mode,
                   redistribution_mode=redistribution, update_frequency=freq, threshold=0.05, seed=seed,
                   death_rate_schedule=schedule, total_steps=total)
    mask.add_module(model, density=density, sparse_init=init)
    return model, optimizer, mask


def train(model, optimizer, mask, steps, start=0):
    for i in range(start, start + steps):
        x, y = batch(i)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        mask.step()


def test_selects_conv_and_linear_weights_only():
    model, _, mask = make()
    assert set(mask.masks) == {"stem.weight", "conv.weight", "fc.weight"}
    assert all(m.dtype == torch.bool for m in mask.masks.values())


def test_include_exclude_patterns():
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    m = Masking(opt, exclude=["stem.*", "fc.weight"])
    m.add_module(model, density=0.5)
    assert set(m.masks) == {"conv.weight"}
    with pytest.raises(ValueError, match="matches no"):
        Masking(opt, exclude=["nothing.here"]).add_module(TinyNet(), density=0.5)
    with pytest.raises(ValueError, match="matches no"):
        Masking(opt, include=["nope*"]).add_module(TinyNet(), density=0.5)


# every death x growth x redistribution rule, the optimizers cycling through them
COMBOS = [(("sgd", "adam", "adamw")[i % 3], *rules) for i, rules in enumerate(itertools.product(
    ["magnitude", "SET", "global_magnitude", "threshold"], ["gradient", "random", "momentum"],
    ["none", "magnitude", "momentum"]))]


@pytest.mark.parametrize("opt,death_mode,growth_mode,redistribution", COMBOS)
def test_invariants_hold_over_many_updates(opt, death_mode, growth_mode, redistribution):
    model, optimizer, mask = make(opt, death_mode, growth_mode, redistribution, freq=2, density=0.25)
    total = mask.num_active()
    budgets0 = dict(mask.budgets)
    dense = [n for n in mask.masks if mask.budgets[n] == mask.masks[n].numel()]
    for i in range(12):
        x, y = batch(i)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        mask.step()
        mask.check_invariants()  # after every step, not only after updates
        for n, p in mask.params.items():
            assert torch.count_nonzero(p.detach()[~mask.masks[n]]) == 0
    assert mask.num_updates == 6
    if death_mode != "threshold":  # threshold removes a variable count, regrowth matches it
        assert mask.num_active() == total
    if redistribution == "none" and death_mode in ("magnitude", "SET"):
        assert mask.budgets == budgets0
    for n in dense:  # fully dense layers are never pruned
        assert bool(mask.masks[n].all())
    assert mask.exploration_rate() >= mask.density()


def test_grown_weights_start_at_zero_with_zero_state():
    model, optimizer, mask = make(freq=1000)
    train(model, optimizer, mask, 3)
    old = {n: m.clone() for n, m in mask.masks.items()}
    x, y = batch(99)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    mask.truncate_weights(0.5)
    for n, p in mask.params.items():
        grown = mask.masks[n] & ~old[n]
        if n in mask.updatable:
            assert grown.any()
        assert torch.all(p.detach()[grown] == 0)
        assert torch.all(optimizer.state[p]["momentum_buffer"][grown] == 0)


def test_kept_weights_keep_their_values():
    """Survivors of death keep their exact values; everything else active now is a grown zero."""
    model, optimizer, mask = make(freq=1000)
    train(model, optimizer, mask, 3)
    before = {n: p.detach().clone() for n, p in mask.params.items()}
    old = {n: m.clone() for n, m in mask.masks.items()}
    mask.truncate_weights(0.5)
    for n in mask.updatable:
        now = mask.params[n].detach()
        n_old = int(old[n].sum())
        survivors = old[n] & mask.masks[n] & (now == before[n]) & (before[n] != 0)
        assert int(survivors.sum()) == n_old - -(-n_old // 2)  # n_old - ceil(n_old / 2)
        assert torch.all(now[mask.masks[n] & ~survivors] == 0)


def test_weight_decay_never_revives_pruned_weights():
    model, optimizer, mask = make("adamw", freq=None)
    train(model, optimizer, mask, 10)
    for n, p in mask.params.items():
        assert torch.count_nonzero(p.detach()[~mask.masks[n]]) == 0
        st = optimizer.state[p]
        assert torch.count_nonzero(st["exp_avg"][~mask.masks[n]]) == 0
        assert torch.count_nonzero(st["exp_avg_sq"][~mask.masks[n]]) == 0


def test_fixed_mask_never_changes():
    model, optimizer, mask = make(freq=None)
    m0 = {n: m.clone() for n, m in mask.masks.items()}
    train(model, optimizer, mask, 10)
    assert all(torch.equal(m0[n], mask.masks[n]) for n in m0) and mask.num_updates == 0


def test_update_frequency_counts_optimizer_steps():
    model, optimizer, mask = make(freq=4)
    train(model, optimizer, mask, 13)
    assert mask.num_updates == 3 and mask.steps == 13


def test_cosine_schedule_really_applies():
    model, optimizer, mask = make(freq=5, schedule="cosine", total=20)
    removed = []
    real = mask.truncate_weights
    mask.truncate_weights = lambda rate, grads=None: removed.append(rate) or real(rate, grads)
    train(model, optimizer, mask, 20)
    assert removed == sorted(removed, reverse=True) and removed[0] < 0.5 and removed[-1] < 0.1
    # RigL's cosine at steps 5, 10, 15, 20 of 20
    assert removed == pytest.approx([0.005 + 0.495 * 0.5 * (1 + math.cos(math.pi * s / 20)) for s in (5, 10, 15, 20)])


def test_death_rate_schedule_restarts_in_every_phase():
    """Phases of 8 and 12 steps: the cosine starts over after step 8 (the ImageNet code's per-phase decay)."""
    model, optimizer, mask = make(freq=4, schedule="cosine", total=20)
    mask.death_rate_restarts = (8,)
    rates = []
    real = mask.truncate_weights
    mask.truncate_weights = lambda rate, grads=None: rates.append(rate) or real(rate, grads)
    train(model, optimizer, mask, 20)

    def cosine(step, length):
        return 0.005 + 0.495 * 0.5 * (1 + math.cos(math.pi * step / length))

    assert rates == pytest.approx([cosine(4, 8), cosine(8, 8), cosine(4, 12), cosine(8, 12), cosine(12, 12)])


def test_update_hooks_see_every_update_and_reexploration():
    model, optimizer, mask = make(freq=3)
    events = []
    mask.add_update_hook(lambda m, event: events.append((event.split()[0], m.num_updates)))
    train(model, optimizer, mask, 7)
    before = {n: m.clone() for n, m in mask.masks.items()}
    x, y = batch(99)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # the dense gradient it grows on
    removed = mask.reexplore(0.8)
    assert events == [("topology", 1), ("topology", 2), ("re-exploration", 3)]
    n = "conv.weight"
    assert removed[n] == math.ceil(0.8 * int(before[n].sum()))  # q of the layer's weights replaced
    assert int((before[n] & ~mask.masks[n]).sum()) > 0 and mask.num_active() == sum(int(m.sum()) for m in before.values())


def test_exact_density_at_init():
    model, _, mask = make(density=0.3, init="uniform")
    for n, m in mask.masks.items():
        assert int(m.sum()) == round(0.3 * m.numel())


def test_pruning_init_keeps_largest_globally():
    torch.manual_seed(1)
    model = TinyNet()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
               and not n.startswith("emb")}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = Masking(opt, update_frequency=None)
    mask.add_module(model, sparse_init="pruning", pf_rate=0.8)
    n_total = sum(w.numel() for w in weights.values())
    assert mask.num_active() == int(n_total * 0.2)
    thresh = min(float(weights[n][m].abs().min()) for n, m in mask.masks.items())
    for n, m in mask.masks.items():
        assert (weights[n][~m].abs() <= thresh).all()


def _one_inactive(mask, name):
    return tuple(i[0] for i in (~mask.masks[name]).nonzero(as_tuple=True))


def _one_active(mask, name):
    return tuple(i[0] for i in mask.masks[name].nonzero(as_tuple=True))


@pytest.mark.parametrize("fault,message", [
    ("inactive weight", "inactive weights are not zero"),
    ("nan weight", "NaN or infinity"),
    ("inf weight", "NaN or infinity"),
    ("momentum", "optimizer state 'momentum_buffer'"),
    ("count", "active weights, budget"),
])
def test_invariant_violation_names_the_layer(fault, message):
    model, optimizer, mask = make()
    x = torch.randn(4, 3, 8, 8)
    model(x).sum().backward()
    mask.step()  # creates the momentum buffers
    mask.check_invariants()
    name = "conv.weight"
    with torch.no_grad():
        if fault == "inactive weight":
            mask.params[name][_one_inactive(mask, name)] = 1e-30  # one tiny value is enough
        elif fault == "nan weight":
            mask.params[name][_one_active(mask, name)] = float("nan")
        elif fault == "inf weight":
            mask.params[name][_one_inactive(mask, name)] = float("-inf")
        elif fault == "momentum":
            optimizer.state[mask.params[name]]["momentum_buffer"][_one_inactive(mask, name)] = -1.0
        else:
            mask.masks[name][_one_inactive(mask, name)] = True
    with pytest.raises(InvariantError, match=f"{name}: .*{message}"):
        mask.check_invariants()


@pytest.mark.parametrize("growth_mode,redistribution", [("gradient", "none"), ("random", "magnitude"),
                                                        ("momentum", "momentum")])
def test_state_dict_round_trip_continues_bit_identically(growth_mode, redistribution, tmp_path):
    model, optimizer, mask = make(growth_mode=growth_mode, redistribution=redistribution, freq=3)
    train(model, optimizer, mask, 7)
    path = tmp_path / "state.pt"
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict(), "mask": mask.state_dict()}, path)
    reference = copy.deepcopy((model.state_dict(), mask.state_dict()))
    train(model, optimizer, mask, 8, start=7)
    final_ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks_ref = {n: m.clone() for n, m in mask.masks.items()}

    model2, optimizer2, mask2 = make(growth_mode=growth_mode, redistribution=redistribution, freq=3, seed=123)
    state = torch.load(path, weights_only=True)
    model2.load_state_dict(state["model"])
    optimizer2.load_state_dict(state["opt"])
    mask2.load_state_dict(state["mask"])
    assert mask2.steps == 7 and torch.equal(mask2.generator.get_state(), reference[1]["generator_state"])
    train(model2, optimizer2, mask2, 8, start=7)
    for n, p in model2.named_parameters():
        assert torch.equal(p.detach(), final_ref[n]), n
    for n in masks_ref:
        assert torch.equal(mask2.masks[n], masks_ref[n])
    assert mask2.exploration_rate() == mask.exploration_rate()


def test_state_dict_of_an_earlier_version_loads():
    """States saved before this version also hold per-layer "densities" and the masking "config": both ignored."""
    model, optimizer, mask = make(freq=3)
    train(model, optimizer, mask, 4)
    old = {**mask.state_dict(), "densities": {n: 0.3 for n in mask.masks}, "config": {"death_rate": 0.5}}
    assert "config" not in mask.state_dict() and "densities" not in mask.state_dict()
    _, _, mask2 = make(freq=3, seed=5)
    mask2.load_state_dict(old)
    assert all(torch.equal(mask2.masks[n], mask.masks[n]) for n in mask.masks) and mask2.steps == 4


def test_load_state_dict_rejects_other_model():
    _, _, mask = make()
    other = TinyNet(width=4)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    m2 = Masking(opt)
    m2.add_module(other, density=0.3)
    with pytest.raises(ValueError, match="shape"):
        m2.load_state_dict(mask.state_dict())


def test_masks_memory_one_byte_per_weight():
    _, _, mask = make()
    assert all(m.element_size() == 1 for m in mask.masks.values())


def test_update_step_with_zero_death_rate_keeps_inactive_weights_zero():
    """An update step trains on the dense gradient; with nothing to prune it must still re-mask."""
    model, optimizer, mask = make(freq=1)
    mask.base_death_rate = 0.0
    masks_before = {n: m.clone() for n, m in mask.masks.items()}
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert mask.step()  # an update step
    mask.check_invariants()
    assert all(torch.equal(mask.masks[n], masks_before[n]) for n in masks_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_zero_outside_zeroes_outside_the_mask_and_keeps_nan(dtype):
    torch.manual_seed(0)
    tensors = [torch.randn(5, 7).to(dtype), torch.randn(3, 3, 2, 2).to(dtype)]
    tensors[0][0, 0], tensors[0][1, 1] = float("nan"), float("nan")
    masks = [torch.rand(t.shape) < 0.4 for t in tensors]
    masks[0][0, 0], masks[0][1, 1] = True, False
    expected = [t * m for t, m in zip(tensors, masks)]  # NaN * 0 is NaN
    zero_outside(tensors, masks)
    for t, m, e in zip(tensors, masks, expected):
        assert t.dtype == dtype
        assert torch.equal(t[~m & ~t.isnan()], torch.zeros_like(t[~m & ~t.isnan()]))
        assert torch.equal(t.nan_to_num(), e.nan_to_num())
    assert tensors[0][0, 0].isnan() and tensors[0][1, 1].isnan()
    assert [m.dtype for m in masks] == [torch.bool, torch.bool]  # the masks are read, not converted


# ------------------------------------------------------------------ coverage: what the core sparsifies
class AttentionNet(nn.Module):
    """A model of one's own: Conv1d, MultiheadAttention (in_proj_weight is a Parameter of the attention
    module, out_proj an nn.Linear), a TransformerEncoderLayer, a LayerNorm, an embedding and an LSTM."""

    def __init__(self, d=16, classes=5):
        super().__init__()
        self.emb = nn.Embedding(10, d)
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.block = nn.TransformerEncoderLayer(d, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.rnn = nn.LSTM(d, d, batch_first=True)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        x = self.conv(self.emb(tokens).transpose(1, 2)).transpose(1, 2)
        x = self.attn(x, x, x, need_weights=False)[0]
        x, _ = self.rnn(self.block(x))
        return self.head(self.norm(x).mean(1))


# independent of masking.py: the weight tensors a user expects sparse, written out by hand
ATTENTION_NET_SPARSE = {"conv.weight", "attn.in_proj_weight", "attn.out_proj.weight",
                        "block.self_attn.in_proj_weight", "block.self_attn.out_proj.weight",
                        "block.linear1.weight", "block.linear2.weight", "head.weight"}


def test_default_coverage_masks_conv1d_attention_and_linear_at_the_density(caplog):
    torch.manual_seed(0)
    model = AttentionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mask = Masking(opt, update_frequency=None)
    with caplog.at_level("INFO", logger="sparselearning.core.masking"):
        mask.add_module(model, density=0.25, sparse_init="uniform")
    assert set(mask.masks) == ATTENTION_NET_SPARSE
    params = dict(model.named_parameters())
    for name in ATTENTION_NET_SPARSE:  # the weights themselves, not the masks: a quarter of each is non-zero
        w = params[name].detach()
        assert int(torch.count_nonzero(w)) == round(0.25 * w.numel()), name
    # training keeps the masked weights of the attention's input projection exactly zero
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        tokens, y = torch.randint(0, 10, (4, 7), generator=g), torch.randint(0, 5, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens), y).backward()
        assert params["attn.in_proj_weight"].grad[~mask.masks["attn.in_proj_weight"]].abs().sum() > 0
        mask.step()
    for name in ("attn.in_proj_weight", "block.self_attn.in_proj_weight"):
        assert not params[name].detach()[~mask.masks[name]].any(), name
        assert not opt.state[params[name]]["momentum_buffer"][~mask.masks[name]].any(), name
    # one table, naming what stays dense: the embedding and the LSTM's weight matrices
    records = [r for r in caplog.records if r.name == "sparselearning.core.masking"]
    assert len(records) == 1
    table = records[0].getMessage()
    assert "sparse MultiheadAttention.in_proj_weight" in table and "sparse Conv1d.weight" in table
    assert "dense  Embedding.weight" in table and "dense  LSTM.weight_hh_l0" in table
    assert "dense weight matrices: emb.weight, rnn.weight_ih_l0, rnn.weight_hh_l0" in table


def test_density_of_sparse_layers_and_model_density_of_all_weights():
    model = AttentionNet()
    mask = Masking(torch.optim.SGD(model.parameters(), lr=0.1), update_frequency=None)
    mask.add_module(model, density=0.25, sparse_init="uniform")
    params = dict(model.named_parameters())
    sparse_total = sum(params[n].numel() for n in ATTENTION_NET_SPARSE)
    everything = sum(p.numel() for p in model.parameters())
    active = sum(round(0.25 * params[n].numel()) for n in ATTENTION_NET_SPARSE)
    assert mask.density() == pytest.approx(active / sparse_total)
    assert mask.model_density() == pytest.approx((active + everything - sparse_total) / everything)


def test_layer_types_and_include_reach_recurrent_weights_and_embeddings():
    model = AttentionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = Masking(opt, layer_types=(nn.LSTM, nn.Embedding))
    mask.add_module(model, density=0.5, sparse_init="uniform")
    assert set(mask.masks) == {"emb.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"}
    mask = Masking(opt, include=["rnn.weight_*", "head.*"])  # 1-D biases never: include takes matrices
    mask.add_module(model, density=0.5, sparse_init="uniform")
    assert set(mask.masks) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}


@pytest.mark.parametrize("name,classes", [("wrn-28-2", 10), ("resnet50", 100), ("vgg-c", 10), ("lenet5", 10)])
def test_paper_models_sparsify_exactly_their_conv2d_and_linear_weights(name, classes):
    from models import get_model

    model = get_model(name, num_classes=classes, in_channels=3, image_size=32)
    expected = [f"{m}.weight" for m, mod in model.named_modules() if type(mod) in (nn.Conv2d, nn.Linear)]
    mask = Masking(torch.optim.SGD(model.parameters(), lr=0.1))
    mask.add_module(model, density=0.2)
    assert list(mask.masks) == expected  # the same tensors in the same order: the same random masks
