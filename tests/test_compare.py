"""Tests for proxy.compare: response comparison, JSON paths, noise cancellation, redaction."""

from __future__ import annotations

import random
from collections.abc import Sequence

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.compare import (
    ABSENT,
    HOP_BY_HOP,
    MAX_DIFFERENCES,
    MAX_RENDERED_CHARS,
    MORE_PATH,
    OTHER_PATH,
    REDACTED,
    Captured,
    Comparison,
    Difference,
    collapse,
    compare,
    parse_path,
    redact_headers,
    render_path,
)
from proxy.noise import NoiseModel, counts_as_mismatch


def captured(
    body: bytes = b"",
    *,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
    truncated: bool = False,
    size: int | None = None,
    latency: float = 0.0,
) -> Captured:
    return Captured(
        status=status,
        headers=tuple(headers),
        body=body,
        body_truncated=truncated,
        body_size=len(body) if size is None else size,
        latency=latency,
    )


def json_body(value: object, *, indent: bool = False) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)


def diff(
    primary: Captured,
    candidate: Captured,
    ignore_headers: Sequence[str] = (),
    ignore_json: Sequence[str] = (),
) -> list[Difference]:
    return list(compare(primary, candidate, frozenset(ignore_headers), ignore_json).differences)


def diff_json(
    primary: object, candidate: object, ignore_json: Sequence[str] = ()
) -> list[tuple[str, str, str]]:
    found = diff(
        captured(json_body(primary)), captured(json_body(candidate)), ignore_json=ignore_json
    )
    assert all(d.part == "body" for d in found)
    return [(d.path, d.primary, d.candidate) for d in found]


# --- status and latency ---------------------------------------------------------------------------


def test_identical_responses_match() -> None:
    response = captured(b"hello", headers=[("Content-Type", "text/plain")])
    result = compare(response, response, frozenset(), [])
    assert result.matched
    assert result.differences == ()
    assert result.paths == frozenset()


def test_status_difference() -> None:
    result = compare(captured(status=200), captured(status=503), frozenset(), [])
    assert result.differences == (Difference("status", "status", "200", "503"),)
    assert not result.matched
    assert result.paths == {"status"}


def test_latency_delta_is_candidate_minus_primary() -> None:
    result = compare(captured(latency=0.25), captured(latency=1.0), frozenset(), [])
    assert result.matched  # latency alone is not a difference
    assert result.latency_delta == pytest.approx(0.75)
    faster = compare(captured(latency=1.0), captured(latency=0.25), frozenset(), [])
    assert faster.latency_delta == pytest.approx(-0.75)


# --- headers --------------------------------------------------------------------------------------


def test_header_names_compare_case_insensitively() -> None:
    primary = captured(headers=[("Content-Type", "application/json")])
    candidate = captured(headers=[("content-type", "application/json")])
    assert diff(primary, candidate) == []


def test_header_value_difference_is_reported_at_lower_case_name() -> None:
    primary = captured(headers=[("Content-Type", "application/json")])
    candidate = captured(headers=[("CONTENT-TYPE", "text/html")])
    assert diff(primary, candidate) == [
        Difference("header", "header:content-type", "application/json", "text/html")
    ]


def test_header_on_one_side_only() -> None:
    primary = captured(headers=[("X-Version", "1"), ("Cache-Control", "no-store")])
    candidate = captured(headers=[("ETag", '"abc"'), ("Cache-Control", "no-store")])
    assert diff(primary, candidate) == [
        Difference("header", "header:etag", ABSENT, '"abc"'),
        Difference("header", "header:x-version", "1", ABSENT),
    ]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_are_not_compared(name: str) -> None:
    primary = captured(headers=[(name.title(), "one")])
    candidate = captured(headers=[(name, "two"), ("X-Same", "1")])
    primary_same = captured(headers=[(name.title(), "one"), ("x-same", "1")])
    assert diff(primary_same, candidate) == []
    assert diff(primary, captured()) == []


