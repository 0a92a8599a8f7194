"""Where bytes live: content-addressed blobs, written whole or not at all."""

from khazna.storage.blobstore import BlobStore, BlobWriter, LocalBlobStore, StoredBlob

__all__ = ["BlobStore", "BlobWriter", "LocalBlobStore", "StoredBlob"]
