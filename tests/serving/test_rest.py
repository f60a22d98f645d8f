"""The REST client without a server (retries, deadlines) and `mask-rcnn serve`'s thread flags;
the REST API against a served export is tested in test_serving_end_to_end.py."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mask_rcnn_tf.serving import (DeadlineExceededError, MaskRCNNRestClient,
                                  ServerUnavailableError)
from tests.serving.fake_model import free_port

REPO = Path(__file__).resolve().parents[2]


def test_rest_client_retries_then_reports_no_server_and_deadlines():
    client = MaskRCNNRestClient(f"127.0.0.1:{free_port()}", "m", retries=2, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="UNAVAILABLE"):
        client.predict_outputs([b"x"])
    with pytest.raises(DeadlineExceededError, match="not ready after 0.3 s"):
        client.wait_until_ready(timeout=0.3, poll_interval=0.05)
    assert time.monotonic() - start < 30


def test_serve_refuses_bad_thread_flags_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mask_rcnn_tf.cli", "serve", "--model-base-path", str(tmp_path),
         "--model-name", "m", "--intra-op-threads", "0"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "mask-rcnn serve: error: --intra-op-threads and --inter-op-threads must be at least 1, "
        "got 0 and 1")  # inter-op: server.default_threads()
