"""The embedded file store: the state document on disk, and the audit log beside it.

`save` is crash-safe: the new document goes to a temp file in the same directory (same file
system, so the rename is atomic), is fsynced, renamed over the old one, and then the directory is
fsynced so the rename itself survives a power cut. A crash at any step leaves the old or the new
complete document at `path`; `load` reads nothing else, so a temp file left by a hard crash is
never taken for state (its name starts with "." and ends with ".tmp").

Blocking calls taking about a millisecond: the caller runs them in a thread or accepts the cost.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from typing import Final

import orjson

from control.state import StateDoc, from_json, to_json

__all__ = ["MAX_STATE_BYTES", "FileStore", "audit_record"]

# A state document is well under a KiB per route; anything bigger is not ours, so refuse it
# rather than read it all into memory.
MAX_STATE_BYTES: Final = 16 * 1024 * 1024
TEMP_SUFFIX: Final = ".tmp"


def audit_record(
    actor: str, action: str, route: str, before: object, after: object, version: int, now: float
) -> bytes:
    """One audit record, JSON: a line of the file store's log, a value in etcd's."""
    return orjson.dumps(
        {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "actor": actor,
            "action": action,
            "route": route,
            "before": before,
            "after": after,
            "version": version,
        }
    )


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (signals, full disks report late)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: str) -> None:
    """Make renames and new entries in `directory` durable (POSIX needs the directory fsynced)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: str) -> None:
    """Create `directory` and any missing parents, each new entry fsynced into its parent."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent != directory:
        _make_dirs(parent)
    try:
        os.mkdir(directory)
    except FileExistsError:
        return  # made concurrently by another process; its creator syncs it
    _fsync_dir(parent)


class FileStore:
    """The state document at `path` and its audit log at `<path stem>.audit.jsonl`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        self.audit_path = os.path.splitext(path)[0] + ".audit.jsonl"

    def __repr__(self) -> str:
        return f"<FileStore {self.path!r}>"

    def load(self) -> StateDoc | None:
        """The persisted document, or None if there is none yet. ValueError (naming the path)
        for a file that is not a valid state document."""
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"{self.path}: state file larger than {MAX_STATE_BYTES} bytes")
        try:
            return from_json(data)
        except ValueError as err:
            raise ValueError(f"{self.path}: corrupt state file: {err}") from None

    def save(self, doc: StateDoc) -> None:
        """Replace the persisted document atomically and durably.

        If this raises after the rename (only the directory fsync can), the new document is
        already in place but may not survive a power cut; the caller treats it as a failure.
        """
        data = to_json(doc)
        _make_dirs(self.directory)
        name = os.path.basename(self.path)
        # Unique per call, so two writers never share a temp file.
        temp = os.path.join(self.directory, f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except BaseException:
            # Whatever went wrong, `path` still holds the old document; don't leave litter.
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(self.directory)

    def audit(
        self,
        actor: str,
        action: str,
        route: str,
        before: object,
        after: object,
        version: int,
        now: float,
    ) -> None:
        """Append one JSON line to the audit log and fsync it.

        One write per line on an O_APPEND descriptor, so concurrent writers never interleave
        within a line; after a crash at most the last line is partial, and readers skip it.
        """
        record = audit_record(actor, action, route, before, after, version, now)
        line = record + b"\n"
        _make_dirs(self.directory)
        created = not os.path.exists(self.audit_path)
        fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.directory)  # a new file's name is durable only once its directory is
