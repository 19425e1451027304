"""Whether a pretrained tag's weights can be downloaded here, decided in about a second (issue 11).

Without network, open_clip's download through Hugging Face retries for about a minute in silence before it fails.
:func:`offline_reason` answers first: offline when ``HF_HUB_OFFLINE`` is set, or when the download host does not
complete a TLS handshake within :data:`CHECK_SECONDS` per step (connect, handshake; through the HTTPS proxy of
the environment, if one is set, only the proxy's port is tried); the answer is kept for the process. A TCP
connection alone proves little: sandboxes and firewalls accept connections to any address and never answer.
:func:`hub_offline` then lets the load run in Hugging Face's offline mode, so that weights already in the local
cache still load and missing ones fail at once instead of retrying.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlparse

__all__ = ["CHECK_SECONDS", "download_address", "hub_offline", "offline_reason", "reachable"]

CHECK_SECONDS = 1.0
_TRUE = ("1", "true", "yes", "on")


def _address(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def download_address(model_name: str, pretrained: str | None) -> tuple[str, int] | None:
    """(host, port) open_clip downloads ``model_name``'s ``pretrained`` weights from: the Hugging Face endpoint for
    ``hf-hub:`` models and for tags kept on the hub (open_clip prefers the hub), else the tag's URL's; None when
    nothing is downloaded (no tag, or an unknown one)."""
    import open_clip
    from huggingface_hub import constants

    if model_name.startswith("hf-hub:"):
        return _address(constants.ENDPOINT)
    cfg = open_clip.get_pretrained_cfg(model_name.replace("/", "-"), pretrained or "")
    if cfg.get("hf_hub"):
        return _address(constants.ENDPOINT)
    return _address(cfg["url"]) if cfg.get("url") else None


def _https_proxy(host: str) -> tuple[str, int] | None:
    """The environment's HTTPS proxy for ``host`` (HTTPS_PROXY, ALL_PROXY; NO_PROXY honoured), None without one."""
    import urllib.request

    proxy = urllib.request.getproxies().get("https") or urllib.request.getproxies().get("all")
    return _address(proxy) if proxy and not urllib.request.proxy_bypass(host) else None


@functools.cache
def reachable(host: str, port: int = 443, timeout: float = CHECK_SECONDS) -> bool:
    """Whether ``host:port`` completes a TLS handshake, each step within ``timeout`` seconds; with an HTTPS proxy
    in the environment, whether the proxy accepts a connection. Asked once per process and address."""
    proxy = _https_proxy(host)
    try:
        with socket.create_connection(proxy or (host, port), timeout=timeout) as sock:
            if proxy is None:
                ssl.create_default_context().wrap_socket(sock, server_hostname=host).close()
            return True
    except ssl.SSLCertVerificationError:
        return True  # a TLS server answered: whether its certificate is trusted is the download's business
    except OSError:  # no route, refused, name not resolved, timed out, connection dropped
        return False


def offline_reason(model_name: str, pretrained: str | None) -> str | None:
    """Why ``pretrained``'s weights cannot be downloaded here (None: they can, or nothing is downloaded)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "offline (HF_HUB_OFFLINE is set)"
    address = download_address(model_name, pretrained)
    if address is None or reachable(*address):
        return None
    via = f" through the proxy {':'.join(map(str, proxy))}" if (proxy := _https_proxy(address[0])) else ""
    return f"no network ({address[0]}:{address[1]} did not answer{via} within {CHECK_SECONDS:g} s)"


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face's offline mode inside the block when ``offline``: cached files load, missing ones fail at
    once. huggingface_hub reads ``HF_HUB_OFFLINE`` when it is imported, so its module constant is what counts."""
    if not offline:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
