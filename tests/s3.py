"""A real S3-compatible HTTP server on localhost for the object-store tests (moto's server, from
the dev extra), with the environment a client needs to reach it: fake credentials and
AWS_ENDPOINT_URL, which botocore (under s3fs) reads."""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.request

import pytest


@contextlib.contextmanager
def s3_server(bucket: str = "bucket"):
    """Yields the environment (dict) that points S3 clients at a fresh local server with `bucket`."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets in process-wide state that outlives a server: start from nothing
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"))
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would keep an older server's endpoint
        s3fs.S3FileSystem().mkdir(bucket)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
