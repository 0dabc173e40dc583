"""The documentation site's build hooks (docs/hooks.py): the README is the home page and
bench/README.md is in the Benchmark page, both read at build time (never copied into docs/), with
their links made to work from the site. `mkdocs build --strict` in .ci/run builds the whole site.
"""

from __future__ import annotations

from tests.support import docs


def test_the_home_page_is_the_readme_with_its_links_into_docs_made_site_links() -> None:
    assert docs.read("docs/index.md").count("\n") == 1  # the include line, nothing copied
    home = docs.rendered("docs/index.md")
    readme = docs.read("README.md")
    assert home.startswith("# resetbot\n")
    assert "[Using resetbot with Koha](koha.md)" in home
    assert "(docs/koha.md)" in readme and "(docs/" not in home
    # A file the site does not hold keeps its text, without a link that would break.
    assert "[`app-manifest.yml`](app-manifest.yml)" in readme
    assert "`app-manifest.yml`" in home and "](app-manifest.yml)" not in home


def test_the_benchmark_page_holds_bench_readme_a_level_down() -> None:
    bench = docs.read("bench/README.md")
    page = docs.rendered("docs/benchmark.md")
    assert bench.splitlines()[0].startswith("# ")
    assert "\n#" + bench.splitlines()[0] + "\n" in page
    assert docs.read("docs/benchmark.md").count("\n#") < page.count("\n#")


def test_a_page_link_to_the_readme_goes_to_the_home_page() -> None:
    assert "](../README.md#slack-setup)" in docs.read("docs/security.md")
    assert "](index.md#slack-setup)" in docs.rendered("docs/security.md")


def test_headings_inside_fenced_blocks_stay_as_they_are() -> None:
    text = "# Title\n\n```sh\n# a comment\n```\n\n  ```sh\n  # indented\n  ```\n"
    assert docs.hooks().demote_headings(text, 1) == (
        "## Title\n\n```sh\n# a comment\n```\n\n  ```sh\n  # indented\n  ```\n")
