"""Deterministic mutations of the seed corpus, for the smoke test and `fuzz.replay
--mutations`: no atheris needed, the same inputs on every run (a seeded random.Random).

Each mutation applies one to three edits of the kinds libFuzzer makes (flip, insert, erase,
duplicate, splice) plus a few HTTP-shaped ones (insert a framing token, cut at a line end),
and leaves the control bytes to chance as well.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

# Bytes and tokens that move HTTP framing around.
TOKENS: tuple[bytes, ...] = (
    b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b";", b",", b"\x00", b"\x7f", b"\xff",
    b"0\r\n\r\n", b"\r\n\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 0\r\n",
    b"Content-Length: 5\r\n", b"Connection: close\r\n", b"Connection: upgrade\r\n",
    b"Upgrade: websocket\r\n", b"Expect: 100-continue\r\n", b"Host: shop.example\r\n",
    b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HEAD ",
    b"ffffffff", b"-1", b"chunked", b"identity", b" \r\n", b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n", b"Trailer: X\r\n",
)  # fmt: skip
# Edits per mutation at most.
MAX_EDITS = 3
# A mutated input is cut to this many bytes (libFuzzer's default -max_len is 4096).
MAX_LEN = 4096


def mutate(data: bytes, others: Sequence[bytes], rng: random.Random) -> bytes:
    """`data` with one to MAX_EDITS random edits; `others` are spliced from."""
    out = bytearray(data)
    for _ in range(rng.randint(1, MAX_EDITS)):
        kind = rng.randrange(8)
        at = rng.randint(0, len(out))
        if kind == 0 and out:  # flip a bit
            at = rng.randrange(len(out))
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:  # insert a token
            out[at:at] = rng.choice(TOKENS)
        elif kind == 2 and out:  # erase a run
            out[at : at + rng.randint(1, 16)] = b""
        elif kind == 3 and out:  # duplicate a run (pipelining, repeated headers)
            start = rng.randrange(len(out))
            run = out[start : start + rng.randint(1, 64)]
            out[at:at] = run
        elif kind == 4 and others:  # splice the tail of another input
            other = rng.choice(others)
            cut = rng.randint(0, len(other))
            out[at:] = other[cut:]
        elif kind == 5 and out:  # cut at a line end
            ends = [i for i in range(len(out)) if out[i] == 0x0A]
            if ends:
                del out[rng.choice(ends) + 1 :]
        elif kind == 6 and out:  # new control byte
            out[rng.randrange(min(2, len(out)))] = rng.randrange(256)
        elif out:  # overwrite a byte with an interesting one
            out[rng.randrange(len(out))] = rng.choice(b"\r\n :;\t0aZ\x00\xff")
    return bytes(out[:MAX_LEN])


def mutations(seeds: Sequence[bytes], count: int, seed: int) -> Iterator[bytes]:
    """`count` mutations of `seeds`, the same ones for the same `seed`."""
    rng = random.Random(seed)
    for _ in range(count):
        yield mutate(rng.choice(seeds), seeds, rng)
