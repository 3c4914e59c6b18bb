import os
import stat
from pathlib import Path
from typing import Any

from django.core.files.storage import FileSystemStorage
from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed static files; a file missing from the manifest (e.g. before
    ``collectstatic`` in a test run) is served under its plain name instead of a 500."""

    manifest_strict = False

    def url(self, name: Any, force: bool = False) -> str:
        try:
            return super().url(name, force)
        except ValueError:
            return FileSystemStorage.url(self, name)


# --- The state directory and its files: private to the platform's user ----------------------
# The state directory holds the embedded database, the generated SECRET_KEY (from which the
# encryption key is derived when INVENTIV_ENCRYPTION_KEYS is unset), the demo's admin password
# and the local provider's agent logs: nobody else on the host may read them.

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it is broader and ours (a directory mounted from elsewhere,
    owned by another user, is left as it is)."""
    st = path.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
        path.chmod(mode)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700, or tighten an existing one."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    _tighten(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing (never truncated), or tighten it. SQLite
    gives its -wal and -shm files the mode of the database file, so they stay 0600 too."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE_MODE))
    _tighten(path, PRIVATE_FILE_MODE)
    return path


def private_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, the file 0600 from its first byte."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