def test_headers_named_in_connection_are_not_compared() -> None:
    # Either side naming a header in Connection makes it hop-by-hop for the comparison.
    primary = captured(headers=[("Connection", "keep-alive, X-Hop"), ("X-Hop", "a")])
    candidate = captured(headers=[("x-hop", "b"), ("Connection", "close")])
    assert diff(primary, candidate) == []
    # The same header, not named in Connection, is compared.
    assert diff(captured(headers=[("X-Hop", "a")]), captured(headers=[("X-Hop", "b")])) != []


def test_connection_lists_several_names_across_several_fields() -> None:
    primary = captured(headers=[("Connection", " X-A ,x-b"), ("Connection", "X-C"), ("X-A", "1")])
    candidate = captured(headers=[("X-B", "2"), ("X-C", "3")])
    assert diff(primary, candidate) == []


def test_ignore_headers() -> None:
    primary = captured(headers=[("Date", "Mon"), ("X-Request-Id", "1"), ("Server", "a")])
    candidate = captured(headers=[("date", "Tue"), ("x-request-id", "2"), ("Server", "b")])
    assert [d.path for d in diff(primary, candidate, ["date", "x-request-id"])] == ["header:server"]
    # Names given in any case are still honoured.
    assert [d.path for d in diff(primary, candidate, ["Date", "X-Request-ID"])] == ["header:server"]
    # An ignored header present on one side only is no difference either.
    assert diff(captured(headers=[("Date", "Mon")]), captured(), ["date"]) == []


def test_multiple_values_are_joined_in_order() -> None:
    primary = captured(headers=[("Vary", "Accept"), ("X-Other", "1"), ("vary", "Origin")])
    same = captured(headers=[("Vary", "Accept, Origin"), ("X-Other", "1")])
    assert diff(primary, same) == []
    reordered = captured(headers=[("Vary", "Origin"), ("Vary", "Accept"), ("X-Other", "1")])
    assert diff(primary, reordered) == [
        Difference("header", "header:vary", "Accept, Origin", "Origin, Accept")
    ]


def test_header_value_surrounding_whitespace_is_not_significant() -> None:
    assert diff(captured(headers=[("X-A", " 1\t")]), captured(headers=[("X-A", "1")])) == []


def test_content_length_is_judged_by_the_body_part_only() -> None:
    primary = captured(b'{"a": 1, "t": 1}', headers=[("Content-Length", "16")])
    candidate = captured(b'{"a": 1, "t": 100}', headers=[("Content-Length", "18")])
    assert diff(primary, candidate, ignore_json=("$.t",)) == []
    assert [d.path for d in diff(primary, candidate)] == ["$.t"]
    primary_big = captured(b"x" * 4, headers=[("Content-Length", "10")], truncated=True, size=10)
    candidate_big = captured(b"x" * 4, headers=[("Content-Length", "12")], truncated=True, size=12)
    paths = [d.path for d in diff(primary_big, candidate_big)]
    assert paths == ["$"]  # the sizes, reported once, by the body part


def test_credential_header_values_never_appear_in_differences() -> None:
    primary = captured(headers=[("Set-Cookie", "session=secret1")])
    candidate = captured(headers=[("Set-Cookie", "session=secret2"), ("Authorization", "Bearer x")])
    found = diff(primary, candidate)
    assert found == [
        Difference("header", "header:authorization", ABSENT, REDACTED),
        Difference("header", "header:set-cookie", REDACTED, REDACTED),
    ]


def test_long_header_values_are_cut() -> None:
    primary = captured(headers=[("X-Long", "a" * 1000)])
    candidate = captured(headers=[("X-Long", "b" * 1000)])
    (found,) = diff(primary, candidate)
    assert len(found.primary) == len(found.candidate) == MAX_RENDERED_CHARS
    assert found.primary.endswith("…")


# --- JSON bodies ----------------------------------------------------------------------------------


def test_json_formatting_and_key_order_are_not_differences() -> None:
    primary = b'{"a": 1, "b": [1, 2, {"c": null}]}'
    candidate = b'{\n  "b":[1,2,{"c":null}],\n  "a":1\n}'
    assert diff(captured(primary), captured(candidate)) == []


