"""UnitStats: streaming, mergeable statistics equal a single pass computed with torch directly."""

import pytest
import torch

from lwtakit.errors import UserError
from lwtakit.stats import UnitStats


def _direct(x: torch.Tensor, k: int):
    x64 = x.double()
    v, i = torch.topk(x.t(), k, dim=1)
    return x64.mean(0), x64.var(0, unbiased=True), (x > 0).double().mean(0), v, i


def test_chunked_updates_and_merges_equal_one_pass():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(203, 7, generator=g) * 3 + 5
    x[x < 4] = 0  # many zeros, like ReLU/LWTA outputs
    k = 5
    whole = UnitStats(7, topk=k)
    whole.update(x)
    parts = []
    for lo in range(0, 203, 37):  # uneven chunks, merged in a tree
        s = UnitStats(7, topk=k)
        s.update(x[lo:lo + 37], torch.arange(lo, min(lo + 37, 203)))
        parts.append(s)
    left = parts[0].merge(parts[1]).merge(parts[2])
    right = parts[3].merge(parts[4].merge(parts[5]))
    merged = left.merge(right)
    mean, var, fire, tv, ti = _direct(x, k)
    for st in (whole.compute(), merged.compute()):
        assert int(st["count"]) == 203
        torch.testing.assert_close(st["mean"], mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(st["var"], var, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(st["firing_rate"], fire)
        torch.testing.assert_close(st["top_values"], tv)
    # Ties among the zeros are not in the top-5 here, so indices must match exactly.
    assert torch.equal(merged.compute()["top_indices"], ti)


def test_compute_is_pure_and_state_dict_roundtrip():
    x = torch.randn(50, 3)
    s = UnitStats(3, topk=4)
    s.update(x)
    a, b = s.compute(), s.compute()
    assert all(torch.equal(a[key], b[key]) for key in a)
    t = UnitStats(3, topk=4)
    t.load_state_dict(s.state_dict())
    t.update(x[:10])
    s.update(x[:10])
    assert torch.equal(t.compute()["var"], s.compute()["var"])


def test_bad_shapes_and_sync_without_dist():
    s = UnitStats(3)
    with pytest.raises(UserError):
        s.update(torch.zeros(4, 5))
    with pytest.raises(UserError):
        s.merge(UnitStats(4))
    assert s.sync() is s  # no process group: no-op


def _sync_worker(rank, world, init_file, x, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        part = x[rank::world]  # each rank sees a disjoint, interleaved share of the probe set
        s = UnitStats(x.shape[1], topk=3)
        s.update(part, torch.arange(rank, x.shape[0], world))
        s.sync()
        torch.save(s.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sync_across_two_gloo_ranks_equals_one_pass(tmp_path):
    import torch.multiprocessing as mp

    x = torch.randn(41, 4, generator=torch.Generator().manual_seed(3))
    out = str(tmp_path / "state")
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), x, out), nprocs=2, join=True)
    whole = UnitStats(4, topk=3)
    whole.update(x)
    ref = whole.compute()
    for rank in range(2):
        s = UnitStats(4, topk=3)
        s.load_state_dict(torch.load(f"{out}.{rank}"))
        got = s.compute()
        assert int(got["count"]) == 41
        torch.testing.assert_close(got["mean"], ref["mean"])
        torch.testing.assert_close(got["var"], ref["var"])
        assert torch.equal(got["top_indices"], ref["top_indices"])
