"""PlainReader, the one reader of plain values (API bodies, state file, rollout specs, shadow
settings): its two ways of reporting a bad value, both naming where the value is."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.shadow_config import ShadowSpecError, parse_shadow
from proxy.values import PlainError, PlainReader


class BodyError(Exception):
    pass


def test_an_error_factory_gets_the_key_path_and_the_problem() -> None:
    r = PlainReader({"rollout": {"steps": "many"}}, "", BodyError)
    with pytest.raises(BodyError) as caught:
        r.sub("rollout").array("steps")
    assert str(caught.value) == "rollout.steps: expected an array, got a string"


def test_a_missing_key_and_an_unknown_key_are_named() -> None:
    r = PlainReader({"to": "green", "froce": True}, "body", BodyError)
    with pytest.raises(BodyError, match=r"^body\.froce: unknown key \(allowed: to, force\)$"):
        r.only(("to", "force"))
    with pytest.raises(BodyError, match=r"^body\.force: missing$"):
        r.boolean("force")


def test_a_located_reader_raises_plain_error_with_the_steps() -> None:
    r = PlainReader.located({"compare": {"samples": True}}, ["shadows", 2])
    with pytest.raises(PlainError) as caught:
        r.sub("compare").integer("samples", 1, 10)
    assert caught.value.steps == ("shadows", 2, "compare", "samples")
    assert caught.value.path("routes[0]") == "routes[0].shadows[2].compare.samples"
    assert caught.value.message == "expected an integer between 1 and 10, got true"


def test_a_non_object_is_refused_in_the_words_of_its_source() -> None:
    with pytest.raises(BodyError, match=r"^body: expected an object, got an array$"):
        PlainReader([1], "body", BodyError)
    with pytest.raises(PlainError, match=r"^expected a mapping, got 'x'$"):
        PlainReader.located("x", render=repr)


def test_the_shadow_parser_reads_through_it_and_keeps_steps() -> None:
    with pytest.raises(ShadowSpecError) as caught:
        parse_shadow({"pool": "green", "compare": {"ignore_headers": ["ok", "not ok"]}})
    assert isinstance(caught.value, PlainError)
    assert caught.value.steps == ("compare", "ignore_headers", 1)
    assert caught.value.message == "expected a header name, got 'not ok'"


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))  # fmt: skip
def test_any_plain_value_is_parsed_or_refused_with_a_located_error(value: object) -> None:
    # Whatever a JSON body or a YAML entry holds, the shadow parser ends in a value or in
    # PlainError; nothing else escapes to the API handler or the config loader.
    try:
        parse_shadow(value, ["blue", "green"], pool="green")
    except PlainError as err:
        assert err.message