def test_nested_dict_difference() -> None:
    primary = {"order": {"id": 7, "customer": {"name": "Ann", "tier": "gold"}}}
    candidate = {"order": {"id": 7, "customer": {"name": "Ann", "tier": "silver"}}}
    assert diff_json(primary, candidate) == [("$.order.customer.tier", '"gold"', '"silver"')]


def test_missing_keys_on_either_side() -> None:
    primary = {"a": 1, "b": {"x": True}}
    candidate = {"b": {"x": True, "y": None}, "c": [1]}
    assert diff_json(primary, candidate) == [
        ("$.a", "1", ABSENT),
        ("$.b.y", ABSENT, "null"),
        ("$.c", ABSENT, "[1]"),
    ]


def test_null_differs_from_absent() -> None:
    assert diff_json({"a": None}, {}) == [("$.a", "null", ABSENT)]


def test_list_elements_and_nested_paths() -> None:
    primary = {"items": [{"sku": "a", "price": 10}, {"sku": "b", "price": 20}]}
    candidate = {"items": [{"sku": "a", "price": 10}, {"sku": "b", "price": 25}]}
    assert diff_json(primary, candidate) == [("$.items[1].price", "20", "25")]


def test_list_length_difference_and_common_prefix() -> None:
    primary = {"items": [1, 2, 3]}
    candidate = {"items": [1, 9, 3, 4, 5]}
    assert diff_json(primary, candidate) == [
        ("$.items", "length 3", "length 5"),
        ("$.items[1]", "2", "9"),
    ]


def test_scalars_compare_by_type_and_value() -> None:
    assert diff_json({"a": 1}, {"a": 1.0}) == [("$.a", "1", "1.0")]
    assert diff_json({"a": True}, {"a": 1}) == [("$.a", "true", "1")]
    assert diff_json({"a": 0}, {"a": False}) == [("$.a", "0", "false")]
    assert diff_json({"a": "1"}, {"a": 1}) == [("$.a", '"1"', "1")]
    assert diff_json({"a": None}, {"a": 0}) == [("$.a", "null", "0")]
    assert diff_json({"a": 1.5}, {"a": 1.5}) == []


def test_numeric_type_changes_deep_inside_equal_looking_containers() -> None:
    # Python's == takes these lists as equal; the comparison does not.
    primary = {"a": [1, {"b": [True, 0]}], "c": 1}
    candidate = {"a": [1, {"b": [1, 0.0]}], "c": 1}
    assert diff_json(primary, candidate) == [
        ("$.a[1].b[0]", "true", "1"),
        ("$.a[1].b[1]", "0", "0.0"),
    ]


def test_container_type_changes_are_reported_at_the_node() -> None:
    assert diff_json({"a": {"b": 1}}, {"a": [1]}) == [("$.a", '{"b":1}', "[1]")]
    assert diff_json([1], {"0": 1}) == [("$", "[1]", '{"0":1}')]


def test_document_order_of_differences() -> None:
    primary = {"z": 1, "a": {"m": 1, "b": 2}, "k": [1, 2]}
    candidate = {"z": 2, "a": {"m": 3, "b": 4}, "k": [3, 2]}
    assert [p for p, _, _ in diff_json(primary, candidate)] == [
        "$.z",
        "$.a.m",
        "$.a.b",
        "$.k[0]",
    ]


def test_keys_that_are_not_identifiers_are_quoted() -> None:
    primary = {"odd key": 1, "a.b": 1, "1st": 1, 'q"uote': 1, "ok_1": {"é": 1}}
    candidate = {"odd key": 2, "a.b": 2, "1st": 2, 'q"uote': 2, "ok_1": {"é": 2}}
    assert [p for p, _, _ in diff_json(primary, candidate)] == [
        '$["odd key"]',
        '$["a.b"]',
        '$["1st"]',
        '$["q\\"uote"]',
        '$.ok_1["é"]',
    ]


def test_scalar_documents() -> None:
    assert diff_json(1, 2) == [("$", "1", "2")]
    assert diff_json("a", "a") == []


