"""README's measured tables are generated from committed results, and stay equal to them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from workbench.experiments.report import readme_blocks, report, update_readme

REPO = Path(__file__).resolve().parents[1]


MARKDOWN = [REPO / "README.md", REPO / "results" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", MARKDOWN, ids=[p.relative_to(REPO).as_posix() for p in MARKDOWN])
def test_readme_tables_equal_what_report_prints_for_the_committed_results(page: Path) -> None:
    paths = readme_blocks(page)
    if page.name == "README.md":
        assert paths, "README has no generated table (<!-- report: PATH -->)"
    for path in paths:
        assert (page.parent / path).exists(), f"{page.name}'s table comes from {path}, which is not committed"
    stale = update_readme(page, check=True)
    assert not stale, (f"{page.name}'s tables differ from `python -m workbench report` of {stale}: "
                       "run `python -m workbench report --readme README.md docs/*.md`")


def test_readme_links_point_at_committed_files() -> None:
    """README moved its reference material to docs/: every relative link must still resolve."""
    broken = [f"{page.relative_to(REPO)} -> {target}" for page in MARKDOWN
              for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()]
    assert broken == []


def test_update_readme_rewrites_a_stale_table(tmp_path) -> None:
    results = tmp_path / "results.csv"
    results.write_text("run,rank1,rank5,rank10,mAP,mAP_devkit,mINP,seed\nours,0.5,0.6,0.7,0.25,0.2,0.1,0\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report: results.csv -->\n| old | table |\n<!-- /report -->\nend\n")
    assert update_readme(readme, check=True) == ["results.csv"]
    assert "| old | table |" in readme.read_text()  # check writes nothing
    assert update_readme(readme) == ["results.csv"]
    text = readme.read_text()
    assert report(results, footnote=False) in text and "| ours | 50.0 | 60.0 | 70.0 | 25.0 | 20.0 | 10.0 |" in text
    assert text.startswith("intro\n") and text.endswith("<!-- /report -->\nend\n")
    assert update_readme(readme, check=True) == []


def test_a_benchmark_output_is_quoted_as_it_is(tmp_path) -> None:
    out = tmp_path / "bench.txt"
    out.write_text("# python benchmarks/x.py (commit abc)\nratio 2.03%\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report: bench.txt -->\nold\n<!-- /report -->\n")
    assert update_readme(readme) == ["bench.txt"]
    assert readme.read_text() == ("<!-- report: bench.txt -->\n```text\n# python benchmarks/x.py (commit abc)\n"
                                  "ratio 2.03%\n```\n<!-- /report -->\n")
    out.write_text("ratio 2.50%\n")  # a new measurement: the README block is stale until regenerated
    assert update_readme(readme, check=True) == ["bench.txt"]
