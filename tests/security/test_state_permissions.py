"""The state directory and the embedded database are private to the platform's user: the
directory 0700, the database (and its WAL files) and the generated SECRET_KEY 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from inventiv.storage import private_dir, private_file, private_write_text
from tests.processes import ROOT

EMBEDDED_WRITE = """
import django
django.setup()
from django.conf import settings
from django.db import connection
assert settings.EMBEDDED
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
    cursor.execute("INSERT INTO probe VALUES (1)")
    # while the connection is open, SQLite keeps its -wal and -shm files beside the database
    import os, pathlib, stat
    db = pathlib.Path(settings.DATABASES["default"]["NAME"])
    for suffix in ("-wal", "-shm"):
        print(suffix, oct(stat.S_IMODE(os.stat(str(db) + suffix).st_mode)))
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_embedded(state: Path) -> str:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "INVENTIV_TEST_DB_NAME")
    }
    env |= {"INVENTIV_STATE_DIR": str(state), "DJANGO_SETTINGS_MODULE": "inventiv.settings"}
    done = subprocess.run(
        [sys.executable, "-c", EMBEDDED_WRITE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        # the usual umask: files would be 0644 and directories 0755 without our care
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_embedded_state_directory_and_database_are_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    wal_modes = run_embedded(state)
    assert mode(state) == 0o700
    assert mode(state / "db.sqlite3") == 0o600
    assert mode(state / "secret_key") == 0o600
    assert wal_modes.split() == ["-wal", "0o600", "-shm", "0o600"]


def test_an_existing_world_readable_state_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / "db.sqlite3").touch()
    (state / "db.sqlite3").chmod(0o644)
    run_embedded(state)
    assert mode(state) == 0o700
    assert mode(state / "db.sqlite3") == 0o600


def test_the_helpers_create_private_paths_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        directory = private_dir(tmp_path / "a" / "b")
        file = private_file(directory / "f")
        private_write_text(directory / "secret", "s3cret")
    finally:
        os.umask(old)
    assert mode(directory) == 0o700
    assert mode(file) == 0o600
    assert mode(directory / "secret") == 0o600
    assert (directory / "secret").read_text() == "s3cret"
    file.write_text("kept")
    private_file(file)  # idempotent, never truncates
    assert file.read_text() == "kept"
