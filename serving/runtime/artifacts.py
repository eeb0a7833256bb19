"""What a model version's artifacts are: a digest recorded at approval and checked at load.

The digest is SHA-256 over the artifact tree as downloaded: for every regular file, in the
order of its relative POSIX path, the path, then the content's length and bytes. Renaming,
adding, removing or changing any file changes it; where the tree sits on disk and file times
do not. mlgate's own download marker is left out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ARTIFACT_SHA256 = "mlgate.artifact_sha256"
"""Model-version tag holding the approved digest (hex)."""

IGNORED = frozenset({".complete"})  # the cache's marker of a finished download (loader.py)
_CHUNK = 1 << 20


def artifact_digest(root: Path) -> str:
    """Hex SHA-256 of the file tree under ``root`` (see the module docstring)."""
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*")
                   if p.is_file() and p.relative_to(root).as_posix() not in IGNORED)
    digest = hashlib.sha256()
    for rel, path in files:
        name = rel.encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