def test_long_json_values_are_cut() -> None:
    ((path, primary, candidate),) = diff_json({"a": "x" * 500}, {"a": ["y"] * 500})
    assert path == "$.a"
    assert len(primary) == len(candidate) == MAX_RENDERED_CHARS


def test_deep_nesting_does_not_recurse() -> None:
    depth = 1000  # orjson's own limit is 1024; Python's recursion limit is about 1000
    primary = b"[" * depth + b"1" + b"]" * depth
    candidate = b"[" * depth + b"2" + b"]" * depth
    (found,) = diff(captured(primary), captured(candidate))
    assert found.path == "$" + "[0]" * depth


# --- ignore paths ---------------------------------------------------------------------------------


def test_ignore_exact_path() -> None:
    primary = {"generated_at": "2024-01-01T00:00:00Z", "total": 3}
    candidate = {"generated_at": "2024-06-01T12:00:00Z", "total": 4}
    assert diff_json(primary, candidate, ["$.generated_at"]) == [("$.total", "3", "4")]


def test_ignore_with_index_wildcard() -> None:
    primary = {"items": [{"etag": "a", "n": 1}, {"etag": "b", "n": 2}], "etag": "top"}
    candidate = {"items": [{"etag": "c", "n": 1}, {"etag": "d", "n": 3}], "etag": "TOP"}
    assert diff_json(primary, candidate, ["$.items[*].etag"]) == [
        ("$.items[1].n", "2", "3"),
        ("$.etag", '"top"', '"TOP"'),
    ]


def test_ignore_with_key_wildcard_matches_keys_and_indices() -> None:
    primary = {"a": {"x": 1, "y": 1}, "b": {"x": 1}, "c": [{"x": 1}]}
    candidate = {"a": {"x": 2, "y": 2}, "b": {"x": 2}, "c": [{"x": 2}]}
    assert diff_json(primary, candidate, ["$.*.x"]) == [("$.a.y", "1", "2"), ("$.c[0].x", "1", "2")]
    assert diff_json(primary, candidate, ["$.*.x", "$.*[*].x", "$.a.*"]) == []
    assert diff_json([[1, 2], [3]], [[1, 5], [4]], ["$[*][1]"]) == [("$[1][0]", "3", "4")]


def test_ignored_path_drops_everything_under_it() -> None:
    primary = {"meta": {"trace": {"id": 1, "spans": [1, 2]}}, "v": 1}
    candidate = {"meta": {"trace": {"id": 2, "spans": [1]}, "extra": 1}, "v": 1}
    assert diff_json(primary, candidate, ["$.meta"]) == []
    assert diff_json(primary, candidate, ["$.meta.trace"]) == [("$.meta.extra", ABSENT, "1")]


def test_ignored_missing_key_is_not_reported() -> None:
    assert diff_json({"a": 1, "ts": 1}, {"a": 1}, ["$.ts"]) == []
    assert diff_json({"a": 1}, {"a": 1, "ts": 1}, ["$.ts"]) == []


def test_ignoring_a_list_drops_its_length_difference() -> None:
    primary = {"items": [1, 2], "n": 2}
    candidate = {"items": [1, 2, 3], "n": 2}
    assert diff_json(primary, candidate, ["$.items"]) == []
    # Ignoring elements does not hide that the list changed length.
    assert diff_json(primary, candidate, ["$.items[*]"]) == [("$.items", "length 2", "length 3")]


def test_ignore_specific_index_and_quoted_keys() -> None:
    primary = {"items": [1, 2, 3], "odd key": 1, "it's": 1}
    candidate = {"items": [0, 0, 3], "odd key": 2, "it's": 2}
    assert diff_json(primary, candidate, ["$.items[0]", '$["odd key"]', '$["it\'s"]']) == [
        ("$.items[1]", "2", "0")
    ]
    assert diff_json(primary, candidate, ["$.items[0]", "$['odd key']", '$["it\'s"]']) == [
        ("$.items[1]", "2", "0")
    ]


