"""The example graphs, a stand-in photo and the aiohttp stand-in of ComfyUI as pytest fixtures, for the `queue` and
`batch` tests (test_batch.py, test_batch_hardening.py). Test modules import the fixtures they use."""
import os

import pytest

from support.aio_fake_comfy import FakeComfy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASIC = os.path.join(REPO, "examples", "api", "pulid_flux_basic.json")
IDENTITY_GRAPH = os.path.join(REPO, "examples", "batch", "pulid_flux_identity.json")
PNG = b"\x89PNG\r\n\x1a\nface"


@pytest.fixture
def fake():
    server = FakeComfy()
    yield server
    server.close()


@pytest.fixture
def face(tmp_path):
    path = tmp_path / "me.png"
    path.write_bytes(PNG)
    return str(path)
