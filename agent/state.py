"""The agent's optional state directory: the per-instance credential, kept across restarts.

The bootstrap token is one-time, so an agent that restarts (machine reboot, crash) must not need
it again. With ``--state-dir DIR`` the agent writes ``DIR/credential.json`` after a successful
registration and, on start, resumes from it instead of registering.

Guarantees:

* The directory is created with mode 0700 (an existing directory is left as it is); the file is
  written atomically (temporary file, fsync, rename, fsync of the directory) with mode 0600.
* A file written for another control plane URL, or one that cannot be read or parsed, is ignored
  (with a warning) as if it were absent; a new registration overwrites it.
* The credential never appears in a log message or an exception message from this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CREDENTIAL_FILE = "credential.json"


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


@dataclass(frozen=True)
class StoredCredential:
    instance_id: str
    credential: str
    control_plane: str

    def __repr__(self) -> str:  # never show the credential, even in a traceback
        return f"StoredCredential(instance_id={self.instance_id!r}, control_plane=...)"


class CredentialStore:
    """``credential.json`` in ``directory``, for the control plane at ``control_plane``."""

    def __init__(self, directory: Path, control_plane: str) -> None:
        self.directory = directory
        self.control_plane = control_plane
        self.path = directory / CREDENTIAL_FILE

    def load(self) -> StoredCredential | None:
        """The stored credential for this control plane, or None."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s)", self.path, type(exc).__name__)
            return None
        if not isinstance(data, dict):
            log.warning("ignoring malformed %s", self.path)
            return None
        instance_id = data.get("instance_id")
        credential = data.get("credential")
        control_plane = data.get("control_plane")
        if not (
            isinstance(instance_id, str)
            and instance_id
            and isinstance(credential, str)
            and credential
            and isinstance(control_plane, str)
        ):
            log.warning("ignoring malformed %s", self.path)
            return None
        if not _same_url(control_plane, self.control_plane):
            log.warning(
                "ignoring %s: it was written for another control plane (%s)",
                self.path,
                control_plane,
            )
            return None
        return StoredCredential(instance_id, credential, control_plane)

    def save(self, instance_id: str, credential: str) -> None:
        """Write the file atomically, mode 0600. Raises OSError."""
        try:
            self.directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        else:
            os.chmod(self.directory, 0o700)  # mkdir's mode is subject to the umask
        data = json.dumps(
            {
                "instance_id": instance_id,
                "credential": credential,
                "control_plane": self.control_plane,
            }
        )
        # mkstemp creates the file with mode 0600, so the credential is never readable by others.
        fd, tmp = tempfile.mkstemp(prefix=".credential.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_directory()

    def delete(self) -> None:
        """Remove the file if it exists. Raises OSError (other than not found)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