def test_index_pattern_does_not_match_a_numeric_key() -> None:
    assert diff_json({"0": 1}, {"0": 2}, ["$[0]"]) == [('$["0"]', "1", "2")]
    assert diff_json([1], [2], ['$["0"]']) == [("$[0]", "1", "2")]


def test_ignore_whole_document() -> None:
    assert diff_json({"a": 1}, {"a": 2}, ["$"]) == []


def test_ignore_json_does_not_apply_to_non_json_bodies() -> None:
    assert [d.path for d in diff(captured(b"a"), captured(b"b"), ignore_json=["$"])] == ["$"]


@pytest.mark.parametrize(
    ("pattern", "steps"),
    [
        ("$", ()),
        ("$.generated_at", ("generated_at",)),
        ("$.items[*].etag", ("items", None, "etag")),
        ("$.*.x", (None, "x")),
        ("$[3][*]", (3, None)),
        ('$["odd key"].a', ("odd key", "a")),
        ('$["q\\"uote"]', ('q"uote',)),
        ("$['single']", ("single",)),
        ("$.a-b", ("a-b",)),
    ],
)
def test_parse_path(pattern: str, steps: tuple[object, ...]) -> None:
    assert parse_path(pattern) == steps


@pytest.mark.parametrize(
    "pattern", ["", "generated_at", "$.", "$..a", "$[x]", "$.a*", '$["open', "$[-1]", "$ .a"]
)
def test_malformed_ignore_path_raises(pattern: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        parse_path(pattern)
    with pytest.raises(ValueError):
        compare(captured(b"1"), captured(b"2"), frozenset(), [pattern])


def test_render_path() -> None:
    assert render_path([]) == "$"
    assert render_path(["items", 3, "price"]) == "$.items[3].price"
    assert render_path(["odd key", 0]) == '$["odd key"][0]'


# --- non-JSON and truncated bodies ----------------------------------------------------------------


def test_non_json_byte_mismatch_shows_sizes_and_where() -> None:
    primary = captured(b"<html>hello world</html>")
    candidate = captured(b"<html>hello there, world</html>")
    (found,) = diff(primary, candidate)
    assert (found.part, found.path) == ("body", "$")
    assert found.primary.startswith("24 bytes, differ at byte 12;")
    assert found.candidate.startswith("31 bytes, differ at byte 12;")
    assert '"<html>hello world</html>"' in found.primary


def test_byte_mismatch_far_into_a_large_body() -> None:
    body = b"x" * 100_000
    (found,) = diff(captured(body + b"a"), captured(body + b"b"))
    assert found.primary.startswith("100001 bytes, differ at byte 100000; from byte 99984: ")
    assert found.primary.endswith('xa"')


def test_body_prefix_of_the_other() -> None:
    (found,) = diff(captured(b"abc"), captured(b"abcdef"))
    assert found.primary.startswith("3 bytes, differ at byte 3;")
    assert found.candidate.startswith("6 bytes, differ at byte 3;")


def test_json_against_non_json_compares_bytes() -> None:
    (found,) = diff(captured(b'{"a": 1}'), captured(b"<html>error</html>"))
    assert found.path == "$"
    assert found.primary.startswith("8 bytes")
    assert diff(captured(b""), captured(b"null")) != []


def test_equal_non_json_bodies_match() -> None:
    assert diff(captured(b"\x00\xff binary"), captured(b"\x00\xff binary")) == []


def test_both_truncated_with_equal_sizes_match() -> None:
    # Only sizes are judged: the prefixes cannot be parsed, so ignore paths could not apply.
    primary = captured(b'{"generated_at": 1', truncated=True, size=5_000_000)
    candidate = captured(b'{"generated_at": 2', truncated=True, size=5_000_000)
    assert diff(primary, candidate, ignore_json=["$.generated_at"]) == []


def test_truncated_sizes_differ() -> None:
    primary = captured(b"abcd", truncated=True, size=2_000_000)
    candidate = captured(b"abcd", truncated=True, size=2_000_001)
    assert diff(primary, candidate) == [
        Difference("body", "$", "2000000 bytes (captured 4)", "2000001 bytes (captured 4)")
    ]


def test_only_one_side_truncated() -> None:
    primary = captured(b"abcd", truncated=True, size=2_000_000)
    candidate = captured(b"small")
    assert diff(primary, candidate) == [
        Difference("body", "$", "2000000 bytes (captured 4)", "5 bytes")
    ]


# --- difference cap -------------------------------------------------------------------------------


def test_differences_are_capped_with_a_count_of_the_rest() -> None:
    total = MAX_DIFFERENCES + 10
    primary = {f"k{i}": i for i in range(total)}
    candidate = {f"k{i}": i + 1 for i in range(total)}
    result = compare(captured(json_body(primary)), captured(json_body(candidate)), frozenset(), [])
    assert len(result.differences) == MAX_DIFFERENCES + 1
    assert [d.path for d in result.differences[:3]] == ["$.k0", "$.k1", "$.k2"]
    more = result.differences[-1]
    assert (more.part, more.path) == ("body", MORE_PATH)
    assert more.primary == more.candidate == "10 more differences"
    # Paths past the cap still count (for the noise model), collapsed and bounded.
    assert f"$.k{total - 1}" in result.paths
    assert MORE_PATH not in result.paths
    assert len(result.paths) == total


def test_cap_counts_status_and_headers_too() -> None:
    headers_a = [(f"x-h{i:03}", "a") for i in range(MAX_DIFFERENCES)]
    headers_b = [(f"x-h{i:03}", "b") for i in range(MAX_DIFFERENCES)]
    primary = captured(b"1", status=200, headers=headers_a)
    candidate = captured(b"2", status=500, headers=headers_b)
    result = compare(primary, candidate, frozenset(), [])
    assert result.differences[0].path == "status"
    assert result.differences[-1].primary == "2 more differences"
    assert {"header:x-h049", "$"} <= result.paths


def test_capped_collapsed_paths_stay_few() -> None:
    primary = {"items": [{"ts": i} for i in range(500)]}
    candidate = {"items": [{"ts": -i - 1} for i in range(500)]}
    result = compare(captured(json_body(primary)), captured(json_body(candidate)), frozenset(), [])
    assert result.differences[-1].primary == f"{500 - MAX_DIFFERENCES} more differences"
    assert result.paths == {"$.items[*].ts"}


# --- collapse -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "collapsed"),
    [
        ("$.items[3].price", "$.items[*].price"),
        ("$[0][12][7]", "$[*][*][*]"),
        ("$.a.b", "$.a.b"),
        ("$", "$"),
        ('$["x[3]"][4]', '$["x[3]"][*]'),
        ('$["q\\"[1]"][2]', '$["q\\"[1]"][*]'),
        ("status", "status"),
        ("header:content-type", "header:content-type"),
    ],
)
def test_collapse(path: str, collapsed: str) -> None:
    assert collapse(path) == collapsed


