"""The documentation holds together: every relative link in README.md and docs/*.md reaches a file of
the repository, every #anchor a heading of its target (GitHub's slugs), and the README stays a short
front door whose second section is the one on your own photos. Plain text only: no TensorFlow."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# [text](target) and ![alt](target), the text possibly over several lines; an optional "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str, code_spans: bool = False) -> str:
    """``text`` without fenced code blocks, indented code blocks and (unless ``code_spans``) inline
    code spans: blanked, so that line numbers stay."""
    lines, fenced = [], None
    for line in text.splitlines():
        if fenced:
            if line.lstrip().startswith(fenced):
                fenced = None
            lines.append("")
            continue
        if match := FENCE.match(line):
            fenced = match.group(1)[:3]
            lines.append("")
            continue
        if line.startswith(("    ", "\t")) and line.strip() and (not lines or not lines[-1].strip()):
            lines.append("")  # an indented code block (after a blank line, or more of one)
            continue
        lines.append(line if code_spans else re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return "\n".join(lines)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, without punctuation other than
    hyphens and underscores, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_ markers, not snake_case
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def headings(path: Path) -> list[str]:
    """The headings of a markdown file (ATX, outside code), in order."""
    found = []
    for line in prose(path.read_text(), code_spans=True).splitlines():
        if match := re.match(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$", line):
            found.append(match.group(2))
    return found


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives ``path``'s headings: a repeated slug gets -1, -2, ..."""
    seen: Counter[str] = Counter()
    result = set()
    for heading in headings(path):
        base = slug(heading)
        result.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return result


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in ``path``'s prose."""
    text = prose(path.read_text())
    return [(text.count("\n", 0, match.start()) + 1, match.group(1)) for match in LINK.finditer(text)]


def broken_links(path: Path) -> list[str]:
    problems = []
    for line, target in links(path):
        if target.startswith(EXTERNAL):
            continue
        where, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(where)).resolve() if where else path
        name = f"{path.relative_to(ROOT)}:{line}: {target}"
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{name}: leaves the repository")
        elif not resolved.exists():
            problems.append(f"{name}: no such file")
        elif anchor and resolved.suffix == ".md" and unquote(anchor).lower() not in anchors(resolved):
            problems.append(f"{name}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
        elif anchor and resolved.suffix != ".md":
            problems.append(f"{name}: an anchor into a file that is not markdown")
    return problems


# -- the checker itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Use your own images", "use-your-own-images"),
        ("An accurate profile (about 50 minutes on two cores)", "an-accurate-profile-about-50-minutes-on-two-cores"),
        ("Serving: an HTTP service and a container", "serving-an-http-service-and-a-container"),
        ("Is the model any good? The baseline, and small test sets", "is-the-model-any-good-the-baseline-and-small-test-sets"),
        ("The test tools `make test` installs", "the-test-tools-make-test-installs"),
        ("A DVC remote: pull instead of retraining", "a-dvc-remote-pull-instead-of-retraining"),
        ("**Bold** and [a link](x.md) in train.auto_epochs", "bold-and-a-link-in-trainauto_epochs"),
    ],
)  # fmt: skip
def test_slugs_follow_githubs_rules(heading, anchor):
    assert slug(heading) == anchor


def test_the_checker_finds_a_missing_file_a_missing_anchor_and_ignores_code_and_the_web(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Twice\n\n## Twice\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\nSee [other](other.md#twice-1), [top](#page), ![img](other.md) and [the\nweb](https://x.org/a#b).\n\n"
        "```sh\necho [not](a-link.md)\n```\n\n`[nor](this.md)` and\n\n    [nor](indented.md)\n\n"
        "[gone](missing.md), [no anchor](other.md#not-a-heading), [code](other.md#not-a-heading-1),"
        " [out](../../outside.md)\n"
    )
    assert [line.split(": ", 2)[1:] for line in broken_links(page)] == [
        ["missing.md", "no such file"],
        ["other.md#not-a-heading", "no heading #not-a-heading in docs/other.md"],
        ["other.md#not-a-heading-1", "no heading #not-a-heading-1 in docs/other.md"],
        ["../../outside.md", "leaves the repository"],
    ]


# -- the repository's pages ------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file_and_a_heading(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_listed_in_the_readme():
    listed = {target.partition("#")[0] for _, target in links(ROOT / "README.md")}
    missing = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in listed]
    assert not missing, f"README.md, 'Where to read more': link {missing}"


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    lines = len(readme.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to a docs/ page"
    sections = [line for line in prose(readme).splitlines() if line.startswith("## ")]
    assert len(sections) >= 2 and "own photos" in sections[1].lower(), (
        f"README.md's second section should be the one on your own photos, not {sections[1:2]}"
    )
