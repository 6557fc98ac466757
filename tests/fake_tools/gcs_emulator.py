r"""gcp-storage-emulator (PyPI), in memory, with one bucket, on 127.0.0.1:PORT:

    python tests/fake_tools/gcs_emulator.py PORT BUCKET

One gap to real GCS is filled here: real GCS answers a media download with `x-goog-generation`
(the object's generation); the emulator does not, and TensorStore (Orbax's array writes and
reads) needs it for every read after the first write of an object. Without it:

    STORAGE_EMULATOR_HOST=... TENSORSTORE_GCS_HTTP_URL=http://127.0.0.1:PORT \
    GOOGLE_AUTH_TOKEN_FOR_TESTING=x python -c "import tensorstore as ts
    spec = {'driver': 'ocdbt', 'base': 'gs://BUCKET/p/', 'config': {'manifest_kind': 'single'}}
    kv = ts.KvStore.open(spec).result(); kv['a'] = b'x'; kv['b'] = b'y'"
    -> ValueError: Error reading gs://BUCKET/p/manifest.ocdbt: Malformed StorageGeneration

so the emulator's download handler is wrapped to add the header, as GCS sends it. Buckets named
`forbidden-*` answer every request 403, as GCS does for a bucket the caller may not use. And the
emulator answers `objects.moveTo` (gcsfs's rename) with 501, which gcsfs retries for about 30 s
before it falls back to copy + delete: moveTo is answered here as a copy + delete.
"""

from __future__ import annotations

import sys
from http import HTTPStatus

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
    """The emulator's download, plus the object's generation header (as real GCS sends)."""
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
    except Exception:  # a missing object: the emulator's own handler answers 404
        pass
    return _download(request, response, storage, *args, **kwargs)


# Before `server` is imported: its route table holds the handler functions themselves.
objects.download = _download_with_generation

from gcp_storage_emulator import server  # noqa: E402


def _move(request, response, storage, *args, **kwargs):
    """objects.moveTo within a bucket: the emulator's copy, then the source deleted."""
    request.params["dest_bucket_name"] = request.params["bucket_name"]
    objects.copy(request, response, storage)
    if response.status == 200:
        storage.delete_file(request.params["bucket_name"], request.params["object_id"])


def _forbidden(request, response, storage, *args, **kwargs):
    response.status = HTTPStatus.FORBIDDEN
    response.json({"error": {"code": 403, "message": "caller does not have storage access"}})


_NAME = r"[-.\w]+"
_ANY = {method: _forbidden for method in ("GET", "POST", "PUT", "PATCH", "DELETE")}
server.HANDLERS = (
    (r"^(/upload|/download)?(/storage/v1)?/b/forbidden-[-.\w]*(/.*)?$", _ANY),
    (
        rf"^/storage/v1/b/(?P<bucket_name>{_NAME})/o/(?P<object_id>.*[^/]+)"
        r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
        {server.POST: _move},
    ),
    *server.HANDLERS,
)

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