# --- noise model ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "noise", "counts"),
    [
        (0.5, 0.0, True),  # no noise: the absolute threshold alone
        (0.02, 0.0, False),  # below the absolute threshold
        (0.03, 0.0, False),  # at it: not above
        (0.5, 0.45, True),  # 0.05 above, 1.11x > 1.1x
        (0.5, 0.46, False),  # 0.04 above, but only 1.087x
        (0.04, 0.02, False),  # 2x the noise, but only 0.02 above it
        (0.2, 0.1, True),
        (0.3, 0.5, False),  # less than the noise
        (0.0, 0.0, False),
    ],
)
def test_counts_as_mismatch_rule(candidate: float, noise: float, counts: bool) -> None:
    assert counts_as_mismatch(candidate, noise, 0.1, 0.03) is counts


def comparison_at(*paths: str) -> Comparison:
    return Comparison(tuple(Difference("body", p, "a", "b") for p in paths), 0.0)


def test_noise_model_rates_and_counts() -> None:
    model = NoiseModel()
    for i in range(10):
        model.record_candidate(comparison_at("$.a[1]", "$.a[2]") if i < 4 else comparison_at())
        model.record_baseline(comparison_at("$.a[0]") if i < 1 else comparison_at())
    (report,) = model.report(0.2, 0.05)
    assert report.path == "$.a[*]"  # collapsed, and counted once per comparison
    assert (report.candidate_diffs, report.candidate_samples) == (4, 10)
    assert (report.baseline_diffs, report.baseline_samples) == (1, 10)
    assert report.candidate_rate == pytest.approx(0.4)
    assert report.noise_rate == pytest.approx(0.1)
    assert report.counts_as_mismatch
    assert model.candidate_samples == model.baseline_samples == 10


