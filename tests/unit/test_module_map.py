"""docs/architecture.md's module map is the one the source tree makes (`make module-map`)."""

from __future__ import annotations

from tests.support.module_map import END, PAGE, START, module_map, page_with_map


def test_the_module_map_in_the_architecture_page_is_current() -> None:
    page = PAGE.read_text()
    assert START in page
    assert END in page
    assert page_with_map(page) == page, "the module map is stale: run `make module-map`"


def test_every_module_says_what_it_is() -> None:
    assert "(no docstring)" not in module_map()


def test_the_map_covers_the_rooms_and_the_two_distributions_beside_the_product() -> None:
    made = module_map()
    for room in ("api/", "posts/", "storage/", "cache/", "transport/", "policy/", "cli/"):
        assert f" {room} " in made, room
    assert "testing/src/:" in made
    assert "bench/src/:" in made
