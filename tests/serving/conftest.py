"""Fixtures for the serving tests: the fake model (fake_model.py) saved and served in process."""

import pytest

from mask_rcnn_tf.serving.servable import Servable
from mask_rcnn_tf.serving.server import start_server
from tests.serving.fake_model import MODEL_NAME, VERSION, save_fake_model


@pytest.fixture(scope="session")
def fake_model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("fake_base")
    save_fake_model(base / str(VERSION))
    return base


@pytest.fixture(scope="session")
def fake_server(fake_model_base):
    """(target, servable) of an in-process server of the fake model on a free port."""
    servable = Servable(MODEL_NAME, VERSION, str(fake_model_base / str(VERSION)))
    server, port = start_server(servable, port=0, max_workers=4)
    yield f"127.0.0.1:{port}", servable
    server.stop(None)
