"""objstore://PATH: a local filesystem that behaves like an object store, for tests of results
written by the model actors (other processes, other nodes) to a URL.

Like S3 and GCS: an object appears whole when its upload completes (put_file publishes a
finished file in one step), a file opened for writing is published when it is closed even
after an error (what fsspec's buffered files do: a writer must not stream into the store), and
there is no rename. Backed by the local disk, so every process of a test sees the same store;
registered in every Python process of a test by objstore_site/sitecustomize.py on PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import uuid

from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "objstore"


class ObjStoreFS(LocalFileSystem):
    protocol = (PROTOCOL,)
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3:]
        return LocalFileSystem._strip_protocol(path)

    def put_file(self, lpath, rpath, **kwargs):
        rpath = self._strip_protocol(rpath)
        os.makedirs(os.path.dirname(rpath), exist_ok=True)
        staging = os.path.join(os.path.dirname(rpath), f".upload-{uuid.uuid4().hex}")
        shutil.copyfile(lpath, staging)
        os.replace(staging, rpath)  # the upload completes: the object appears whole

    def _open(self, path, mode="rb", **kwargs):
        if "w" not in mode:
            return super()._open(path, mode, **kwargs)
        return _PublishOnClose(self, self._strip_protocol(path))

    def mv(self, *args, **kwargs):
        raise NotImplementedError("an object store has no atomic rename")

    rename = mv


class _PublishOnClose:
    """A file opened for writing: bytes buffered, published at close, error or not."""

    def __init__(self, fs, path):
        self.fs, self.path, self.parts, self.closed = fs, path, [], False

    def write(self, data):
        self.parts.append(bytes(data))
        return len(data)

    def close(self):
        if not self.closed:
            self.closed = True
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "wb") as fh:
                fh.write(b"".join(self.parts))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def register() -> None:
    import fsspec

    fsspec.register_implementation(PROTOCOL, ObjStoreFS, clobber=True)