def test_noise_model_without_baseline_reports_raw_rates() -> None:
    model = NoiseModel()
    model.record_candidate(comparison_at("status"))
    model.record_candidate(comparison_at())
    (report,) = model.report(0.2, 0.05)
    assert (report.candidate_rate, report.noise_rate) == (0.5, 0.0)
    assert report.counts_as_mismatch
    assert model.is_real(comparison_at("status"), 0.2, 0.05)
    assert not model.is_real(comparison_at(), 0.2, 0.05)


def test_noise_model_empty() -> None:
    model = NoiseModel()
    assert model.report(0.2, 0.05) == []
    assert not model.is_real(comparison_at("$.a"), 0.2, 0.05)  # never recorded: no rate


def test_noise_cancellation_suppresses_a_random_timestamp_and_reports_a_real_change() -> None:
    """Primary, baseline (same version) and candidate: each stamps its own time and request id;
    the candidate also changes one field. The timestamp is noise; the changed field is real."""
    rng = random.Random(7)

    def response(price: int) -> Captured:
        document = {
            "generated_at": f"2024-05-01T12:{rng.randrange(60):02}:{rng.randrange(60):02}Z",
            "request": {"id": rng.getrandbits(64)},
            "items": [{"sku": "a", "price": price, "name": "Widget"}],
        }
        return captured(json_body(document))

    model = NoiseModel()
    ignore: frozenset[str] = frozenset()
    for _ in range(200):
        primary = response(10)
        model.record_baseline(compare(primary, response(10), ignore, []))
        model.record_candidate(compare(primary, response(11), ignore, []))

    reports = {r.path: r for r in model.report(relative_threshold=0.2, absolute_threshold=0.05)}
    assert set(reports) == {"$.generated_at", "$.request.id", "$.items[*].price"}
    real = reports["$.items[*].price"]
    assert real.counts_as_mismatch
    assert (real.candidate_rate, real.noise_rate) == (1.0, 0.0)
    for noise in ("$.generated_at", "$.request.id"):
        assert not reports[noise].counts_as_mismatch
        assert reports[noise].noise_rate > 0.9
    assert model.report(0.2, 0.05)[0].path == "$.items[*].price"  # what counts comes first

    primary = response(10)
    noise_only = compare(primary, response(10), ignore, [])
    with_change = compare(primary, response(11), ignore, [])
    assert not noise_only.matched
    assert not model.is_real(noise_only, 0.2, 0.05)
    assert model.is_real(with_change, 0.2, 0.05)
    assert model.real_paths(with_change, 0.2, 0.05) == ["$.items[*].price"]


def test_noise_model_caps_tracked_paths() -> None:
    model = NoiseModel(max_paths=3)
    for i in range(10):
        model.record_candidate(comparison_at(f"$.k{i}"))
    model.record_baseline(comparison_at("$.k0", "$.k8", "$.k9"))
    for _ in range(9):
        model.record_baseline(comparison_at())
    reports = {r.path: r for r in model.report(0.2, 0.05)}
    assert set(reports) == {"$.k0", "$.k1", "$.k2", OTHER_PATH}
    assert reports[OTHER_PATH].candidate_diffs == 7
    assert reports[OTHER_PATH].baseline_diffs == 1  # two paths, one comparison: counted once
    assert reports["$.k0"].baseline_diffs == 1
    # An untracked path is judged by its OTHER_PATH count: 7/10 against a noise of 1/10.
    assert model.is_real(comparison_at("$.k42"), 0.2, 0.05)
    assert not model.is_real(comparison_at("$.k0"), 0.2, 0.05)  # 1/10 against 1/10


