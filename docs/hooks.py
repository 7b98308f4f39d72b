"""An mkdocs hook: pages link to the repository's files as GitHub shows them, and the site follows.

A page under docs/ links to ``../results/README.md`` (the file next to docs/ in the repository), and
a page of the results/ copy (``docs/gen_reference.py`` writes it into the site) may link to
``../docs/guide.md`` or ``../README.md``. Before mkdocs checks and renders a page's links, each
relative link is resolved against where the page lives in the repository and rewritten to where
that file lives in the site: ``docs/X`` → ``X``, ``results/X`` → ``results/X``, the README → the
home page. Any other target is left alone, so ``mkdocs build --strict`` still fails on it.
"""

from __future__ import annotations

import posixpath
import re

RESULTS_PREFIX = "results/"
DOCS_PREFIX = "docs/"
README, HOME = "README.md", "index.md"
# ](target) of a Markdown link or image; the target stops at whitespace, ')' or '#'.
LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?P<rest>[^)]*)\)")
NOT_RELATIVE = re.compile(r"^([a-z][a-z0-9+.-]*:|/|#)", re.IGNORECASE)


def repository_path(src_uri: str) -> str:
    """Where the page ``src_uri`` of the site lives in the repository."""
    return src_uri if src_uri.startswith(RESULTS_PREFIX) else DOCS_PREFIX + src_uri


def site_path(repo_path: str) -> str | None:
    """Where the repository file ``repo_path`` is in the site; None when the site has no copy."""
    if repo_path.startswith(DOCS_PREFIX):
        return repo_path[len(DOCS_PREFIX):]
    if repo_path.startswith(RESULTS_PREFIX):
        return repo_path
    return HOME if repo_path == README else None


def rewrite_links(markdown: str, src_uri: str) -> str:
    """``markdown`` with every relative link re-pointed from repository paths to site paths."""
    page_dir = posixpath.dirname(repository_path(src_uri))
    site_dir = posixpath.dirname(src_uri)

    def replace(match: re.Match) -> str:
        target = match["target"]
        if NOT_RELATIVE.match(target):
            return match[0]
        in_site = site_path(posixpath.normpath(posixpath.join(page_dir, target)))
        if in_site is None:
            return match[0]
        return f"]({posixpath.relpath(in_site, site_dir or '.')}{match['rest']})"

    return LINK.sub(replace, markdown)


def on_page_markdown(markdown, page, config, files):
    return rewrite_links(markdown, page.file.src_uri)
