"""The same behaviour on a CUDA device: LWTA kernels (eager and compiled), mixed precision, recording and a
real training run. Marked ``gpu`` (deselected by default): ``python -m pytest -m gpu`` on a CUDA machine."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from lwtakit.lwta import LWTA, lwta_layers, set_inference
from lwtakit.models.options import ArchOptions
from lwtakit.models.resnet import resnet18
from lwtakit.recording import record_activations

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _run(m, x, noise, w):
    y = m(x, _noise=noise)
    (gx,) = torch.autograd.grad((y * w).sum(), x)
    return y.detach(), m.last_winners.clone(), gx


@pytest.mark.parametrize("on", ["logits", "relaxation"])
@pytest.mark.parametrize("save_dtype,tol", [("same", 1e-5), ("half", 2e-3)])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("T", [1.0, 0.6])
def test_cuda_equals_cpu_given_the_same_noise(fused, T, save_dtype, tol, on):
    """Eager and fused (Triton) U=2 kernels on the GPU reproduce the CPU eager result bit for bit in the
    forward (winners, output) and to rounding in the straight-through gradient (eq. 2): float32 rounding
    when the relaxation is saved exactly, float16's when it is saved in half precision (the default)."""
    torch.manual_seed(0)
    x = torch.randn(64, 32, 16, 16)  # 2**19 elements: the size at which "auto" fuses too
    u = torch.rand(64, 16, 256)
    w = torch.randn_like(x)
    kw = dict(temperature=T, save_dtype=save_dtype, temperature_on=on)
    ref = _run(LWTA(2, fused=False, **kw), x.clone().requires_grad_(), u, w)
    got = _run(LWTA(2, fused=fused, **kw), x.cuda().requires_grad_(), u.cuda(), w.cuda())
    assert torch.equal(ref[0], got[0].cpu()) and torch.equal(ref[1], got[1].cpu())
    torch.testing.assert_close(got[2].cpu(), ref[2], rtol=tol, atol=tol)


@pytest.mark.parametrize("U,T,fused,on", [(2, 1.0, False, "logits"), (2, 0.5, True, "logits"),
                                         (4, 0.7, False, "logits"), (2, 0.5, True, "relaxation")])
def test_cuda_winner_frequencies_follow_softmax_h_over_T(U, T, fused, on):
    """Winners ~ softmax(h / T), or softmax(h) with the temperature on the relaxation only."""
    torch.manual_seed(1)
    h = torch.tensor([0.3, -0.4, 1.0, 0.1])[:U]
    n = 1 << 18
    m = LWTA(U, temperature=T, fused=fused, temperature_on=on)
    m(h.cuda().repeat(n, 1))
    counts = np.bincount(m.last_winners.view(-1).cpu().numpy(), minlength=U)
    p = torch.softmax(h.double() / (T if on == "logits" else 1.0), 0).numpy()
    assert stats.chisquare(counts, p / p.sum() * n).pvalue > 1e-3


