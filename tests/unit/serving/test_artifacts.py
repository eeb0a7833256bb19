"""The artifact digest: the same tree gives the same digest wherever it sits; any change, another."""

from __future__ import annotations

import pytest

from serving.errors import ModelValidationError
from serving.runtime.artifacts import ARTIFACT_SHA256, artifact_digest
from serving.runtime.loader import verify_digest


def tree(root, files):
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return root


FILES = {"MLmodel": b"flavors: {}\n", "model.onnx": b"\x08\x01graph", "extra/stats.json": b"{}"}


def test_the_digest_depends_on_paths_and_contents_only(tmp_path):
    a, b = tree(tmp_path / "a", FILES), tree(tmp_path / "elsewhere" / "b", dict(reversed(FILES.items())))
    (b / ".complete").touch()  # the cache's download marker is not an artifact
    assert artifact_digest(a) == artifact_digest(b)
    assert len(artifact_digest(a)) == 64


@pytest.mark.parametrize("change", [
    {"model.onnx": b"\x08\x01graph!"},          # content
    {"extra/stats2.json": b"{}"},               # an added file
    {"MLmodel": b"flavors: {}", "model.onnx": b"\n\x08\x01graph"},  # bytes moved across a boundary
])
def test_any_change_changes_the_digest(tmp_path, change):
    assert artifact_digest(tree(tmp_path / "a", FILES)) != artifact_digest(tree(tmp_path / "b", {**FILES, **change}))


def test_a_renamed_file_changes_the_digest(tmp_path):
    renamed = {("model2.onnx" if k == "model.onnx" else k): v for k, v in FILES.items()}
    assert artifact_digest(tree(tmp_path / "a", FILES)) != artifact_digest(tree(tmp_path / "b", renamed))


def test_verify_digest_refuses_a_mismatch_and_drops_the_copy(tmp_path):
    good = artifact_digest(tree(tmp_path / "approved", FILES))
    served = tree(tmp_path / "cache", {**FILES, "model.onnx": b"tampered"})
    with pytest.raises(ModelValidationError, match=rf"approved {good[:12]}\.\.\., downloaded [0-9a-f]{{12}}\.\.\."):
        verify_digest(served, {ARTIFACT_SHA256: good}, "models:/m/1")
    assert not served.exists()
    verify_digest(tmp_path / "approved", {ARTIFACT_SHA256: good.upper()}, "models:/m/1")  # hex case aside


def test_an_untagged_version_passes_unless_the_digest_is_required(tmp_path):
    path = tree(tmp_path / "m", FILES)
    verify_digest(path, {}, "models:/m/1")
    with pytest.raises(ModelValidationError, match="registry.require_digest"):
        verify_digest(path, {}, "models:/m/1", required=True)
