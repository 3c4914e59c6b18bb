"""Django settings for Inventiv Agents, read from the environment (see ``.env.example``).

Two shapes, same code:

* **Embedded** (no ``DATABASE_URL`` and no ``REDIS_URL``): one process on SQLite (WAL,
  immediate transactions), an in-process Celery broker, worker and beat, Channels' in-memory
  layer and a local-memory cache. For a newcomer's laptop and the demo.
* **Production**: ``DATABASE_URL`` (PostgreSQL, psycopg 3) and ``REDIS_URL`` (Celery broker,
  Channels layer, cache, gateway counters). ``SECRET_KEY`` must then be given.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE
from django.core.exceptions import ImproperlyConfigured

from inventiv.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_required,
    env_str,
    env_url,
    url_host,
)
from inventiv.storage import private_dir, private_file, private_write_text

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(env_str("INVENTIV_STATE_DIR", str(BASE_DIR / ".inventiv")) or "")
# Private (0700): it holds the embedded database, the generated SECRET_KEY, the demo's password.
try:
    private_dir(STATE_DIR)
except OSError as _exc:
    # The image runs as ``nobody``: the directory must exist and be writable by that user (the
    # Dockerfile creates /var/lib/inventiv, compose mounts a volume there).
    raise ImproperlyConfigured(
        f"INVENTIV_STATE_DIR={STATE_DIR} cannot be created ({_exc.strerror}): create it, "
        "writable by the user the platform runs as, or point INVENTIV_STATE_DIR elsewhere."
    ) from None
if not os.access(STATE_DIR, os.W_OK | os.X_OK):
    raise ImproperlyConfigured(
        f"INVENTIV_STATE_DIR={STATE_DIR} is not writable by uid {os.geteuid()}: give it to the "
        "user the platform runs as (the image's is nobody), or point INVENTIV_STATE_DIR elsewhere."
    )

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
EMBEDDED = DATABASE_URL is None and REDIS_URL is None
if DATABASE_URL and not REDIS_URL:
    # Separate web and worker processes need a shared broker: the in-memory one would silently
    # drop every command sent by the web process.
    raise ImproperlyConfigured("DATABASE_URL is set but REDIS_URL is not: set both, or neither.")
# Prefix of every Redis key we write (cache, channel layer, broker, gateway counters), so that
# several deployments or test runs can share one Redis without colliding.
REDIS_PREFIX = env_str("INVENTIV_REDIS_PREFIX", "inventiv:") or "inventiv:"

DEBUG = env_bool("DJANGO_DEBUG", default=False)


# The placeholder of .env.example and Django's generated development keys are refused.
_PLACEHOLDER_KEYS = ("change-me", "django-insecure-")
SECRET_KEY_MIN_LENGTH = 32


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if not EMBEDDED:
        if not key:
            raise ImproperlyConfigured(
                "SECRET_KEY is required when DATABASE_URL/REDIS_URL are set."
            )
        if (
            key.startswith(_PLACEHOLDER_KEYS)
            or len(key) < SECRET_KEY_MIN_LENGTH
            or len(set(key)) < 5
        ):
            raise ImproperlyConfigured(
                f"SECRET_KEY is a placeholder or too weak: give at least {SECRET_KEY_MIN_LENGTH} "
                "random characters, e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(50))'."
            )
        return key
    if key:
        return key
    # Embedded mode: a random key generated once and kept in the state directory.
    path = STATE_DIR / "secret_key"
    if not path.exists():
        private_write_text(path, secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The public URL of this platform, used in messages and in the machines' bootstrap data.
PUBLIC_URL = env_url("INVENTIV_PUBLIC_URL", "http://127.0.0.1:8000")
# The URL agents use to reach the internal agent API (defaults to PUBLIC_URL).
AGENT_API_URL = env_url("INVENTIV_AGENT_API_URL", PUBLIC_URL)
# Host-header protection: the hosts named in ALLOWED_HOSTS, plus those of the two URLs above
# (an agent calling AGENT_API_URL must not get a 400). /healthz and /readyz answer whatever the
# Host (inventiv.health.HealthMiddleware), so probes on 127.0.0.1 need no entry here.
ALLOWED_HOSTS = list(
    dict.fromkeys(
        [
            *env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"]),
            url_host(PUBLIC_URL),
            url_host(AGENT_API_URL),
        ]
    )
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI served from our own static files (no public CDN).
    "drf_spectacular_sidecar",
    "csp",
    "allauth",
    "allauth.account",
    # Single sign-on: OpenID Connect through allauth (INVENTIV_OIDC_*, docs/teams.md).
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "axes",
    "apps.accounts",
    "apps.models",
    "apps.instances",
    "apps.gateway",
    "apps.billing",
    "apps.portal",
]

MIDDLEWARE = [
    # First: probes get /healthz and /readyz whatever the Host header (nothing else does).
    "inventiv.health.HealthMiddleware",
    # Request latency by route and status for /metrics (inventiv/metrics.py); probes not timed.
    "inventiv.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The audit trail's "from where": the client address and user agent (apps/accounts/audit.py).
    "apps.accounts.audit.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # Last: turns a login refused by django-axes into the lockout answer (429).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "inventiv.urls"
ASGI_APPLICATION = "inventiv.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# PostgreSQL: every process holds at most DATABASE_POOL_MAX_SIZE connections, in Django's native
# psycopg pool (shared by the process's threads; a thread takes one for a request or a task and
# gives it back at its end, CONN_MAX_AGE=0). Under ASGI each request runs in a thread of its
# own: without a pool every such thread kept its own connection until PostgreSQL refused more.
# A thread that finds the pool empty waits DATABASE_POOL_TIMEOUT_S, then gets an error.
# DATABASE_POOL_PLAN tells the deploy check (inventiv.W003) how many processes of each role
# open a pool, to compare their sum with the server's max_connections (docs/operations.md).
DATABASE_POOL_MAX_SIZE = env_int("DATABASE_POOL_MAX_SIZE", 8, minimum=0)
DATABASE_POOL_MIN_SIZE = env_int("DATABASE_POOL_MIN_SIZE", 1, minimum=0)
DATABASE_POOL_TIMEOUT_S = env_float("DATABASE_POOL_TIMEOUT_S", 10.0, minimum=0.1)
# The heartbeat's event-loop look-up is a prepared statement (apps/instances/agents/api/asgi.py);
# false: never prepared (PgBouncer in transaction mode without max_prepared_statements). Django's
# own queries never are (client-side binding). OPTIONS["prepare_threshold"], if set, wins.
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", True)
DATABASE_POOL_PLAN_DEFAULT = "web=2,gateway=2,worker=5,beat=1,flower=1,migrate=1"


def _pool_plan(text: str) -> dict[str, tuple[int, int]]:
    """``role=processes[xsize],...`` → {role: (processes, pool size per process)}; the size
    defaults to ``DATABASE_POOL_MAX_SIZE``. Anything else is refused, naming the variable."""
    plan: dict[str, tuple[int, int]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        role, _, spec = item.partition("=")
        count, _, size = spec.partition("x")
        if not role.strip() or not count.strip().isdigit() or (size and not size.isdigit()):
            raise ImproperlyConfigured(
                f"DATABASE_POOL_PLAN: {item!r} is not role=processes or role=processesxsize "
                "(for example web=2,gateway=2x4,worker=5x2)."
            )
        plan[role.strip()] = (int(count), int(size) if size else DATABASE_POOL_MAX_SIZE)
    return plan


DATABASE_POOL_PLAN = _pool_plan(env_str("DATABASE_POOL_PLAN", DATABASE_POOL_PLAN_DEFAULT) or "")
if DATABASE_URL:
    _conn_max_age = env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0)
    if DATABASE_POOL_MAX_SIZE and _conn_max_age:
        raise ImproperlyConfigured(
            "DATABASE_CONN_MAX_AGE must be 0 (or unset) with the connection pool on "
            "(DATABASE_POOL_MAX_SIZE > 0): pooled connections are given back after each request."
        )
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=_conn_max_age)}
    if DATABASE_POOL_MAX_SIZE:
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": min(DATABASE_POOL_MIN_SIZE, DATABASE_POOL_MAX_SIZE),
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT_S,
            # Idle connections above min_size are closed after a minute.
            "max_idle": 60.0,
        }
    if env_str("INVENTIV_TEST_DB_NAME"):
        DATABASES["default"]["TEST"] = {"NAME": env_str("INVENTIV_TEST_DB_NAME")}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            # Created 0600 before SQLite opens it (its -wal and -shm files inherit the mode).
            "NAME": str(private_file(STATE_DIR / "db.sqlite3")),
            "OPTIONS": {
                # WAL + immediate transactions: the embedded mode's threads (web, worker, beat)
                # wait for each other instead of failing with "database is locked".
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"
                ),
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -----------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out user and address before any password is checked.
    "apps.accounts.throttling.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
# Who may sign up on the portal (apps/accounts/adapters.py, docs/security.md): open (anyone,
# e-mail verified), invite (a one-time invitation from staff: admin or `manage.py invite`),
# closed. Default invite: nobody signs up unasked, operators still can invite.
SIGNUP_MODE = env_choice("INVENTIV_SIGNUP", ("open", "invite", "closed"), default="invite")
# Every address signed up on the portal is verified before its first login (users created by
# operators with user_create are taken as verified). The embedded mode and the tests print or
# keep the e-mails (console, locmem backends).
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_ADAPTER = "apps.accounts.adapters.AccountAdapter"
LOGIN_REDIRECT_URL = "/"
LOGIN_URL = "/accounts/login/"
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "noreply@inventiv.local")
# Login throttling (django-axes, apps/accounts/throttling.py, docs/security.md): failures are
# counted per user and client address; at the limit that pair is refused (429, the right
# password included) for the cool-off, restarted by every failed try; a success resets it.
AXES_FAILURE_LIMIT = env_int("INVENTIV_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_float("INVENTIV_LOGIN_COOLOFF_S", 900.0, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_USERNAME_CALLABLE = "apps.accounts.throttling.login_username"
AXES_CLIENT_IP_CALLABLE = "apps.accounts.throttling.client_ip"
AXES_LOCKOUT_CALLABLE = "apps.accounts.throttling.lockout_response"
AXES_HTTP_RESPONSE_CODE = 429
# One counter of failed logins on every login surface: axes'. allauth keeps its other limits
# (sign-ups, logins and password resets per address...).
ACCOUNT_RATE_LIMITS = {"login_failed": None}
# Single sign-on (docs/teams.md): one OpenID Connect provider, configured here, none when
# INVENTIV_OIDC_ISSUER is empty. The login page offers it at /accounts/oidc/sso/login/. The
# provider's e-mail is taken as verified and signs in the account of that address;
# INVENTIV_OIDC_SIGNUP (default on) lets its users get an account whatever INVENTIV_SIGNUP says.
OIDC_ISSUER = env_str("INVENTIV_OIDC_ISSUER", "") or ""
OIDC_SIGNUP = env_bool("INVENTIV_OIDC_SIGNUP", True)
SOCIALACCOUNT_PROVIDERS = {
    "openid_connect": {
        "APPS": (
            [
                {
                    "provider_id": "sso",
                    "name": env_str("INVENTIV_OIDC_NAME", "Single sign-on"),
                    "client_id": env_required("INVENTIV_OIDC_CLIENT_ID"),
                    "secret": env_str("INVENTIV_OIDC_CLIENT_SECRET", "") or "",
                    "settings": {"server_url": OIDC_ISSUER},
                }
            ]
            if OIDC_ISSUER
            else []
        ),
        "OAUTH_PKCE_ENABLED": True,
    }
}
SOCIALACCOUNT_ADAPTER = "apps.accounts.adapters.SocialAccountAdapter"
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_STORE_TOKENS = False
# Reverse proxies in front of the web role whose X-Forwarded-For is trusted (0: none, the
# client is REMOTE_ADDR). Counted from the right, so a client cannot forge its address.
TRUSTED_PROXY_COUNT = env_int("INVENTIV_TRUSTED_PROXY_COUNT", 0, minimum=0)

# --- i18n / static --------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# The portal's own and vendored files (static/vendor/README.md: versions, licences).
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")) or "")
# collectstatic fills it in production; before that (tests, embedded) it may just be empty.
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG or EMBEDDED
            else "inventiv.storage.StaticStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG or EMBEDDED

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Basic auth (handy with curl) only on a developer's machine: in production it would let
    # anyone guess passwords against every endpoint.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.PersonalTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        *(
            ["apps.accounts.authentication.ThrottledBasicAuthentication"]
            if EMBEDDED or DEBUG
            else []
        ),
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "inventiv.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "inventiv.schema.AutoSchema",
    "EXCEPTION_HANDLER": "inventiv.errors.api_exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Inventiv Agents API",
    "DESCRIPTION": "Product-plane REST API. Inference lives at /v1 (OpenAI-compatible).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files, served by whitenoise
    # (collectstatic in production, the finders in the embedded mode): an air-gapped install
    # gets the same page, and the Content-Security-Policy needs no third-party origin.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Request bodies are documented as JSON only: forms still parse (the browsable API), but
    # a client generated from the schema speaks JSON, as docs/errors.md says.
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    "ENUM_NAME_OVERRIDES": {
        "InstanceStatusEnum": "apps.instances.choices.InstanceStatus",
        "ModelStatusEnum": "apps.models.choices.ModelStatus",
    },
}

# --- Cache, channel layer, Celery -------------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX + "cache",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 defaults to a 5 s socket timeout, which races channels-redis' 5 s
                # blocking reads and kills idle WebSockets: give reads room.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "prefix": REDIS_PREFIX + "asgi",
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "global_keyprefix": REDIS_PREFIX + "celery:",
        "visibility_timeout": 3600,
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "inventiv.layers.ThreadSafeInMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.05}

CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 270
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Beat's schedule file lives in the state directory (writable by the image's user, a volume).
CELERY_BEAT_SCHEDULE_FILENAME = str(STATE_DIR / "celerybeat-schedule")

# --- Orchestrator tunables (seconds) ----------------------------------------------------------
RECONCILE_INTERVAL_S = env_float("INVENTIV_RECONCILE_INTERVAL_S", 5.0, minimum=0.1)
HEARTBEAT_INTERVAL_S = env_float("INVENTIV_HEARTBEAT_INTERVAL_S", 5.0, minimum=0.05)
HEARTBEAT_DEADLINE_S = env_float("INVENTIV_HEARTBEAT_DEADLINE_S", 30.0, minimum=0.1)
UNAVAILABLE_REPLACE_AFTER_S = env_float("INVENTIV_UNAVAILABLE_REPLACE_AFTER_S", 60.0, minimum=0)
BOOT_DEADLINE_S = env_float("INVENTIV_BOOT_DEADLINE_S", 600.0, minimum=0.1)
STARTUP_DEADLINE_S = env_float("INVENTIV_STARTUP_DEADLINE_S", 1800.0, minimum=0.1)
# How long a draining instance may finish its streams, for model codes without their own
# drain_timeout_s (docs/autoscaling.md): long enough for a long stream.
DRAIN_DEADLINE_S = env_float("INVENTIV_DRAIN_DEADLINE_S", 900.0, minimum=0.1)
BOOTSTRAP_TOKEN_TTL_S = env_float("INVENTIV_BOOTSTRAP_TOKEN_TTL_S", 900.0, minimum=1)
# A provision/terminate command nobody took up after this long is re-sent by the reconciler (a
# lost enqueue; above the tasks' retry backoff, 120 s). A command in progress holds a lease: it
# is re-sent once the lease lapses, COMMAND_LEASE_S after its worker died; two workers never
# run one command at once.
COMMAND_RESEND_AFTER_S = env_float("INVENTIV_COMMAND_RESEND_AFTER_S", 150.0, minimum=0.1)
COMMAND_LEASE_S = env_float("INVENTIV_COMMAND_LEASE_S", 6.0, minimum=0.1)
REPLACEMENT_BACKOFF_S = env_float("INVENTIV_REPLACEMENT_BACKOFF_S", 10.0, minimum=0)
# If at least this share of a fleet (of 3+ instances) misses heartbeats at once, we suspect our
# own network or database rather than the machines, and do not terminate anything.
MASS_HEARTBEAT_LOSS_RATIO = env_float("INVENTIV_MASS_HEARTBEAT_LOSS_RATIO", 0.5, minimum=0)
# ...but only for so long: a loss that lasts longer is real (a zone outage) and is handled.
MASS_HEARTBEAT_LOSS_HOLD_S = env_float(
    "INVENTIV_MASS_HEARTBEAT_LOSS_HOLD_S", 3 * HEARTBEAT_DEADLINE_S, minimum=0
)
# WebSocket consumers re-check organization membership at most this often while events flow,
# so that someone removed from an organization stops receiving its events without reconnecting.
WS_MEMBERSHIP_RECHECK_S = env_float("INVENTIV_WS_MEMBERSHIP_RECHECK_S", 30.0, minimum=0)
# After an operator's power action (reboot...), missed heartbeats are expected this long.
POWER_ACTION_GRACE_S = env_float("INVENTIV_POWER_ACTION_GRACE_S", 900.0, minimum=0)
LOCAL_PROVIDER_ENABLED = env_bool("INVENTIV_LOCAL_PROVIDER", default=EMBEDDED or DEBUG)
# A local agent stops its engine and exits once the control plane has been gone this long (the
# agents `make demo` keeps for its next start do not run forever; 0: never).
LOCAL_AGENT_EXIT_AFTER_OFFLINE_S = env_float(
    "INVENTIV_LOCAL_AGENT_EXIT_AFTER_OFFLINE_S", 900.0, minimum=0
)

# --- Security (production) ------------------------------------------------------------------
# INVENTIV_TLS says where TLS ends: "proxy" (a reverse proxy terminates HTTPS and forwards with
# X-Forwarded-Proto: https; HTTPS redirect, secure cookies, HSTS) or "off" (plain HTTP, e.g.
# compose.yaml as shipped: none of those; ``check --deploy`` warns, inventiv.W002). Default:
# "proxy" in production, "off" in the embedded and debug modes. The four variables below still
# override one by one.
TLS = env_choice(
    "INVENTIV_TLS", ("proxy", "off"), default="off" if (DEBUG or EMBEDDED) else "proxy"
)
_HTTPS = TLS == "proxy"
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=_HTTPS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", default=_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", default=_HTTPS)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if _HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _HTTPS
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", default=False)
# Trust X-Forwarded-Proto only when a proxy is declared: without one, a client could claim HTTPS.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _HTTPS else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^internal/"]
X_FRAME_OPTIONS = "DENY"
# The other headers Django's SecurityMiddleware sends (stated, not left to defaults).
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Content-Security-Policy (django-csp): everything from our own origin; the few inline blocks
# of our templates carry the per-response nonce (``{{ request.csp_nonce }}``), so no
# 'unsafe-inline' and no 'unsafe-eval'. ``data:`` images are Swagger UI's icons. 'self' in
# connect-src covers the portal's same-origin WebSocket (tests/foundation/test_web_security.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", NONCE],
        "style-src": ["'self'", NONCE],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# HSTS preload is a commitment to browsers' lists; an operator opts in with SECURE_HSTS_PRELOAD.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
if not _HTTPS:
    # Plain HTTP by choice: one warning that says so (inventiv.W002) instead of four generic
    # ones that advise settings which would break a site without TLS.
    SILENCED_SYSTEM_CHECKS += ["security.W004", "security.W008", "security.W012", "security.W016"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}

# --- Beat schedule (the orchestrator's periodic work); exactly one beat runs ------------------
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # Converges desired replicas with reality, re-sends lost commands, enforces deadlines.
    "reconcile": {
        "task": "apps.instances.tasks.reconcile_task",
        "schedule": RECONCILE_INTERVAL_S,
        "options": {"expires": RECONCILE_INTERVAL_S * 2},
    },
    # Refreshes every provider's catalog (types, prices, per-zone availability).
    "catalog-sync": {
        "task": "apps.instances.providers.tasks.catalog_sync_all_task",
        "schedule": env_float("INVENTIV_CATALOG_SYNC_INTERVAL_S", 3600.0, minimum=10),
        "options": {"expires": 600},
    },
    # Removes tagged cloud resources that no live instance owns (after a grace period).
    "sweep": {
        "task": "apps.instances.providers.tasks.sweep_all_task",
        "schedule": env_float("INVENTIV_SWEEP_INTERVAL_S", 300.0, minimum=5),
        "options": {"expires": 240},
    },
    # Writes the gateways' buffered usage records to the database (idempotent by request id).
    "usage-flush": {
        "task": "apps.billing.tasks.usage_flush_task",
        "schedule": env_float("USAGE_FLUSH_INTERVAL_S", 2.0, minimum=0.05),
        "options": {"expires": 10},
    },
    # Billing: rollups, prices and budgets to the gateways, blocks keys/organizations over budget.
    "budgets-enforce": {
        "task": "apps.billing.tasks.budgets_enforce_task",
        "schedule": env_float("INVENTIV_BUDGETS_ENFORCE_INTERVAL_S", 10.0, minimum=0.5),
        "options": {"expires": 20},
    },
}

# --- Providers: Scaleway, AWS, on-premise; catalog, sweeper, bootstrap -----------------------
# (read with the strict helpers of inventiv.env; documented in .env.example)
# The value of the ``inventiv-managed`` tag on every cloud resource we create. Two platforms
# sharing a cloud account must use different names: each sweeps only its own resources.
DEPLOYMENT_NAME = env_str("INVENTIV_DEPLOYMENT_NAME", "inventiv") or "inventiv"
# What cloud-init and the on-premise join command install with pip: the agent, then the engine.
# Empty: the wheel this control plane serves at /internal/agent/v1/dist/ (built from agent/).
INVENTIV_AGENT_PIP_SPEC = env_str("INVENTIV_AGENT_PIP_SPEC", "") or ""
INVENTIV_ENGINE_PIP_SPECS = env_list("INVENTIV_ENGINE_PIP_SPECS", ["vllm"])
# The sealed data plane (docs/security.md): "auto" seals the engines of cloud and on-premise
# machines (loopback only, behind the agent's TLS front that the gateways pin) and leaves the
# local provider's direct; "on" seals every engine, the local provider's too; "off" none.
SEALED_DATA_PLANE = env_choice("INVENTIV_SEALED_DATA_PLANE", ("auto", "on", "off"), default="auto")
# Who may reach the instance port (the agent's front) of cloud machines: the security groups
# the Scaleway and AWS adapters create open only that port, to these CIDRs (the gateways'
# egress addresses; comma-separated). Nothing else is opened.
AGENT_INGRESS_CIDRS = env_list("INVENTIV_AGENT_INGRESS_CIDRS", ["0.0.0.0/0", "::/0"])
for _cidr in AGENT_INGRESS_CIDRS:
    try:
        ipaddress.ip_network(_cidr, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"INVENTIV_AGENT_INGRESS_CIDRS: {_cidr!r} is not a CIDR such as 203.0.113.0/24."
        ) from None
# Timeout of one provider API call (connect + read), seconds.
PROVIDER_CALL_TIMEOUT_S = env_float("INVENTIV_PROVIDER_CALL_TIMEOUT_S", 30.0, minimum=1)
# How long create waits for the machine to be running before returning it as "starting".
PROVIDER_WAIT_RUNNING_S = env_float("INVENTIV_PROVIDER_WAIT_RUNNING_S", 120.0, minimum=0)
# How long terminate waits for the machine to be gone before releasing volumes and IPs.
PROVIDER_WAIT_GONE_S = env_float("INVENTIV_PROVIDER_WAIT_GONE_S", 180.0, minimum=1)
PROVIDER_POLL_INTERVAL_S = env_float("INVENTIV_PROVIDER_POLL_INTERVAL_S", 3.0, minimum=0.01)
# The sweeper never touches a resource younger than this: a machine being created may not be
# recorded (or even listed) yet. Must exceed the provisioning task's time limit.
SWEEP_GRACE_S = env_float("INVENTIV_SWEEP_GRACE_S", 900.0, minimum=0)
ONPREM_JOIN_TOKEN_TTL_S = env_float("INVENTIV_ONPREM_JOIN_TOKEN_TTL_S", 3600.0, minimum=1)
ONPREM_POLL_INTERVAL_S = env_float("INVENTIV_ONPREM_POLL_INTERVAL_S", 5.0, minimum=0.05)
# A host not heard from for this long gets no new placements.
ONPREM_HOST_OFFLINE_AFTER_S = env_float("INVENTIV_ONPREM_HOST_OFFLINE_AFTER_S", 60.0, minimum=1)
# Hosts behind NAT (docs/providers.md): the base URL of every gateway process, as machines reach
# it; an agent that cannot be dialed keeps a tunnel open to each. Empty: no tunnels.
TUNNEL_GATEWAY_URLS = env_list("INVENTIV_TUNNEL_GATEWAY_URLS", [])
# The provider catalog/sweep tasks live in their own module (tasks.py is the orchestrator's).
CELERY_IMPORTS = ["apps.instances.providers.tasks"]
# Cloud SDKs log request bodies (user data carries a bootstrap token) at DEBUG: never log them.
for _sdk_logger in ("scaleway", "botocore", "boto3", "urllib3"):
    LOGGING["loggers"][_sdk_logger] = {"level": "WARNING"}  # type: ignore[index]
# --- end of providers ---------------------------------------------------------------------------

# --- Gateway and usage (owned by the gateway work; documented in .env.example, docs/gateway.md)
# Largest request body accepted (413 beyond), also for chunked bodies without Content-Length.
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024)
# The whole body must arrive within this (408 beyond): a trickling client holds no connection.
GATEWAY_BODY_TIMEOUT_S = env_float("GATEWAY_BODY_TIMEOUT_S", 10.0, minimum=0.1)
# max_tokens / max_completion_tokens above a model code's context are refused (400); this is the
# context assumed for a model code that declares none (engine_args or max_model_len).
GATEWAY_DEFAULT_MAX_MODEL_LEN = env_int("GATEWAY_DEFAULT_MAX_MODEL_LEN", 131072, minimum=16)
# Upstream (engine) timeouts: connecting, and waiting for the response or the next chunk.
GATEWAY_CONNECT_TIMEOUT_S = env_float("GATEWAY_CONNECT_TIMEOUT_S", 3.0, minimum=0.01)
GATEWAY_UPSTREAM_TIMEOUT_S = env_float("GATEWAY_UPSTREAM_TIMEOUT_S", 300.0, minimum=0.01)
GATEWAY_UPSTREAM_MAX_CONNECTIONS = env_int("GATEWAY_UPSTREAM_MAX_CONNECTIONS", 1024, minimum=1)
# Attempts per request (on connection errors and 5xx before any byte reached the client), and
# the share of requests that may be retried (a retry budget, so retries never snowball).
GATEWAY_MAX_ATTEMPTS = env_int("GATEWAY_MAX_ATTEMPTS", 3, minimum=1)
GATEWAY_RETRY_BUDGET_RATIO = env_float("GATEWAY_RETRY_BUDGET_RATIO", 0.2, minimum=0)
# Circuit breaker: consecutive failures that take an instance out of rotation, and for how long.
GATEWAY_BREAKER_FAILURES = env_int("GATEWAY_BREAKER_FAILURES", 3, minimum=1)
GATEWAY_BREAKER_COOLDOWN_S = env_float("GATEWAY_BREAKER_COOLDOWN_S", 10.0, minimum=0.01)
# Safety-net refreshes of the key cache and the routing table (events do it at once).
GATEWAY_KEY_REFRESH_S = env_float("GATEWAY_KEY_REFRESH_S", 30.0, minimum=0.1)
GATEWAY_ROUTING_REFRESH_S = env_float("GATEWAY_ROUTING_REFRESH_S", 10.0, minimum=0.1)
# A request for a model code with no ready instance waits this long for one, then gets 503
# with Retry-After: GATEWAY_RETRY_AFTER_S.
GATEWAY_CAPACITY_WAIT_S = env_float("GATEWAY_CAPACITY_WAIT_S", 0.0, minimum=0)
GATEWAY_RETRY_AFTER_S = env_int("GATEWAY_RETRY_AFTER_S", 5, minimum=1)
# Autoscaling (docs/autoscaling.md): gateways publish their in-flight and held counts per model
# code every GATEWAY_LOAD_PUBLISH_S, kept GATEWAY_LOAD_TTL_S; a model code at zero holds at most
# GATEWAY_HOLD_QUEUE_MAX requests per gateway process (429 beyond), streams get an SSE comment
# every GATEWAY_HOLD_COMMENT_S while held.
GATEWAY_LOAD_PUBLISH_S = env_float("GATEWAY_LOAD_PUBLISH_S", 1.0, minimum=0.05)
GATEWAY_LOAD_TTL_S = env_float("GATEWAY_LOAD_TTL_S", 5.0, minimum=0.1)
GATEWAY_HOLD_QUEUE_MAX = env_int("GATEWAY_HOLD_QUEUE_MAX", 100, minimum=0)
GATEWAY_HOLD_COMMENT_S = env_float("GATEWAY_HOLD_COMMENT_S", 5.0, minimum=0.1)
# Routing: the header carrying the session for session affinity; prefix-aware routing hashes
# this many characters of the prompt and allows an instance this factor above the mean load.
GATEWAY_SESSION_HEADER = (env_str("GATEWAY_SESSION_HEADER", "x-session-id") or "").lower()
GATEWAY_PREFIX_CHARS = env_int("GATEWAY_PREFIX_CHARS", 256, minimum=1)
GATEWAY_PREFIX_LOAD_FACTOR = env_float("GATEWAY_PREFIX_LOAD_FACTOR", 1.25, minimum=1.0)
# Engines whose own POST /v1/responses the gateway passes through (vLLM >= 0.10, the mock);
# for any other engine it translates the Responses API onto chat completions (docs/gateway.md).
GATEWAY_RESPONSES_ENGINES = env_list("GATEWAY_RESPONSES_ENGINES", ["vllm", "mock"])
# A client that leaves mid-stream: the gateway keeps reading the engine's answer this long to
# record exactly what was generated (0: stop at once, counting the chunks already received).
GATEWAY_DISCONNECT_DRAIN_S = env_float("GATEWAY_DISCONNECT_DRAIN_S", 60.0, minimum=0)
# Bearer token for GET /metrics on the standalone gateway; unset disables the endpoint.
GATEWAY_METRICS_TOKEN = env_str("GATEWAY_METRICS_TOKEN")
# Bearer token for GET /metrics on the web role and the worker's metrics port (docs/operations.md);
# unset disables both. The worker serves it on WORKER_METRICS_HOST:PORT when the port is set.
METRICS_TOKEN = env_str("INVENTIV_METRICS_TOKEN")
WORKER_METRICS_HOST = env_str("INVENTIV_WORKER_METRICS_HOST", "0.0.0.0") or "0.0.0.0"
WORKER_METRICS_PORT = env_int("INVENTIV_WORKER_METRICS_PORT", 0, minimum=0)
# Where operators reach Flower (linked from the fleet page; compose: the host's loopback).
FLOWER_URL = env_str("INVENTIV_FLOWER_URL", "http://127.0.0.1:5555/flower/") or ""
# Usage records: buffered in Redis by gateways, written to PostgreSQL by the worker.
USAGE_FLUSH_INTERVAL_S = env_float("USAGE_FLUSH_INTERVAL_S", 2.0, minimum=0.05)
USAGE_FLUSH_BATCH = env_int("USAGE_FLUSH_BATCH", 1000, minimum=1)
# Streams: 0 writes a checkpoint before each relayed batch of events (nothing is delivered
# unrecorded); > 0 writes one at most this often without waiting (a killed gateway loses at
# most that long of one stream's tokens).
USAGE_CHECKPOINT_INTERVAL_S = env_float("USAGE_CHECKPOINT_INTERVAL_S", 0.0, minimum=0)
# How long an answer waits for the usage buffer (Redis) before it is cut (usage_unavailable).
USAGE_WRITE_TIMEOUT_S = env_float("USAGE_WRITE_TIMEOUT_S", 10.0, minimum=0.01)
# A gateway process not heard from for this long is dead: the flush bills its checkpoints.
USAGE_GATEWAY_TTL_S = env_float("USAGE_GATEWAY_TTL_S", 5.0, minimum=0.1)
# Entries a flush read and did not acknowledge for this long are taken over by the next one.
USAGE_CLAIM_IDLE_S = env_float("USAGE_CLAIM_IDLE_S", 30.0, minimum=0.01)
# A backlog (records not yet flushed) above this is logged as a warning by gateways and flush.
USAGE_BACKLOG_ALERT = env_int("USAGE_BACKLOG_ALERT", 100_000, minimum=1)
# --- end of gateway and usage -------------------------------------------------------------------
