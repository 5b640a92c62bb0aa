"""The memoised comparison of a shadow whose body is the primary's (Shadow.same_body_comparison):
it must say exactly what the full comparison says, stay bounded, and follow config changes."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.compare import Captured, compare
from proxy.shadow import HEAD_MEMO_BYTES, HEAD_MEMO_SIZE, Exchange, Leg, Shadow
from proxy.shadow_config import CompareConfig, ShadowConfig
from proxy.shadow_records import PrimaryCapture
from proxy.shadow_registry import Shadows

REQUEST_HEAD = b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n"
LIMIT = 1024 * 1024


def make_shadow(ignore_headers: tuple[str, ...] = ("date",)) -> Shadow:
    """A Shadow wants a running loop when built; comparing does not use it."""

    async def build() -> Shadow:
        config = ShadowConfig(pool="dark", compare=CompareConfig(ignore_headers=ignore_headers))
        shadows = Shadows()
        return Shadow("shop", config, shadows.memory, shadows.compare_later)

    return asyncio.run(build())


def primary(status: int, head: bytes, body: bytes) -> PrimaryCapture:
    capture = PrimaryCapture(status, head, LIMIT)
    capture.add(body)
    return capture


def leg(shadow: Shadow, status: int, head: bytes, body: bytes) -> Leg:
    answer = Exchange(shadow, b"GET", b"req-1", REQUEST_HEAD).candidate
    answer.status = status
    answer.header_block = head
    answer.chunks = [body]
    answer.size = len(body)
    return answer


def full_comparison(
    shadow: Shadow, a: PrimaryCapture, b: Leg, body: bytes
) -> tuple[tuple[object, ...], frozenset[str]]:
    def captured(status: int, head: bytes) -> Captured:
        headers = []
        for line in head.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        return Captured(status, tuple(headers), body, False, len(body), 0.0)

    result = compare(
        captured(a.status, a.header_block),
        captured(b.status, b.header_block),
        frozenset(shadow.config.compare.ignore_headers),
        (),
    )
    return result.differences, result.overflow_paths


NAMES = ["Server", "server", "Content-Type", "X-Version", "Date", "ETag", "Vary", "Set-Cookie"]
header_lines = st.lists(
    st.tuples(
        st.sampled_from(NAMES),
        st.sampled_from(["", " ", "  ", "\t"]),
        st.text(alphabet="ab1 ,", max_size=6),
    ),
    max_size=6,
)
statuses = st.sampled_from([200, 200, 200, 404, 503])


def block(lines: list[tuple[str, str, str]]) -> bytes:
    return b"".join(f"{name}:{space}{value}\r\n".encode() for name, space, value in lines)


@settings(max_examples=300, deadline=None)
@given(
    statuses,
    header_lines,
    statuses,
    header_lines,
    st.binary(max_size=8),
    st.sampled_from([(), ("date",), ("date", "server"), ("x-version", "etag")]),
)
def test_the_memoised_comparison_says_what_the_full_comparison_says(
    primary_status: int,
    primary_lines: list[tuple[str, str, str]],
    shadow_status: int,
    shadow_lines: list[tuple[str, str, str]],
    body: bytes,
    ignore: tuple[str, ...],
) -> None:
    shadow = make_shadow(ignore)
    a = primary(primary_status, block(primary_lines), body)
    b = leg(shadow, shadow_status, block(shadow_lines), body)
    expected = full_comparison(shadow, a, b, body)
    first = shadow.same_body_comparison(a, body, b)
    assert first is not None
    assert (first.differences, first.overflow_paths) == expected
    # Asked again (another exchange, the same heads): the same answer, from the memo.
    again = shadow.same_body_comparison(a, body, leg(shadow, shadow_status, b.header_block, body))
    assert again is not None
    assert (again.differences, again.overflow_paths) == expected


@given(st.binary(max_size=8), st.binary(max_size=8))
def test_a_different_body_is_left_to_the_full_comparison(mine: bytes, theirs: bytes) -> None:
    shadow = make_shadow()
    head = b"Content-Type: text/plain\r\n"
    result = shadow.same_body_comparison(
        primary(200, head, mine), mine, leg(shadow, 200, head, theirs)
    )
    assert (result is None) == (mine != theirs)


def test_a_header_difference_is_found_once_per_pair_of_heads() -> None:
    shadow = make_shadow()
    body = b"ok\n"
    a = primary(200, b"Server: nginx\r\nContent-Type: text/plain\r\n", body)
    first = shadow.same_body_comparison(
        a, body, leg(shadow, 200, b"Content-Type: text/plain\r\n", body)
    )
    assert first is not None
    assert [(d.path, d.primary, d.candidate) for d in first.differences] == [
        ("header:server", "nginx", "(absent)")
    ]
    second = shadow.same_body_comparison(
        a, body, leg(shadow, 200, b"Content-Type: text/plain\r\n", body)
    )
    assert second is first
    assert len(shadow.head_memo) == 1


def test_the_memo_is_bounded_in_entries_and_in_head_size() -> None:
    shadow = make_shadow()
    body = b"ok\n"
    a = primary(200, b"Server: nginx\r\n", body)
    for i in range(HEAD_MEMO_SIZE + 10):
        shadow.same_body_comparison(a, body, leg(shadow, 200, b"ETag: %d\r\n" % i, body))
        assert len(shadow.head_memo) <= HEAD_MEMO_SIZE
    shadow.head_memo.clear()
    huge = b"X-Padding: " + b"p" * HEAD_MEMO_BYTES + b"\r\n"
    result = shadow.same_body_comparison(a, body, leg(shadow, 200, huge, body))
    assert result is not None and [d.path for d in result.differences] == [
        "header:server",
        "header:x-padding",
    ]
    assert not shadow.head_memo  # compared, but not kept


def test_new_ignore_rules_replace_what_the_memo_knew() -> None:
    shadow = make_shadow()
    body = b"ok\n"
    a = primary(200, b"Server: nginx\r\n", body)
    b = leg(shadow, 200, b"Server: other\r\n", body)
    before = shadow.same_body_comparison(a, body, b)
    assert before is not None and not before.matched
    shadow.configure(
        ShadowConfig(pool="dark", compare=CompareConfig(ignore_headers=("date", "server")))
    )
    after = shadow.same_body_comparison(a, body, b)
    assert after is not None and after.matched