def test_lwta_in_a_cuda_graph_draws_new_winners_at_every_replay():
    """The noise seed is drawn on the device, so a captured graph is not frozen to one sample: replays give
    new winners, one per block, each unit of a tied pair winning half the time."""
    m = LWTA(2, fused=True)
    x = torch.zeros(1 << 16, 2, device="cuda")  # h0 = h1: a fair coin per block
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (Triton compilation) outside the capture
        m(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        m(x)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(m.last_winners.view(-1).clone())
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    wins = torch.stack(draws).double()
    assert ((wins == 0) | (wins == 1)).all()
    assert abs(wins.mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("U", [2, 4])
def test_mixed_precision_train_step_keeps_one_winner_per_block(dtype, U):
    """Under autocast the LWTA layers see half-precision maps: still one winner per block (firing exactly
    1/U), output = input at the winner, finite gradients for every parameter."""
    torch.manual_seed(2)
    model = resnet18(num_classes=6, act_layer=lambda c: LWTA(U), arch=ArchOptions(width=0.25),
                     channel_multiple=U).cuda().train()
    x = torch.rand(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 6, (32,), device="cuda")
    seen = {}

    def check(module, inputs, output):
        mask = module.winner_mask()
        assert output.dtype == dtype
        assert mask.float().mean().item() == 1 / U
        assert torch.equal(output[mask], inputs[0][mask]) and (output[~mask] == 0).all()
        seen[module] = True

    handles = [m.register_forward_hook(check) for m in lwta_layers(model).values()]
    try:
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(lwta_layers(model))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_recording_on_cuda_equals_recording_on_cpu(monkeypatch):
    """A deterministic (argmax) model recorded on the GPU gives the CPU's activations and firing rates."""
    from lwtakit.data.synthetic import ConceptShapes

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convs differ from the CPU at 1e-3
    torch.manual_seed(3)
    model = resnet18(num_classes=6, act_layer=lambda c: LWTA(2), arch=ArchOptions(width=0.25),
                     channel_multiple=2).eval()
    set_inference(model, "argmax")
    probe = ConceptShapes(size=96, seed=0)
    # early layers: deeper ones amplify the rare winner flips at near-ties (float rounding differs by device)
    layers = ["act", "layer1.0.act1"]
    cpu = record_activations(model, probe, layers, batch_size=32, progress=False)
    gpu = record_activations(model.cuda(), probe, layers, batch_size=32, device="cuda", progress=False)
    for name in layers:
        assert gpu.acts[name].device.type == "cpu" and gpu.firing[name].device.type == "cpu"
        torch.testing.assert_close(gpu.acts[name], cpu.acts[name], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(gpu.acts_max[name], cpu.acts_max[name], rtol=1e-3, atol=1e-3)
        assert (gpu.firing[name] - cpu.firing[name]).abs().max() < 1e-3


def test_train_on_gpu_with_mixed_precision(tmp_path):
    """train(cfg) with the ready GPU trainer group (16-mixed): checkpoint, labels and sparsity 1/U."""
    import json

    import train as train_script
    from lwtakit.config import load_config

    cfg = load_config("default", [
        f"run_dir={tmp_path}", "run_name=run", "trainer=gpu", "trainer.devices=1", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "data.train_size=256", "data.val_size=64", "data.test_size=64",
        "dissection.probe_size=64", "dissection.top_images=4", "logger=csv",
    ])
    result = train_script.train(cfg)
    assert (result.run_dir / "checkpoints" / "last.ckpt").exists()
    assert (result.run_dir / "labels.csv").read_text().count("\n") > 1
    results = json.loads((result.run_dir / "results.json").read_text())
    fractions = [v for k, v in results.items() if k.endswith("active_fraction")]
    assert fractions and all(abs(v - 0.5) < 0.01 for v in fractions)


def test_analyze_on_cuda_gives_the_labels_of_the_cpu(tmp_path, monkeypatch):
    """analyze.py dissect and compare with --device cuda: the final-layer labels of a trained model are those
    the CPU finds, and the compare report is written."""
    import csv

    import analyze
    import train as train_script
    from lwtakit.config import load_config

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the CPU computes convs in full float32
    cfg = load_config("default", [
        f"run_dir={tmp_path}", "run_name=run", "trainer=gpu", "trainer.devices=1", "trainer.precision=32-true",
        "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "data.train_size=4000", "data.batch_size=64",
        "data.val_size=256", "data.test_size=256", "model.width=0.125", "logger=none", "dissection.enabled=false",
    ])
    run = train_script.train(cfg).run_dir
    labels = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        argv = ["dissect", "--ckpt", run / "checkpoints" / "last.ckpt", "--probe-size", 256, "--top-images", 4,
                "--grid-units", 2, "--inference", "argmax", "--device", device, "--out", out]
        assert analyze.main([str(a) for a in argv]) == 0
        with open(out / "labels.csv", newline="") as fh:
            labels[device] = [r["label"] for r in csv.DictReader(fh) if r["layer"] == "fc"]
    # (training on the GPU is not bitwise reproducible, so how well the six classes are learnt varies by run)
    assert len(labels["cpu"]) == 6
    assert sum(a == b for a, b in zip(labels["cpu"], labels["cuda"], strict=True)) >= 5, labels
    argv = ["compare", run, "--probe-size", 128, "--eval-size", 128, "--device", "cuda", "--out", tmp_path / "cmp"]
    assert analyze.main([str(a) for a in argv]) == 0
    assert (tmp_path / "cmp" / "report.html").exists()


def test_invert_search_on_cuda_equals_the_cpu():
    """INVERT's length-3 beam search with parsimony on CUDA tensors: the same formulas and AUCs as on the CPU (its
    parsimony mask was built on the CPU and mixed devices)."""
    from lwtakit.labelers.invert import label_units

    g = torch.Generator().manual_seed(0)
    concepts = torch.rand(600, 12, generator=g) < 0.2
    acts = (concepts[:, 0] | concepts[:, 1]).float()[:, None] + 0.3 * torch.rand(600, 4, generator=g)
    names = [f"c{k}" for k in range(12)]
    cpu = label_units(acts, concepts, names, max_length=3, beam=5)
    gpu = label_units(acts.cuda(), concepts.cuda(), names, max_length=3, beam=5)
    # the planted "c0 OR c1" (its two orders label the same images: a tie either device may break either way)
    assert [sorted(r["label"].split(" OR ")) for r in gpu] == [sorted(r["label"].split(" OR ")) for r in cpu]
    assert all(sorted(r["label"].split(" OR ")) == ["c0", "c1"] for r in cpu)
    assert np.allclose([r["auc"] for r in gpu], [r["auc"] for r in cpu], atol=1e-6)
