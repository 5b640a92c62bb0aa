"""The file store: round trip, corrupt files, crash-safety of save at each step, the audit log."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from control.state import StateDoc, flip, initial_state, set_weights, to_json
from control.store import MAX_STATE_BYTES, FileStore
from proxy.config import Address, PoolConfig, RouteConfig

REPO = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0

SHOP = RouteConfig(
    name="shop",
    hosts=("*",),
    path_prefix="/",
    pools=(
        PoolConfig("blue", (Address("127.0.0.1", 9001),), 100),
        PoolConfig("green", (Address("127.0.0.1", 9002),), 0),
    ),
)


@pytest.fixture
def old() -> StateDoc:
    return initial_state((SHOP,), T0)


@pytest.fixture
def new(old: StateDoc) -> StateDoc:
    return flip(old, "shop", "green", T0 + 1)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(str(tmp_path / "var" / "state.json"))


def test_load_missing_file_is_none(store: FileStore, tmp_path: Path) -> None:
    assert store.load() is None
    assert not (tmp_path / "var").exists()  # loading creates nothing


def test_save_load_round_trip(store: FileStore, old: StateDoc, new: StateDoc) -> None:
    store.save(old)  # creates the missing directory
    assert store.load() == old
    store.save(new)
    assert store.load() == new
    assert Path(store.path).read_bytes() == to_json(new)
    assert os.listdir(store.directory) == ["state.json"]


def test_save_creates_nested_directories(tmp_path: Path, old: StateDoc) -> None:
    store = FileStore(str(tmp_path / "a" / "b" / "c" / "state.json"))
    store.save(old)
    assert store.load() == old


def test_relative_path(tmp_path: Path, old: StateDoc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = FileStore("state.json")
    store.save(old)
    assert store.load() == old
    assert store.audit_path == "state.audit.jsonl"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b'{"format": 1, "version": 2', "not valid JSON"),
        (b"\x00\x01garbage", "not valid JSON"),
        (b'{"format": 1, "version": 1, "updated_at": 0, "routes": 5}', "state.routes"),
    ],
    ids=["empty", "truncated", "binary", "wrong-type"],
)
def test_corrupt_file_names_the_path(store: FileStore, content: bytes, reason: str) -> None:
    os.makedirs(store.directory)
    Path(store.path).write_bytes(content)
    with pytest.raises(ValueError) as info:
        store.load()
    assert store.path in str(info.value)
    assert "corrupt state file" in str(info.value)
    assert reason in str(info.value)


def test_oversized_file_is_refused(store: FileStore) -> None:
    os.makedirs(store.directory)
    with open(store.path, "wb") as file:
        file.truncate(MAX_STATE_BYTES + 1)
    with pytest.raises(ValueError, match="larger than"):
        store.load()


# --- crash safety ------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying at this point (not an Exception: nothing may swallow it)."""