def test_noise_model_sees_paths_beyond_the_difference_cap() -> None:
    """A real change after a screenful of noisy differences still reaches the model."""
    noisy = {"items": [{"ts": i} for i in range(100)], "total": 1}
    model = NoiseModel()
    for i in range(20):
        changed = {"items": [{"ts": -i - j} for j in range(100)], "total": 2}
        primary = captured(json_body(noisy))
        model.record_baseline(
            compare(primary, captured(json_body(changed | {"total": 1})), frozenset(), [])
        )
        model.record_candidate(compare(primary, captured(json_body(changed)), frozenset(), []))
    reports = {r.path: r for r in model.report(0.2, 0.05)}
    assert reports["$.total"].counts_as_mismatch
    assert not reports["$.items[*].ts"].counts_as_mismatch


# --- redaction ------------------------------------------------------------------------------------


def test_redact_headers() -> None:
    headers = [
        ("Authorization", "Bearer abc"),
        ("cookie", "a=1"),
        ("Set-Cookie", "s=2"),
        ("PROXY-AUTHORIZATION", "Basic x"),
        ("Content-Type", "text/plain"),
        ("set-cookie", "t=3"),
    ]
    assert redact_headers(headers) == (
        ("Authorization", REDACTED),
        ("cookie", REDACTED),
        ("Set-Cookie", REDACTED),
        ("PROXY-AUTHORIZATION", REDACTED),
        ("Content-Type", "text/plain"),
        ("set-cookie", REDACTED),
    )
    assert redact_headers(()) == ()


# --- properties -----------------------------------------------------------------------------------

KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(max_size=8)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=25,
)


def leaves(document: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Paths of every scalar in the document, and of every empty list or dict."""
    if isinstance(document, dict) and document:
        return [p for key, value in document.items() for p in leaves(value, (*path, key))]
    if isinstance(document, list) and document:
        return [p for index, value in enumerate(document) for p in leaves(value, (*path, index))]
    return [path]


def get(document: object, path: tuple[str | int, ...]) -> object:
    for step in path:
        document = document[step]  # type: ignore[index]
    return document


def replaced(document: object, path: tuple[str | int, ...], value: object) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {k: replaced(v, rest, value) if k == head else v for k, v in document.items()}
    assert isinstance(document, list)
    return [replaced(v, rest, value) if i == head else v for i, v in enumerate(document)]


def differs(a: object, b: object) -> bool:
    return type(a) is not type(b) or a != b


@given(DOCUMENTS)
def test_property_a_document_compared_with_itself_never_differs(document: object) -> None:
    # Indented vs compact: the bytes differ, so the structural diff runs rather than the fast path.
    primary = captured(json_body(document))
    candidate = captured(json_body(document, indent=True))
    result = compare(primary, candidate, frozenset(), [])
    assert result.matched, result.differences
    assert compare(primary, primary, frozenset(), []).matched


@given(DOCUMENTS, st.data())
def test_property_a_single_changed_leaf_is_reported_at_its_path(
    document: object, data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(leaves(document)), label="leaf")
    old = get(document, path)
    new = data.draw(SCALARS.filter(lambda v: differs(v, old)), label="new value")
    changed = replaced(document, path, new)

    primary = captured(json_body(document))
    candidate = captured(json_body(changed, indent=True))
    result = compare(primary, candidate, frozenset(), [])
    where = render_path(path)
    assert result.differences == (
        Difference("body", where, orjson.dumps(old).decode(), orjson.dumps(new).decode()),
    )
    assert result.paths == {collapse(where)}

    # Ignoring that path, or its collapsed pattern, hides the change.
    assert compare(primary, candidate, frozenset(), [where]).matched
    assert compare(primary, candidate, frozenset(), [collapse(where)]).matched


@given(st.lists(st.text(max_size=6) | st.integers(min_value=0, max_value=10**6), max_size=5))
def test_property_reported_paths_parse_back(steps: list[str | int]) -> None:
    assert parse_path(render_path(steps)) == tuple(steps)
