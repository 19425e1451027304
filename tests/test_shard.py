"""A recording sharded over processes (gloo, 2-3 CPU processes) equals the recording of one process, each process
records only its batches, and a recording over its memory budget spills to a memory-mapped file with the same
values."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lwtakit.lwta import LWTAOptions, lwta_inference
from lwtakit.models import build_model
from lwtakit.recording import RecordOptions, record_activations
from lwtakit.shard import Collective, Shard, batch_bounds, batch_seed

LAYERS = ["layer1.0.act1", "layer2.1.act2", "fc"]


class CountingProbe(torch.utils.data.Dataset):
    """Seeded random images with labels; every index read is appended to ``<log_dir>/<pid>.txt``."""

    def __init__(self, n, log_dir=None):
        g = torch.Generator().manual_seed(3)
        self.images, self.labels = torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)
        self.log_dir = log_dir

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if self.log_dir is not None:
            with open(os.path.join(self.log_dir, f"{os.getpid()}.txt"), "a") as fh:
                fh.write(f"{i}\n")
        return self.images[i], self.labels[i]


def _model():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=5, act="lwta", lwta=LWTAOptions(U=2), width=0.125, stem="cifar")


def _record(probe, collective=None, **options):
    model = _model()
    with lwta_inference(model, "sample"):  # stochastic: only per-batch seeds make the shards match
        return record_activations(model, probe, LAYERS, RecordOptions(
            batch_size=8, passes=3, seed=11, topk=4, progress=False, moments=True, collective=collective, **options))


def _worker(rank, world, init, out, n, budget, chunk):
    import lwtakit.shard

    if chunk:  # tiny gathers: many chunks, rounds of one batch
        lwtakit.shard.CHUNK_BYTES = chunk
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        rec = _record(CountingProbe(n, out), Collective(), memory_budget=budget)
        assert (rec is not None) == (rank == 0)
        if rec is not None:
            torch.save({"acts": rec.acts, "acts_max": rec.acts_max, "per_image": rec.firing_per_image,
                        "firing": rec.firing, "labels": rec.labels, "sizes": rec.shard_sizes,
                        "stats": {k: v.compute() for k, v in rec.stats.items()},
                        "cov": {k: v.covariance() for k, v in rec.moments.items()}}, os.path.join(out, "rec.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world, n, budget, chunk", [(2, 37, 0, None), (3, 13, None, 64)])
def test_a_sharded_recording_equals_one_process_and_each_rank_reads_only_its_batches(tmp_path, world, n, budget,
                                                                                     chunk):
    """37 images in batches of 8: 5 batches, ranks get 3 and 2 (budget 0: every store spilled to disk); 13 images,
    3 processes: 2 batches, the third process records nothing and still takes part, with gathers of 64 bytes (every
    rank must make as many gathers as the others, its own rows or none)."""
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path), n, budget, chunk), nprocs=world, join=True)
    got = torch.load(tmp_path / "rec.pt", weights_only=True)
    one = _record(CountingProbe(n))
    for key, ref in (("acts", one.acts), ("acts_max", one.acts_max), ("per_image", one.firing_per_image),
                     ("firing", one.firing)):
        for layer in LAYERS:
            torch.testing.assert_close(got[key][layer], ref[layer], rtol=0, atol=1e-6)
    assert torch.equal(got["labels"], one.labels)
    for layer in LAYERS:
        ref = one.stats[layer].compute()
        assert torch.equal(got["stats"][layer]["top_indices"], ref["top_indices"])
        torch.testing.assert_close(got["stats"][layer]["mean"], ref["mean"], rtol=0, atol=1e-6)
        torch.testing.assert_close(got["cov"][layer], one.moments[layer].covariance(), rtol=1e-9, atol=1e-9)
    # counted where the images are read: each process read exactly its whole batches, once
    reads = {}
    for f in tmp_path.glob("*.txt"):
        reads[f.stem] = [int(line) for line in f.read_text().split()]
    bounds = batch_bounds(n, 8)
    expected = sorted(sorted(i for b in Shard(r, world).batches(len(bounds)) for i in range(*bounds[b]))
                      for r in range(world))
    assert sorted(sorted(v) for v in reads.values()) == [e for e in expected if e]
    assert sorted(got["sizes"]) == sorted(len(e) for e in expected) and sum(got["sizes"]) == n


def test_over_the_memory_budget_the_rows_are_memory_mapped_from_a_deleted_file_with_the_same_values(tmp_path):
    probe = CountingProbe(20)
    ref = _record(probe, memory_budget=10**9, spill_dir=str(tmp_path))  # within the budget: in memory
    assert str(tmp_path) not in open("/proc/self/maps").read()
    spilled = _record(probe, memory_budget=1000, spill_dir=str(tmp_path))
    mapped = [line for line in open("/proc/self/maps") if str(tmp_path) in line]
    assert mapped and all(line.rstrip().endswith("(deleted)") for line in mapped)  # unlinked files under spill_dir
    assert not list(tmp_path.iterdir())  # nothing left on disk
    for layer in LAYERS:
        assert torch.equal(spilled.acts[layer], ref.acts[layer])
        assert torch.equal(spilled.acts_max[layer], ref.acts_max[layer])
        assert torch.equal(spilled.firing_per_image[layer], ref.firing_per_image[layer])
    assert torch.equal(spilled.labels, ref.labels)


def test_batch_seeds_differ_between_batches_and_seeds_and_are_reproducible():
    seeds = {batch_seed(s, b) for s in range(4) for b in range(50)}
    assert len(seeds) == 200 and batch_seed(3, 7) == batch_seed(3, 7)


@pytest.mark.numerics
@pytest.mark.timeout(400)
def test_analyze_dissect_on_two_processes_writes_the_labels_of_one(tmp_path, capsys):
    """``analyze.py dissect --devices 2`` (Lightning Fabric, ddp_spawn, gloo) with INVERT, CLIP-Dissect (each process
    embeds its batches with a tiny local CLIP), NetDissect IoU (each process streams its batches, thresholds from
    the merged top-quantile candidates, overlaps summed) and both poles of 2 principal directions (per-position
    moments merged): labels.csv equals the one-process run's, and the report says each process recorded half of the
    32 images (counted while recording).

    Two processes split the cores, so each sums in another order than one process does: in float32 that moves
    CLIP-Dissect's scores by ~1e-5 and could flip a near-tied LWTA winner. The networks therefore run in float64
    (``--precision 64``) and the rows are compared as the goldens are (``tests/golden/cases.py`` says why their
    tolerance is 1e-6 relative): every label exactly, every number to the arithmetic's precision."""
    import analyze
    import train as train_script
    from lwtakit.config import load_config
    from tests.golden.cases import compare_outputs, tiny_clip

    # the smallest case that still gives each process two batches of its own (float64 convolutions take the slow
    # reference kernels: this test's cost is its forward passes)
    cfg = load_config("default", [f"run_dir={tmp_path}", "run_name=r", "data.train_size=32", "data.val_size=32",
                                  "data.test_size=16", "data.batch_size=16", "model.width=0.0625", "logger=none",
                                  "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                                  "dissection.enabled=false"])
    run = train_script.train(cfg).run_dir
    common = ["dissect", "--ckpt", str(run), "--probe-size", "32", "--batch-size", "8", "--device", "cpu",
              "--methods", "invert", "clip_dissect", "iou", "--pca", "2", "--precision", "64", "--passes", "2",
              "--clip-model", f"local-dir:{tiny_clip(tmp_path / 'clip')}"]
    assert analyze.main([*common, "--clip-cache", str(tmp_path / "c1"), "--out", str(tmp_path / "one")]) == 0
    assert analyze.main([*common, "--clip-cache", str(tmp_path / "c2"), "--devices", "2",
                         "--out", str(tmp_path / "two")]) == 0
    one, two = ((tmp_path / d / "labels.csv").read_text() for d in ("one", "two"))
    methods = {line.split(",")[2] for line in one.splitlines()[1:]}
    assert methods == {"invert", "clip_dissect", "iou"} and "#pca-," in one
    assert compare_outputs("labels.csv", one, two) == []
    # the embeddings rank 0 gathered are the one process's, cached under the same content key
    (cached_one,), (cached_two,) = (tmp_path / "c1").glob("img_*.pt"), (tmp_path / "c2").glob("img_*.pt")
    assert cached_one.name == cached_two.name
    emb_one, emb_two = (torch.load(c, weights_only=True)["emb"] for c in (cached_one, cached_two))
    assert emb_one.dtype == torch.float64
    torch.testing.assert_close(emb_two, emb_one, rtol=0, atol=1e-12)  # unit vectors: float64 rounding ~1e-15
    report = (tmp_path / "two" / "report.html").read_text()
    assert "2, each recorded its shard of the probe set (images: 16, 16)" in report
    assert "each recorded its shard" not in (tmp_path / "one" / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_bad_input_on_two_processes_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    """The error is raised alike in every process; the parent prints it as one line and exits 2."""
    import analyze

    code = analyze.main(["dissect", "--model", "torchvision:nosuchnet", "--devices", "2", "--device", "cpu",
                         "--out", str(tmp_path / "bad")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: torchvision has no model 'nosuchnet'")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("capacity", [None, 10])
def test_rows_in_memory_and_spilled_give_the_appended_rows_as_one_ordinary_tensor(tmp_path, capacity):
    from lwtakit.rows import Rows

    pieces = [torch.randn(4, 3), torch.randn(4, 3), torch.randn(2, 3)]
    for spill_after in (None, 1):
        rows = Rows(capacity)
        for i, piece in enumerate(pieces):
            with torch.inference_mode():  # as a recording appends them
                rows.append(piece.clone())
            if spill_after == i:
                rows.spill(str(tmp_path))
        out = rows.finish()
        assert torch.equal(out, torch.cat(pieces)) and not out.is_inference() and rows.spilled == (spill_after == 1)
    with pytest.raises(ValueError, match="11 rows appended to a store of 10"):
        Rows(10).append(torch.zeros(11, 3))


def test_more_devices_than_gpus_is_one_error_line(tmp_path, capsys, monkeypatch):
    """Checked before any process starts (Lightning's own message would come as a traceback)."""
    import analyze

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code = analyze.main(["dissect", "--model", "torchvision:resnet18", "--devices", "2", "--device", "cuda",
                         "--out", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip() == ("error: --devices 2 uses GPUs 0..1 and this machine sees 1; give "
                                               "--device cuda (no index) and at most that many --devices")
