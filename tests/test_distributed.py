"""Two CPU processes (gloo): ranks see different data, masks stay identical across updates."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sparselearning.core.distributed import MaskDesyncError, mask_checksum
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
    g = torch.Generator().manual_seed(rank)  # each rank its own data
    for step in range(10):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        if mask.step():
            mask.assert_masks_in_sync()
            checks.append(mask_checksum(mask.masks).tolist())
    # a forced mismatch is detected on every rank
    if rank == 1:
        name = next(iter(mask.masks))
        flat = mask.masks[name].view(-1)
        i = int((~flat).nonzero()[0])
        flat[i] = True
    try:
        mask.assert_masks_in_sync()
        detected = False
    except MaskDesyncError:
        detected = True
    # broadcast repairs it
    mask.broadcast_masks(src=0)
    mask.assert_masks_in_sync()
    torch.save({"checks": checks, "detected": detected, "updates": mask.num_updates}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("growth_mode", ["gradient", "random"])
def test_masks_identical_across_ranks(growth_mode, tmp_path):
    mp.spawn(_worker, args=(2, growth_mode, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["updates"] == r1["updates"] == 5
    assert r0["checks"] == r1["checks"]  # identical at init and after every update
    assert len({tuple(c) for c in r0["checks"]}) > 1  # and the topology really changed
    assert r0["detected"] and r1["detected"]
