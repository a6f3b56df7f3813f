"""The tutorial's Mermaid diagrams are drawn in a real browser, from the copy shipped in docs/js.

The site is built with ``mkdocs build --strict``, served on 127.0.0.1, and each page that has
```` ```mermaid ```` blocks is loaded in headless Chromium with every other host unresolvable, so
a renderer fetched from a CDN could not draw anything. The DOM Chromium ends with must hold one
Mermaid ``<svg>`` per block of the page's Markdown and none of the diagrams' source text, and
Chromium's network log must show Mermaid loaded from 127.0.0.1 and asked for nowhere else.

Needs Debian's Chromium (``apt-get install -y chromium``); skipped without it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = REPO_ROOT / "docs"
MKDOCS = Path(sys.executable).parent / "mkdocs"
FENCE = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _chromium() -> str | None:
    if explicit := os.environ.get("CHROMIUM"):
        return explicit
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium)"
)


def _diagrams(page: Path) -> list[str]:
    """The source of each ```mermaid block on a page."""
    return FENCE.findall(page.read_text())


def _url_path(page: Path) -> str:
    """docs/05-saga.md is served as /05-saga/ (use_directory_urls), docs/index.md as /."""
    parts = list(page.relative_to(DOCS).with_suffix("").parts)
    if parts[-1] in ("index", "README"):
        parts.pop()
    return "/" + "".join(f"{part}/" for part in parts)


PAGES = sorted(page for page in DOCS.rglob("*.md") if _diagrams(page))


@dataclass(frozen=True)
class _Loaded:
    dom: str  # the DOM after the page's scripts ran (--dump-dom)
    urls: list[str]  # every URL Chromium asked for (its network log)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The built site, served on a free port of 127.0.0.1 while this module's tests run."""
    site_dir = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    handler = functools.partial(_QuietHandler, directory=str(site_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _load(url: str, profile: Path) -> _Loaded:
    net_log = profile / "net-log.json"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile / 'user-data'}",
        # Every host but 127.0.0.1 fails to resolve: a renderer from a CDN cannot load.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--log-net-log={net_log}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, f"chromium failed on {url}: {result.stderr}"
    urls = re.findall(r'"url":"([^"]+)"', net_log.read_text()) if net_log.exists() else []
    return _Loaded(dom=result.stdout, urls=urls)


@pytest.fixture(scope="module")
def loaded(site: str, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, _Loaded]:
    """Every page with diagrams, each in its own Chromium, two at a time."""
    profiles = {page: tmp_path_factory.mktemp(f"chromium-{page.stem}") for page in PAGES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            page: pool.submit(_load, site + _url_path(page), profiles[page]) for page in PAGES
        }
        return {page: future.result() for page, future in futures.items()}


class _Page(HTMLParser):
    """Mermaid's <svg> elements, and the text a reader sees outside scripts, styles and SVGs."""

    def __init__(self) -> None:
        super().__init__()
        self.diagrams: list[dict[str, str]] = []
        self.text: list[str] = []
        self._svg_depth = 0
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "svg":
            attributes = {name: value or "" for name, value in attrs}
            is_mermaid = attributes.get("id", "").startswith("mermaid-")
            if self._svg_depth == 0 and is_mermaid and "aria-roledescription" in attributes:
                self.diagrams.append(attributes)
            self._svg_depth += 1
        elif tag in ("script", "style", "template", "noscript"):
            self._hidden_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg_depth = max(0, self._svg_depth - 1)
        elif tag in ("script", "style", "template", "noscript"):
            self._hidden_depth = max(0, self._hidden_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._svg_depth == 0 and self._hidden_depth == 0:
            self.text.append(data)


@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_each_mermaid_block_becomes_an_svg_without_the_network(
    page: Path, site: str, loaded: dict[Path, _Loaded]
) -> None:
    diagrams = _diagrams(page)
    parsed = _Page()
    parsed.feed(loaded[page].dom)
    drawn = [svg.get("aria-roledescription") for svg in parsed.diagrams]
    blocks = len(diagrams)
    assert len(drawn) == blocks, (
        f"{page.name}: {blocks} mermaid blocks, {len(drawn)} drawn as SVG ({drawn}); "
        "is docs/js/mermaid.min.js loaded through extra_javascript in mkdocs.yml?"
    )
    assert "error" not in drawn, f"{page.name}: Mermaid drew a syntax error: {drawn}"

    visible = " ".join(" ".join(parsed.text).split())
    for source in diagrams:
        header = " ".join(source.strip().splitlines()[0].split())  # e.g. sequenceDiagram
        assert header not in visible, f"{page.name}: {header!r} is shown as text"

    urls = loaded[page].urls
    assert f"{site}/js/mermaid.min.js" in urls, f"{page.name}: the local Mermaid was not loaded"
    elsewhere = [url for url in urls if "mermaid" in url and not url.startswith(site)]
    assert not elsewhere, f"{page.name}: Chromium asked for Mermaid elsewhere: {elsewhere}"


def test_every_mermaid_block_in_the_docs_is_checked() -> None:
    """The pages above hold every ```mermaid line of the docs (guards the block pattern)."""
    pages = sorted(DOCS.rglob("*.md"))
    fences = sum(
        line.strip().startswith("```mermaid") for p in pages for line in p.read_text().splitlines()
    )
    assert fences > 0
    assert sum(len(_diagrams(page)) for page in PAGES) == fences
    assert DOCS / "05-saga.md" in PAGES
