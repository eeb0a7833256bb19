"""The container image, checked without a Docker engine: hadolint on the Dockerfile, and the
lock files against pyproject.toml and the chart (what `docker build` installs is what the code
declares and what the RayService says it runs)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def pins(lock: str) -> dict[str, str]:
    lines = (ROOT / "docker" / lock).read_text().splitlines()
    pinned = (line.split("==") for line in lines if line and not line.startswith("#"))
    return {canonicalize_name(name): version for name, version in pinned}


def stages() -> dict[str, str]:
    """Dockerfile text per stage name."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_locks_pin_every_declared_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serving, jobs = pins("serving.txt"), pins("jobs.txt")
    wanted = [(r, serving) for r in project["dependencies"]]
    wanted += [(r, jobs) for r in
               project["dependencies"] + project["optional-dependencies"]["spark"]]
    for line, lock in wanted:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} is not pinned: run `make lock` (docker/lock.py)"
        assert req.specifier.contains(lock[name], prereleases=True), \
            f"{name}=={lock[name]} violates {req}: run `make lock`"
    assert serving.items() <= jobs.items(), "the jobs image must pin the serving packages alike"


def test_chart_ray_version_is_the_image_ray():
    values = yaml.safe_load((ROOT / "helm" / "mlgate" / "values.yaml").read_text())
    assert values["ray"]["version"] == pins("serving.txt")["ray"]


def test_images_run_as_non_root_and_only_jobs_carry_java():
    s = stages()
    for target in ("serving", "jobs"):
        assert re.search(r"^USER 10001$", s[target], re.M), f"{target} runs as root"
        assert re.search(r'^ENTRYPOINT \["mlgate"\]$', s[target], re.M)
    assert "openjdk-17-jre-headless" in s["jobs"]
    assert "openjdk" not in s["serving"] + s["runtime"]
    assert "HEALTHCHECK" in s["serving"] and "/healthz" in s["serving"]
    # No compiler, no pip in the final stages: their only content comes from the build stages.
    final = s["serving"] + s["jobs"] + s["runtime"]
    assert not re.search(r"\b(gcc|build-essential|pip install)\b", final)


def test_dockerignore_admits_everything_the_dockerfile_copies():
    rules = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {src for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), re.M)
              for src in line.split()[:-1]}
    assert copied <= allowed, f"excluded by .dockerignore: {copied - allowed}"
    assert ".venv" not in allowed and ".git" not in allowed
