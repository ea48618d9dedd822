import pytest

from engines.errors import InvalidModelConfig
from engines.labels import parse_label_map

OD_API_STYLE = """
# a comment
item {
  name: "/m/01g317"
  id: 1
  display_name: "person"
}
item {
  name: 'car'
  id: 3
}
item: { id: 2, display_name: 'it\\'s a bike' }
"""


def test_display_name_wins_and_name_is_the_fallback() -> None:
    assert parse_label_map(OD_API_STYLE) == {1: "person", 3: "car", 2: "it's a bike"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no items"),
        ("item { name: 'a' }", "without an integer id"),
        ("item { id: 1 }", "without name"),
        ("item { id: 1 name: 'a' } item { id: 1 name: 'b' }", "duplicate id 1"),
        ("item { id: 1 name: 'a' ", "unexpected end"),
        ("item { id: 1 name: 'unterminated }", "cannot parse"),
        ("thing { id: 1 }", "expected 'item'"),
    ],
)
def test_broken_label_maps_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidModelConfig) as info:
        parse_label_map(text)
    assert fragment in info.value.message
    assert info.value.code == "invalid_model_config"
