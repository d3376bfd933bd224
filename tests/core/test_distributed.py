"""Two CPU processes (gloo): ranks see different data, masks stay identical across updates."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sparselearning.core.distributed import MaskDesyncError, World, mask_checksum, mask_sync_hook
from sparselearning.core.masking import Masking


def _worker(rank, world, growth_mode, out_dir):
    # a file rendezvous: no TCP port that another process could take in between
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # deliberately rank-dependent: masks must not depend on it
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    ddp = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    mask = Masking(opt, growth_mode=growth_mode, update_frequency=2, seed=17)
    mask.add_module(model, density=0.3)
    checks = [mask_checksum(mask.masks).tolist()]
    mask.add_update_hook(mask_sync_hook(lambda event, checksum: checks.append(checksum)))  # checked, then recorded
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    for step in range(10):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        mask.step()
    updates = mask.num_updates
    place = World(rank, world)
    sums = place.all_sum([rank + 1.0, 0.5])
    agree_same, agree_other = place.agree([7, 3]), place.agree([7, rank])
    # a forced mismatch is detected on every rank
    name = next(iter(mask.masks))
    flat = mask.masks[name].view(-1)
    i = int((~flat).nonzero()[0])
    if rank == 1:
        flat[i] = True
    try:
        mask.assert_masks_in_sync()
        detected = False
    except MaskDesyncError:
        detected = True
    # broadcast repairs it
    mask.broadcast_masks(src=0)
    mask.assert_masks_in_sync()
    # the update hook catches a mismatch right after the update that caused it
    def corrupt_on_rank_1(masking, event):
        if rank == 1:
            bit = masking.masks[name].view(-1)
            bit[i] = not bool(bit[i])

    mask.update_hooks.insert(0, corrupt_on_rank_1)  # the corruption first, then the check
    try:
        mask.truncate_weights(0.3)
        hooked = False
    except MaskDesyncError as err:
        hooked = "detected at topology update" in str(err)
    torch.save({"checks": checks, "detected": detected, "updates": updates, "sums": sums,
                "agree": [agree_same, agree_other], "hooked": hooked}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes
@pytest.mark.parametrize("growth_mode", ["gradient", "random"])
def test_masks_identical_across_ranks(growth_mode, tmp_path):
    mp.spawn(_worker, args=(2, growth_mode, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["updates"] == r1["updates"] == 5
    assert r0["checks"] == r1["checks"]  # identical at init and after every update
    assert len({tuple(c) for c in r0["checks"]}) > 1  # and the topology really changed
    assert r0["detected"] and r1["detected"]
    assert r0["hooked"] and r1["hooked"]
    assert r0["sums"] == r1["sums"] == [3.0, 1.0] and r0["agree"] == r1["agree"] == [True, False]
