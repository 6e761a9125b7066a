"""Check the relative links of README.md and docs/**/*.md: every target exists, every anchor too.

Run from the repository root: ``python docs/tools/check_links.py``. Exits 1 naming each broken
link. Anchors must match both the GitHub slug and the mkdocs (Python-Markdown) slug of a
heading, so a link works on GitHub and on the built site.
"""

import re
import sys
from pathlib import Path

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def strip_fences(text: str) -> str:
    """Drop fenced code blocks, where lines are neither headings nor links."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def strip_code(text: str) -> str:
    """Drop fenced code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`]*`", "", strip_fences(text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """Python-Markdown's default anchor for a heading (toc extension)."""
    s = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", s).strip("-")


def anchors(path: Path) -> tuple[set[str], set[str]]:
    """The GitHub and mkdocs anchors of a markdown file's headings."""
    gh, mk = set(), set()
    for line in strip_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            heading = m.group(1).replace("`", "")
            gh.add(github_slug(heading))
            mk.add(mkdocs_slug(heading))
    return gh, mk


def main() -> int:
    """Check every file; print each broken link; return the exit status."""
    root = Path.cwd()
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    broken, checked = [], 0
    for f in files:
        for target in LINK.findall(strip_code(f.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            if not dest.exists():
                broken.append(f"{f.relative_to(root)}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md":
                gh, mk = anchors(dest)
                if anchor not in gh or anchor not in mk:
                    broken.append(f"{f.relative_to(root)}: {target} (no such heading)")
    for b in broken:
        print(b)
    print(f"{checked} relative links in {len(files)} files, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
