"""The documentation holds together: every relative link (and #anchor) of README.md, CONTRIBUTING.md and docs/
resolves, every page is at most two clicks from the README, the README stays short, and the figures it quotes are
the rendering of the committed results files (scripts/docs_sections.py)."""
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")


def _sections_module():
    spec = importlib.util.spec_from_file_location("docs_sections", REPO / "scripts" / "docs_sections.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where a link is a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to
    hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    seen, out = {}, set()
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6} +(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path):
    """(target path or None for the page itself, anchor or None) of every relative link in `page`."""
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        yield ((page.parent / path).resolve() if path else page), anchor or None


def test_slugs_follow_githubs_rule():
    assert slug("Runs, reruns and --force") == "runs-reruns-and---force"
    assert slug("Quick start with fairseq's own tools") == "quick-start-with-fairseqs-own-tools"
    assert slug("Mixture of Gaussian keys (`mgk`, `smgk`, `mlk`)") == "mixture-of-gaussian-keys-mgk-smgk-mlk"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    broken = []
    for target, anchor in links(page):
        if not target.exists():
            broken.append(f"{target.relative_to(REPO) if REPO in target.parents else target} (missing)")
        elif anchor and (target.suffix != ".md" or anchor not in anchors(target)):
            broken.append(f"{target.relative_to(REPO)}#{anchor} (no such heading)")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_every_page_is_at_most_two_clicks_from_the_readme():
    reached, frontier = {REPO / "README.md"}, {REPO / "README.md"}
    for _ in range(2):
        step = set()
        for page in frontier:
            for target, _ in links(page):
                target = target / "README.md" if target.is_dir() else target
                if target.suffix == ".md" and target.exists() and target not in reached:
                    step.add(target)
        reached |= step
        frontier = step
    assert not [p for p in PAGES if p not in reached], "not linked within two clicks of the README"


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_the_generated_sections_match_the_results_files():
    """Each figure the README quotes (and the list of fairseq fixes in docs/reliability.md) is what
    scripts/docs_sections.py renders from the committed files: a rerun experiment or a new fix shows up here until
    the section is regenerated."""
    module = _sections_module()
    stale = []
    for name, begin, end, render in module.sections():
        text = (REPO / name).read_text(encoding="utf-8")
        start, stop = module.current(text, begin, end, name)
        if text[start:stop] != render():
            stale.append(f"{name} ({begin.strip()})")
    assert not stale, "run `python scripts/docs_sections.py`: stale " + "; ".join(stale)


def test_a_changed_results_file_changes_the_figures(monkeypatch):
    module = _sections_module()
    real = module.load

    def load(path):
        data = real(path)
        if path == module.DEMO:
            data["models"][module.WINDOW]["sacrebleu"] += 1.0
        return data

    before = module.commands(), module.which_kind()
    monkeypatch.setattr(module, "load", load)
    after = module.commands(), module.which_kind()
    assert after[0] != before[0] and after[1] != before[1]
