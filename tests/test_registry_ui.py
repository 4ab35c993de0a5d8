"""The registry UI in a real browser: what a security officer sees on a promoted version's page."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.registry_server import RegistryServer

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium and fonts-nanum")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_version_page_shows_alias_residency_and_approval(
    browser: Any, registry_server: RegistryServer, publish: Callable[[str], str], tmp_path: Path
) -> None:
    version = publish("axk1-안전")
    page = browser.new_page(viewport={"width": 1600, "height": 2400})
    page.goto(f"{registry_server.address}/#/models/axk1-안전/versions/{version}")
    page.get_by_text("sovereign.approved_by").first.wait_for(timeout=60_000)
    body = page.inner_text("body")
    page.screenshot(path=str(tmp_path / "registry-version.png"), full_page=True)
    aliases = body[body.index("Aliases") :][:40]
    assert re.search(r"Aliases\s*:\s*@\s*production", aliases), aliases
    for tag in ("sovereign.residency.site", "sovereign.residency.jurisdiction", "sovereign.approved_by"):
        assert tag in body, f"{tag} is not on the page"
    assert "**Residency:**" not in body, "the summary renders as markdown"
    assert "Residency: artifacts on site local" in body.replace("`", "")
    assert "SEC-100" in body
    assert "axk1-안전" in body, "Korean model names render"
    assert (tmp_path / "registry-version.png").stat().st_size > 10_000
