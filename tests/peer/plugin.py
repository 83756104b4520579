"""A pytest plugin for llama.cpp's own server tests run against ``led-local serve``.

Loaded with ``-p plugin`` (tests/test_peer_suite.py), before the suite's conftest: it points
every server preset at a local model instead of a Hugging Face download (``LED_PEER_MODEL``)
and keeps the suite's assertions as they are. The server binary is tests/peer/llama_server.py
through ``LLAMA_SERVER_BIN_PATH``.
"""

from __future__ import annotations

import os

import pytest


def _local(preset):
    def make(*args, **kwargs):
        server = preset(*args, **kwargs)
        server.model_hf_repo = None
        server.model_hf_file = None
        server.model_url = None
        server.model_file = os.environ["LED_PEER_MODEL"]
        return server
    return staticmethod(make)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    import utils  # the suite's utils.py (its directory is the rootdir on sys.path)

    presets = utils.ServerPreset
    for name, method in list(vars(presets).items()):
        if isinstance(method, staticmethod) and name != "load_all":
            setattr(presets, name, _local(method.__func__))
    # the presets' models are local: nothing to fetch before the tests
    presets.load_all = staticmethod(lambda: None)