def _is_dir(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _fail_at(step: str, monkeypatch: pytest.MonkeyPatch, failure: BaseException) -> None:
    """Make `step` of save raise `failure`; the other steps run for real."""
    real_write, real_fsync = os.write, os.fsync

    def write(fd: int, data: Any) -> int:
        # Half of the document reaches the temp file, then the disk fills up.
        real_write(fd, bytes(data)[: len(data) // 2])
        raise failure

    def fsync(fd: int) -> None:
        if _is_dir(fd) == (step == "fsync_dir"):
            raise failure
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        raise failure

    patches: dict[str, tuple[str, Callable[..., Any]]] = {
        "write": ("write", write),
        "fsync_file": ("fsync", fsync),
        "replace": ("replace", replace),
        "fsync_dir": ("fsync", fsync),
    }
    name, fake = patches[step]
    monkeypatch.setattr(os, name, fake)


STEPS = ["write", "fsync_file", "replace", "fsync_dir"]
# Up to the rename the old document stays; the directory fsync comes after it.
SURVIVOR = {"write": "old", "fsync_file": "old", "replace": "old", "fsync_dir": "new"}


@pytest.mark.parametrize("step", STEPS)
def test_failed_save_leaves_old_or_new(
    step: str, store: FileStore, old: StateDoc, new: StateDoc, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(old)
    _fail_at(step, monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError):
        store.save(new)
    monkeypatch.undo()
    assert store.load() == {"old": old, "new": new}[SURVIVOR[step]]
    # No temp file left behind after an error the process survived.
    assert os.listdir(store.directory) == ["state.json"]
    store.save(new)  # and the store still works
    assert store.load() == new


@pytest.mark.parametrize("step", STEPS)
def test_crash_during_first_save_leaves_nothing_or_new(
    step: str, store: FileStore, new: StateDoc, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.makedirs(store.directory)  # so each step is reached (a new directory is fsynced too)
    _fail_at(step, monkeypatch, OSError(errno.EIO, "I/O error"))
    with pytest.raises(OSError):
        store.save(new)
    monkeypatch.undo()
    assert store.load() == (new if SURVIVOR[step] == "new" else None)
    assert os.listdir(store.directory) == (["state.json"] if SURVIVOR[step] == "new" else [])


def test_failed_directory_creation_sync_leaves_nothing(
    store: FileStore, new: StateDoc, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_at("fsync_dir", monkeypatch, OSError(errno.EIO, "I/O error"))
    with pytest.raises(OSError):
        store.save(new)
    monkeypatch.undo()
    assert store.load() is None
    store.save(new)  # the half-made directory is reused
    assert store.load() == new


@pytest.mark.parametrize("step", STEPS)
def test_hard_crash_leaves_old_or_new(
    step: str, store: FileStore, old: StateDoc, new: StateDoc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed process runs no cleanup: the temp file stays, and must not be read as state."""
    store.save(old)
    _fail_at(step, monkeypatch, Crash())
    monkeypatch.setattr(os, "unlink", lambda path: None)
    with pytest.raises(Crash):
        store.save(new)
    monkeypatch.undo()
    assert store.load() == {"old": old, "new": new}[SURVIVOR[step]]
    for name in os.listdir(store.directory):
        if name != "state.json":
            # Leftovers are hidden temp files, never at the path load() reads.
            assert name.startswith(".state.json.") and name.endswith(".tmp")
    store.save(new)
    assert store.load() == new


_WRITER = """
import sys, time
from control.state import flip, initial_state
from control.store import FileStore
from proxy.config import Address, PoolConfig, RouteConfig

pools = tuple(PoolConfig(f"pool{i}", (Address("127.0.0.1", 9000 + i),), 0) for i in range(50))
pools = (PoolConfig("start", (), 100), *pools)
store = FileStore(sys.argv[1])
doc = initial_state((RouteConfig("shop", ("*",), "/", pools),), 0.0)
store.save(doc)
print("ready", flush=True)
i = 0
while True:
    i += 1
    doc = flip(doc, "shop", f"pool{i % 50}", time.time())
    store.save(doc)
"""


def test_sigkill_mid_write_leaves_a_loadable_document(tmp_path: Path) -> None:
    """A real writer process killed at arbitrary moments (bounded: a few kills)."""
    path = str(tmp_path / "state.json")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    last = 0
    for delay in (0.05, 0.11, 0.17):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, path], env=env, stdout=subprocess.PIPE, cwd=REPO
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        doc = FileStore(path).load()
        assert doc is not None
        assert doc.version >= 1
        last = max(last, doc.version)
    assert last > 1  # the writer got some saves done


# --- audit -------------------------------------------------------------------------------------


def test_audit_path_is_beside_the_state_file() -> None:
    assert FileStore("var/state.json").audit_path == "var/state.audit.jsonl"
    assert FileStore("/srv/pm/state").audit_path == "/srv/pm/state.audit.jsonl"


def test_audit_appends_one_parseable_line_per_call(
    store: FileStore, old: StateDoc, new: StateDoc
) -> None:
    third = set_weights(new, "shop", {"blue": 50, "green": 50}, T0 + 2)
    store.audit(
        "deploy-bot",
        "flip",
        "shop",
        old.route("shop").weights_dict(),
        new.route("shop").weights_dict(),
        new.version,
        T0 + 1,
    )
    store.audit("alice", "weights", "shop", new.route("shop"), third.route("shop"), 3, T0 + 2.5)
    lines = Path(store.audit_path).read_bytes().splitlines()
    assert len(lines) == 2
    first, second = (orjson.loads(line) for line in lines)
    assert list(first) == ["time", "actor", "action", "route", "before", "after", "version"]
    assert first["actor"] == "deploy-bot" and first["action"] == "flip"
    assert first["route"] == "shop" and first["version"] == 2
    assert first["before"] == {"blue": 100, "green": 0}
    assert first["after"] == {"blue": 0, "green": 100}
    when = datetime.fromisoformat(first["time"])
    assert when.tzinfo is not None and when.utcoffset() == UTC.utcoffset(None)
    assert when.timestamp() == T0 + 1
    assert datetime.fromisoformat(second["time"]) == datetime.fromtimestamp(T0 + 2.5, UTC)
    assert second["after"]["weights"] == [["blue", 50], ["green", 50]]  # dataclasses serialize
    store.audit("alice", "rollback", "shop", None, None, 4, T0 + 3)
    assert len(Path(store.audit_path).read_bytes().splitlines()) == 3


def test_audit_does_not_touch_the_state(store: FileStore, old: StateDoc) -> None:
    store.save(old)
    store.audit("a", "flip", "shop", {}, {}, 1, T0)
    assert store.load() == old
    assert sorted(os.listdir(store.directory)) == ["state.audit.jsonl", "state.json"]
