"""CLIP weights on a machine without network: found out in about a second, not after a minute of retries, with a
whole message that names the entry point's own way to give local weights (lwtakit/clip/online.py, issue 11)."""

import re
import socket
import time

import open_clip  # imported before any clock starts: its import is not what is timed
import pytest
from huggingface_hub import constants

from lwtakit.clip import ClipWeightsUnavailable, load_clip, online
from lwtakit.clip.fallback import clip_or_fallback
from lwtakit.clip.load import first_sentence
from lwtakit.config import ClipConfig
from tests.test_analyze import assert_one_line_error, run_cli


@pytest.fixture
def silent_host():
    """host:port of a local server that accepts TCP connections and never answers: what a firewall or a sandbox
    that swallows traffic looks like (a bare connection test would call it online)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield "127.0.0.1", server.getsockname()[1]


@pytest.fixture
def no_network(monkeypatch, silent_host):
    """A machine online as far as the environment says (HF_HUB_OFFLINE unset), whose download host never answers."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read from the environment when the hub was imported
    monkeypatch.setattr(constants, "ENDPOINT", "https://{}:{}".format(*silent_host))
    online.reachable.cache_clear()
    yield silent_host
    online.reachable.cache_clear()


def test_unreachable_host_fails_in_seconds_with_the_whole_message(no_network):
    started = time.perf_counter()
    with pytest.raises(ClipWeightsUnavailable) as err:
        load_clip("ViT-B-16", "openai")
    seconds = time.perf_counter() - started
    # open_clip's own download retries for about a minute here; the check answers within CHECK_SECONDS
    assert seconds < 5, f"took {seconds:.1f} s"
    message = str(err.value)
    host, port = no_network
    assert f"no network ({host}:{port} did not answer within {online.CHECK_SECONDS:g} s)" in message
    assert "not in the local cache" in message
    assert message.endswith("or run once with network access so that open_clip caches them")
    # both entry points' ways, as a library caller does not say which one it is
    assert "--clip-pretrained FILE" in message and "dissection.clip.pretrained=FILE" in message
    assert not constants.HF_HUB_OFFLINE  # the offline mode was only for the load


def test_silent_closed_and_unresolvable_hosts_are_unreachable_but_a_proxy_that_listens_counts(no_network,
                                                                                               monkeypatch):
    started = time.perf_counter()
    assert not online.reachable(*no_network, timeout=0.5)  # connects, but no TLS server answers
    assert time.perf_counter() - started < 2
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
    assert not online.reachable("127.0.0.1", port)
    assert not online.reachable("no-such-host.invalid", 443)  # .invalid never resolves (RFC 6761)
    # Behind an HTTPS proxy the host is not contacted directly: the proxy accepting a connection is what counts.
    monkeypatch.setenv("HTTPS_PROXY", "http://{}:{}".format(*no_network))
    assert online.reachable("no-such-host.invalid", 8443)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert not online.reachable("no-such-host.invalid", 8444)


def test_hf_hub_offline_is_reported_as_such(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert online.offline_reason("ViT-B-16", "openai") == "offline (HF_HUB_OFFLINE is set)"
    with pytest.raises(ClipWeightsUnavailable, match=r"offline \(HF_HUB_OFFLINE is set\) and the weights are not"):
        load_clip("ViT-B-16", "openai")


def test_download_host_is_where_open_clip_downloads_from():
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"]  # kept on the hub: the hub's host
    assert online.download_address("ViT-B-16", "openai") == ("huggingface.co", 443)
    assert online.download_address("hf-hub:org/model", None) == ("huggingface.co", 443)
    assert online.download_address("ViT-B-16", None) is None  # nothing to download


def test_analyze_names_its_flags_and_train_its_config_keys(tmp_path, capsys):
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "dissect", "--ckpt", "tests/golden/runs/default", "--methods", "clip_dissect",
                           "--clip-pretrained", "openai", "--out", tmp_path / "o")
    assert time.perf_counter() - started < 5
    assert_one_line_error(code, err, "could not load CLIP model ViT-B-16 (pretrained='openai')",
                          "--clip-pretrained FILE or --clip-model local-dir:FOLDER")
    assert "dissection.clip" not in err[0]
    with pytest.raises(ClipWeightsUnavailable) as trained:
        clip_or_fallback(["clip_dissect"], ClipConfig(model="ViT-B-16", pretrained="openai"), "class labels")
    assert "dissection.clip.pretrained=FILE or dissection.clip.model=local-dir:FOLDER" in str(trained.value)
    assert "--clip-pretrained" not in str(trained.value)


def test_first_sentence_never_cuts_a_word():
    hub = ("Failed to download weights for tag 'openai': Failed to download file (open_clip_pytorch_model.bin) for "
           "timm/vit_base_patch16_clip_224.openai. Last error: An error happened while trying to locate the file")
    assert first_sentence(hub) == hub[: hub.index(". Last") + 1]
    words = [f"word{i}" for i in range(200)]  # one sentence far over the limit
    cut = first_sentence(" ".join(words), limit=100)
    assert cut.endswith(" ...") and len(cut) <= 104
    kept = cut[: -len(" ...")].split(" ")
    assert kept == words[: len(kept)]  # whole words, in order, none cut
    assert first_sentence("one line\nsecond line") == "one line"
    assert not re.search(r"\w\.\.\.$", cut)


def test_training_falls_back_to_invert_at_once_without_network(no_network, caplog):
    started = time.perf_counter()
    choice = clip_or_fallback(["clip_dissect"], ClipConfig(model="ViT-B-16", pretrained="openai", fallback="invert"),
                              "class labels")
    assert time.perf_counter() - started < 5
    assert choice.methods == ["invert"] and choice.clip is None
    host, port = no_network
    assert f"no network ({host}:{port} did not answer" in choice.fallback
    assert "dissection.clip.pretrained=" in choice.fallback


def test_weights_in_the_hub_cache_still_load_without_network(no_network, tmp_path, monkeypatch):
    """Offline is no error when the hub's cache has the weights: a tiny model put in the cache the way
    huggingface_hub lays it out (refs/main -> snapshots/<commit>/files) loads, with the weights saved there."""
    import torch

    from lwtakit.clip import save_local_dir
    from tests.test_clip import TINY_CFG

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--lwtakit-test--tiny"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    save_local_dir(model, TINY_CFG, repo / "snapshots" / commit)
    started = time.perf_counter()
    clip = load_clip("hf-hub:lwtakit-test/tiny")
    assert time.perf_counter() - started < 5
    for name, tensor in model.state_dict().items():
        assert torch.equal(clip.model.state_dict()[name], tensor), name
    assert not constants.HF_HUB_OFFLINE
