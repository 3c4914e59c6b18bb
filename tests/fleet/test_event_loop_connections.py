"""The heartbeat's event-loop connections come out of the process's Django pool: a web worker
never opens more than DATABASE_POOL_MAX_SIZE, whatever the order of its first query and of
``inventiv.asgi``'s import (issue 19). Each case in a fresh process, since Django makes its
pool once per process; what is checked is the real pool's size (``connection.pool``) and the
event loop's, not the settings."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import subprocess_env
from tests.processes import PYTHON, ROOT

PROBE = """
import json, os, sys
import django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inventiv.settings")
django.setup()
from django.db import connection
first, how = sys.argv[1], sys.argv[2]
if first == "query":  # a query before the import (run_embedded's migrations, a test)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()
from apps.instances.agents.api.asgi import HeartbeatApp, reserve_heartbeat_connections
apps = []
for _ in range(2 if how == "twice" else 1):
    reserved = reserve_heartbeat_connections() if how != "none" else None
    apps.append(HeartbeatApp(None, db_connections=reserved))
with connection.cursor() as cursor:
    cursor.execute("SELECT 1")
loop = sum(app.db.size for app in apps if app.db is not None)
print(json.dumps({"loop": loop, "django": connection.pool.max_size}))
"""


@pytest.mark.parametrize(
    ("first", "how", "size", "loop", "django"),
    [
        ("import", "reserve", 8, 2, 6),  # inventiv.asgi at a worker's start: 2 of 8
        ("import", "reserve", 3, 1, 2),  # Django keeps at least two
        ("import", "twice", 8, 2, 6),  # a second app takes none of its own
        ("import", "none", 8, 2, 6),  # HeartbeatApp(db_connections=None) reserves them too
        ("query", "reserve", 8, 0, 8),  # the pool made first keeps its size: beats in threads
        ("query", "none", 8, 0, 8),
    ],
)
def test_the_process_never_opens_more_than_its_pool(
    first: str, how: str, size: int, loop: int, django: int
) -> None:
    env = {**subprocess_env(), "DATABASE_POOL_MAX_SIZE": str(size), "DATABASE_POOL_MIN_SIZE": "1"}
    done = subprocess.run(
        [PYTHON, "-c", PROBE, first, how],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured == {"loop": loop, "django": django}
    assert measured["loop"] + measured["django"] <= size
