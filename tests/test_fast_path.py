"""trainer.compile: the path a training step takes (auto / true / false), its eager fallback, and that the
compiled training forward computes what the eager one does."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from lwtakit import config as config_lib
from lwtakit.errors import UserError
from lwtakit.fast_path import AUTO_MODE, plan_compile


@pytest.mark.parametrize("device,triton,expect", [
    ("cpu", False, (False, None, False, False)),  # auto on the CPU: eager, silently
    ("mps", False, (False, None, False, False)),
    ("cuda", True, (True, AUTO_MODE, True, False)),  # auto on CUDA: compiled, with a fallback
    ("cuda", False, (False, None, False, True)),  # no Triton: eager with a notice
])
def test_auto_compiles_on_cuda_only(device, triton, expect):
    plan = plan_compile("auto", device, triton)
    assert (plan.compile, plan.mode, plan.fallback, plan.notice is not None) == expect
    if plan.notice:
        assert "triton" in plan.notice.lower() and "\n" not in plan.notice


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_true_and_false_keep_their_meaning(device):
    assert plan_compile(True, device, True) == plan_compile(True, device, False)
    on = plan_compile(True, device, False)
    assert (on.compile, on.mode, on.fallback, on.notice) == (True, None, False, None)
    off = plan_compile(False, device, True)
    assert (off.compile, off.notice) == (False, None)


@pytest.mark.parametrize("value", ["maybe", "eager", "reduce-overhead"])
def test_other_values_are_one_line_user_errors(value):
    with pytest.raises(UserError, match=r"^config key 'trainer.compile' is .*choose one of: auto, true, false$"):
        config_lib.load_config("default", [f"trainer.compile={value}"])
    with pytest.raises(UserError, match="choose one of: auto, true, false"):
        plan_compile(value, "cuda", True)


def test_config_default_is_auto_on_every_trainer():
    for overrides in ([], ["trainer=gpu"], ["trainer=cpu"]):
        assert config_lib.load_config("default", overrides).trainer.compile == "auto"
    assert config_lib.load_config("default", ["trainer.compile=false"]).trainer.compile is False


def _module(compile_setting):
    from lightning_modules.classifier import LitClassifier

    cfg = config_lib.load_config("default", ["model.width=0.0625", f"trainer.compile={compile_setting}"])
    torch.manual_seed(0)
    module = LitClassifier(cfg, num_classes=10, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3).train()
    module.configure_model()
    return module


def _loss_and_grads(module, forward, x, y):
    torch.manual_seed(1)  # the same draws of the LWTA seeds in both runs
    loss = F.cross_entropy(forward(x), y)
    grads = torch.autograd.grad(loss, list(module.model.parameters()))
    return loss.detach(), grads


def test_compiled_training_forward_matches_eager():
    """trainer.compile=true on the CPU (tiny ResNet-18, 8 px): the compiled training forward's loss and
    gradients equal the eager network's under the same seed. Inductor's own RNG is switched to torch's
    generator (fallback_random) and the eager layers take the fused path (``fused=True``: the same hash
    uniforms as the compiled graph), so both draw the same LWTA seeds and hence the same winners."""
    import torch._inductor.config as inductor_config

    from lwtakit.lwta import lwta_layers

    module = _module("true")
    assert module.__dict__["_compiled"] is not None
    for layer in lwta_layers(module.model).values():
        layer.fused = True
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    with inductor_config.patch(fallback_random=True):  # torch's own patcher: monkeypatch's undo deletes the key
        loss_c, grads_c = _loss_and_grads(module, module._train_forward, x, y)
    loss_e, grads_e = _loss_and_grads(module, module.model, x, y)
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    # the LWTA layers save float16 tensors for backward (save_dtype "half"): the graphs may round at other points
    assert all((a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-6 for a, b in zip(grads_c, grads_e, strict=True))
    # the checkpoint holds the bare network's keys, not a second copy under the compiled wrapper
    assert not any("_orig_mod" in k or "_compiled" in k for k in module.state_dict())


def _replay_failing_backend(gm, example_inputs):
    def run(*args):  # builds, then fails when it runs, as a CUDA-graph replay can
        raise RuntimeError("accessing tensor output of CUDAGraphs that has been overwritten")
    return run


def test_auto_falls_back_when_the_compiled_step_fails_and_a_model_error_still_raises(caplog):
    """A compiled step that fails (here: when it runs, as a CUDA-graph replay can; a compiler that cannot build is
    the same path): an explicit ``true`` raises; ``auto`` trains eager from then on, with one notice; a model error
    fails the eager step too and is raised."""
    module = _module("false")
    module.__dict__["_compiled"] = torch.compile(module.model, backend=_replay_failing_backend)
    with pytest.raises(RuntimeError, match="overwritten"):  # no fallback planned (true): fails loudly
        module._train_forward(torch.randn(2, 3, 8, 8))
    module.__dict__["_compile_fallback"] = True  # what auto plans on CUDA
    with caplog.at_level(logging.INFO, logger="lightning"):
        out = module._train_forward(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10) and module.__dict__["_compiled"] is None
    notes = [r.getMessage() for r in caplog.records if "trainer.compile=auto" in r.getMessage()]
    assert len(notes) == 1 and "overwritten); training continues eager" in notes[0]
    module.__dict__["_compiled"] = torch.compile(module.model, backend=_replay_failing_backend)
    with pytest.raises(UserError, match="expects 3 input channels"):  # a model error: the eager step raises it
        module._train_forward(torch.randn(2, 5, 8, 8))


def test_a_step_watched_by_a_forward_hook_runs_eager():
    """The sparsity monitor and recordings hook layers for one step: that step must not enter the compiled graph
    (here a compiled step that always fails, with no fallback, so entering it would raise)."""
    module = _module("false")
    module.__dict__["_compiled"] = torch.compile(module.model, backend=_replay_failing_backend)
    seen = []
    handle = module.model.layer1[0].act1.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    out = module._train_forward(torch.randn(2, 3, 8, 8))
    handle.remove()
    assert out.shape == (2, 10) and len(seen) == 1 and seen[0].shape[0] == 2
    with pytest.raises(RuntimeError, match="overwritten"):
        module._train_forward(torch.randn(2, 3, 8, 8))


def test_auto_on_the_cpu_trains_eager():
    module = _module("auto")
    assert module.__dict__["_compiled"] is None


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_compiled_kernels_are_cached_apart_per_instruction_set(tmp_path, capability):
    """A kernel Inductor built under one ATEN_CPU_CAPABILITY, loaded from the shared cache by a process running
    another, aborts that process (seen with avx2 then AVX-512): each instruction set gets its own folder, unless the
    user chose one."""
    import subprocess
    import sys

    code = ("import os; from lwtakit.fast_path import compile_per_isa; compile_per_isa(lambda x: x); "
            "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["ATEN_CPU_CAPABILITY"] = capability
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert os.path.basename(out.stdout.strip()) == capability
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == str(tmp_path)
