"""Every setting Sluice reads from the environment, in one place."""

import secrets
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env("SLUICE_DATA_DIR", default=str(BASE_DIR / "data")))
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret_key() -> str:
    """Embedded defaults keep a generated key in the data directory: provider keys stay decryptable."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env("SECRET_KEY", default="") or _persistent_secret_key()
DEBUG = env.bool("DEBUG", default=False)
# Behind a balancer: SLUICE_PUBLIC_URL (e.g. https://sluice.example.com) is the address users open; it
# admits that host name, trusts that origin for the admin's forms and, over https, keeps cookies secure.
# The loopback names stay allowed so that probes from inside the host or container work.
PUBLIC_URL = urlsplit(env("SLUICE_PUBLIC_URL", default=""))
ALLOWED_HOSTS = env.list(
    "ALLOWED_HOSTS", default=[name for name in (PUBLIC_URL.hostname, "testserver") if name]
)
ALLOWED_HOSTS += [name for name in ("127.0.0.1", "localhost", "[::1]") if name not in ALLOWED_HOSTS]
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[]) or (
    [f"{PUBLIC_URL.scheme}://{PUBLIC_URL.netloc}"] if PUBLIC_URL.netloc else []
)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SLUICE_SECURE_COOKIES", PUBLIC_URL.scheme == "https")
PORT = env.int("PORT", default=8000)
# Worker processes of `manage.py serve` (several need REDIS_URL).
WEB_CONCURRENCY = env.int("WEB_CONCURRENCY", default=1)
# Addresses (or networks) of the proxies whose X-Forwarded-For/-Proto uvicorn believes; "*" trusts any peer.
FORWARDED_ALLOW_IPS = env.list("FORWARDED_ALLOW_IPS", default=["127.0.0.1", "::1"])

INSTALLED_APPS = [
    # First, so that its admin templates (branding, language switch) override the admin's own.
    "settings_app",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "providers",
    "proxy",
    "identity",
    "audit",
    # Password sign-in failures, counted in the database (every node sees them): identity/passwords.py.
    "axes",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who is acting, for the audit log (admin and portal pages; /v1 does not pass through here).
    "audit.entry.ActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out sign-in (identity.passwords.locked_out).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "identity.context.sign_in",
                "portal.context.nav",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'sluice.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the request-log writer and the admin work side by side; with WAL, synchronous=NORMAL keeps
    # the database consistent and saves an fsync per transaction.
    DATABASES["default"].setdefault("OPTIONS", {})["init_command"] = (
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["OPTIONS"]["timeout"] = 20
    # Only long-lived worker threads (request log, config loaders) open connections: keep them.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    # Tests use a file too: SQLite's shared in-memory database locks whole tables without waiting, which
    # the request-log thread writing beside a test would trip over.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)

REDIS_URL = env("REDIS_URL", default="")
# Shared state must answer quickly or be treated as unavailable (settings_app/shared.py): a paused Redis
# must not hold every request for seconds.
SLUICE_CACHE_TIMEOUT = env.float("SLUICE_CACHE_TIMEOUT", default=1.0)
SLUICE_CACHE_RETRY_SECONDS = env.float("SLUICE_CACHE_RETRY_SECONDS", default=2.0)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "socket_connect_timeout": SLUICE_CACHE_TIMEOUT,
                "socket_timeout": SLUICE_CACHE_TIMEOUT,
            },
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "settings_app.channel_layer.ResilientRedisChannelLayer",
            # redis-py's asyncio pool allows 100 connections in use by default: a burst of upgrades
            # (each joins its key's group) went over it.
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_connect_timeout": SLUICE_CACHE_TIMEOUT,
                        "max_connections": 1000,
                    }
                ]
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "settings_app.cache.LocalMemoryCache", "LOCATION": "sluice"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

# The default language of the admin (browsers may ask for another) and of management commands.
LANGUAGE_CODE = env("LANGUAGE_CODE", default="en")
LANGUAGES = [
    ("en", _("English")),
    ("zh-hans", _("Simplified Chinese")),
    ("zh-hant", _("Traditional Chinese")),
    ("ja", _("Japanese")),
    ("ru", _("Russian")),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
FORMAT_MODULE_PATH = ["config.formats"]  # one date format in every language (config/formats/common.py)
USE_I18N = True
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# The admin's static files are served by the gateway itself (no web server needed in front of it).
WHITENOISE_USE_FINDERS = True
# WhiteNoise streams files with a synchronous iterator; under ASGI Django warns on every static file.
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# The gateway checks body size itself (SLUICE_MAX_BODY_BYTES) and answers with an OpenAI-style error;
# Django's 2.5 MB default must not apply to /v1 bodies.
DATA_UPLOAD_MAX_MEMORY_SIZE = None
FILE_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024 * 1024

# LOG_LEVEL: DEBUG, INFO (default: one line per refusal and per provider failure), WARNING, ERROR.
# SLUICE_LOG_FORMAT: "plain" (default) or "json" (one JSON object per line).
LOG_FORMAT = env("SLUICE_LOG_FORMAT", default="plain")
# Error reports (the DEBUG page, mailed reports) never show a key held in a frame variable.
DEFAULT_EXCEPTION_REPORTER_FILTER = "config.reporting.SecretSafeFilter"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.jsonlog.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {
        # These libraries log request headers (with API keys) at DEBUG: never let them, whatever LOG_LEVEL
        # says.
        "aiohttp": {"level": "WARNING"},
        "websockets": {"level": "INFO"},
        # A refusal is logged once, by sluice.refusals; Django would log every 4xx again as a warning.
        # Its errors (5xx) still come through.
        "django.request": {"level": "ERROR"},
        # django-axes logs every successful sign-in at INFO; its lockouts come through as warnings, and
        # every failure is kept in the database (AccessFailureLog) for the audit log.
        "axes": {"level": "WARNING"},
    },
}

# Gateway behaviour.
SLUICE_MAX_BODY_BYTES = env.int("SLUICE_MAX_BODY_BYTES", default=32 * 1024 * 1024)
SLUICE_WS_MAX_FRAME_BYTES = env.int("SLUICE_WS_MAX_FRAME_BYTES", default=32 * 1024 * 1024)
# Inflated WebSocket messages waiting for the application, all connections together
# (proxy/server/ws_protocol.py).
SLUICE_WS_TOTAL_BUFFER_BYTES = env.int("SLUICE_WS_TOTAL_BUFFER_BYTES", default=128 * 1024 * 1024)
# Read deadlines and header limits of every connection (proxy/server/serving.py).
SLUICE_HEADER_TIMEOUT = env.float("SLUICE_HEADER_TIMEOUT", default=10.0)
SLUICE_BODY_TIMEOUT = env.float("SLUICE_BODY_TIMEOUT", default=60.0)
SLUICE_MAX_HEADER_BYTES = env.int("SLUICE_MAX_HEADER_BYTES", default=64 * 1024)
SLUICE_MAX_HEADERS = env.int("SLUICE_MAX_HEADERS", default=100)
SLUICE_WS_FIRST_FRAME_TIMEOUT = env.float("SLUICE_WS_FIRST_FRAME_TIMEOUT", default=60.0)
SLUICE_WS_IDLE_TIMEOUT = env.float("SLUICE_WS_IDLE_TIMEOUT", default=15 * 60.0)
SLUICE_WS_MAX_AGE = env.float("SLUICE_WS_MAX_AGE", default=60 * 60.0)
SLUICE_WS_QUEUE_LIMIT = env.int("SLUICE_WS_QUEUE_LIMIT", default=8)
# Upstream sockets are replaced before the service's 60-minute limit, between turns.
SLUICE_UPSTREAM_WS_MAX_AGE = env.float("SLUICE_UPSTREAM_WS_MAX_AGE", default=55 * 60.0)
SLUICE_UPSTREAM_WS_HANDSHAKE_TIMEOUT = env.float("SLUICE_UPSTREAM_WS_HANDSHAKE_TIMEOUT", default=10.0)
SLUICE_WS_UNSUPPORTED_TTL = env.int("SLUICE_WS_UNSUPPORTED_TTL", default=15 * 60)
# On SIGTERM, how long turns in flight may take to finish before the process exits anyway.
SLUICE_DRAIN_SECONDS = env.float("SLUICE_DRAIN_SECONDS", default=30.0)
SLUICE_CONFIG_POLL_SECONDS = env.float("SLUICE_CONFIG_POLL_SECONDS", default=2.0)
# The request log is written in batches gathered for this long (rows are never lost: flush() and the
# queue keep them).
SLUICE_LOG_BATCH_SECONDS = env.float("SLUICE_LOG_BATCH_SECONDS", default=1.0)
# While the database refuses writes, rows wait in memory up to this many (more are dropped and counted),
# and a batch is retried for this long before it is dropped and counted.
SLUICE_LOG_QUEUE_ROWS = env.int("SLUICE_LOG_QUEUE_ROWS", default=100_000)
SLUICE_LOG_RETRY_SECONDS = env.float("SLUICE_LOG_RETRY_SECONDS", default=600.0)
SLUICE_BREAKER_THRESHOLD = env.int("SLUICE_BREAKER_THRESHOLD", default=3)
SLUICE_BREAKER_COOLDOWN = env.int("SLUICE_BREAKER_COOLDOWN", default=30)
SLUICE_SESSION_AFFINITY_TTL = env.int("SLUICE_SESSION_AFFINITY_TTL", default=6 * 3600)
SLUICE_RESPONSE_AFFINITY_TTL = env.int("SLUICE_RESPONSE_AFFINITY_TTL", default=7 * 24 * 3600)
# Who may use a stored response (retrieve, continue, delete): "owner", the person whose key made it;
# "team", also the members of that key's team.
SLUICE_RESPONSE_SHARING = env("SLUICE_RESPONSE_SHARING", default="owner").strip().lower()
if SLUICE_RESPONSE_SHARING not in ("owner", "team"):
    raise ImproperlyConfigured("SLUICE_RESPONSE_SHARING must be 'owner' or 'team'.")
# "on"/"off" forces a system-settings switch regardless of the admin; empty leaves it to the admin.
SLUICE_FORCE_CLIENT_WEBSOCKETS = env("SLUICE_FORCE_CLIENT_WEBSOCKETS", default="")
SLUICE_FORCE_UPSTREAM_WEBSOCKETS = env("SLUICE_FORCE_UPSTREAM_WEBSOCKETS", default="")
# Optional dedicated key for encrypting provider secrets; defaults to one derived from SECRET_KEY.
SLUICE_ENCRYPTION_KEY = env("SLUICE_ENCRYPTION_KEY", default="")

# /metrics asks for "Authorization: Bearer <token>" when this is set.
SLUICE_METRICS_TOKEN = env("SLUICE_METRICS_TOKEN", default="")
# Without a token, /metrics answers only clients in these networks (comma-separated; loopback by default).
SLUICE_METRICS_ALLOW = env("SLUICE_METRICS_ALLOW", default="127.0.0.0/8,::1/128")
# Request-log rows older than this are deleted by `manage.py prunelogs`.
SLUICE_LOG_RETENTION_DAYS = env.int("SLUICE_LOG_RETENTION_DAYS", default=90)
# Requests and tokens per minute are counted in fixed windows of this many seconds (60: per minute; tests
# shorten it).
SLUICE_RATE_WINDOW_SECONDS = env.float("SLUICE_RATE_WINDOW_SECONDS", default=60.0)
# A turn under a budget reserves its estimated cost at admission: this many output tokens when the request
# names no max_output_tokens.
SLUICE_BUDGET_OUTPUT_TOKENS = env.int("SLUICE_BUDGET_OUTPUT_TOKENS", default=8192)

# Audit rows older than this are deleted by `manage.py pruneaudit` (the chain stays verifiable).
SLUICE_AUDIT_RETENTION_DAYS = env.int("SLUICE_AUDIT_RETENTION_DAYS", default=400)
# Alerts (docs/audit.md): Apprise URLs, comma-separated, besides the channels set in the admin.
SLUICE_ALERT_URLS = env("SLUICE_ALERT_URLS", default="")
# A failing channel is tried this many times, pausing SLUICE_ALERT_BACKOFF_SECONDS, then twice that, ...
SLUICE_ALERT_ATTEMPTS = env.int("SLUICE_ALERT_ATTEMPTS", default=3)
SLUICE_ALERT_BACKOFF_SECONDS = env.float("SLUICE_ALERT_BACKOFF_SECONDS", default=2.0)
# How often the alert worker reads this process's dropped-row counter, and how often it checks expiries.
SLUICE_ALERT_CHECK_SECONDS = env.float("SLUICE_ALERT_CHECK_SECONDS", default=30.0)
SLUICE_ALERT_EXPIRY_CHECK_SECONDS = env.float("SLUICE_ALERT_EXPIRY_CHECK_SECONDS", default=3600.0)

# Sign-in with the organisation's identity provider (OpenID Connect, identity/oidc.py). Unset issuer,
# client id or secret: no single sign-on, password sign-in only.
SLUICE_OIDC_ISSUER = env("SLUICE_OIDC_ISSUER", default="")
SLUICE_OIDC_CLIENT_ID = env("SLUICE_OIDC_CLIENT_ID", default="")
SLUICE_OIDC_CLIENT_SECRET = env("SLUICE_OIDC_CLIENT_SECRET", default="")
SLUICE_OIDC_SCOPES = env("SLUICE_OIDC_SCOPES", default="openid email profile groups")
SLUICE_OIDC_GROUPS_CLAIM = env("SLUICE_OIDC_GROUPS_CLAIM", default="groups")
# The button's label: "Sign in with <name>".
SLUICE_OIDC_NAME = env("SLUICE_OIDC_NAME", default="")
# client_secret_basic (the OpenID Connect default) or client_secret_post.
SLUICE_OIDC_TOKEN_AUTH_METHOD = env("SLUICE_OIDC_TOKEN_AUTH_METHOD", default="client_secret_basic")
# Members of these groups become superusers; of the staff groups, staff with the permissions of the
# Django group named by SLUICE_OIDC_STAFF_PERMISSION_GROUP (made empty if missing; the operator gives it
# permissions in the admin).
SLUICE_OIDC_ADMIN_GROUPS = env.list("SLUICE_OIDC_ADMIN_GROUPS", default=[])
SLUICE_OIDC_STAFF_GROUPS = env.list("SLUICE_OIDC_STAFF_GROUPS", default=[])
SLUICE_OIDC_STAFF_PERMISSION_GROUP = env("SLUICE_OIDC_STAFF_PERMISSION_GROUP", default="Sluice staff")
# Seconds to wait for the identity provider (discovery, keys, token endpoint).
SLUICE_OIDC_TIMEOUT = env.float("SLUICE_OIDC_TIMEOUT", default=10.0)
# "off" refuses password sign-in (single sign-on only); `manage.py breakglass USER` lets one superuser
# sign in with a password for an hour when the identity provider is down (docs/identity.md).
SLUICE_PASSWORD_LOGIN = env.bool("SLUICE_PASSWORD_LOGIN", default=True)
# SCIM 2.0 provisioning at /scim/v2/ asks for "Authorization: Bearer <token>"; unset: no SCIM.
SLUICE_SCIM_TOKEN = env("SLUICE_SCIM_TOKEN", default="")

# Password sign-in throttling (django-axes): after SLUICE_LOGIN_FAILURE_LIMIT failures for one account,
# or from one client address, sign-in is refused for SLUICE_LOGIN_COOLOFF_MINUTES.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "identity.passwords.PasswordBackend"]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env.int("SLUICE_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("SLUICE_LOGIN_COOLOFF_MINUTES", default=15.0) / 60
AXES_LOCKOUT_PARAMETERS = [["username"], ["ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "identity.passwords.locked_out"
# uvicorn already puts the client's address (X-Forwarded-For from FORWARDED_ALLOW_IPS) in REMOTE_ADDR.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]
AXES_VERBOSE = False
# Every failed password sign-in is kept (the admin's Axes → Access failures) for the audit log.
AXES_ENABLE_ACCESS_FAILURE_LOG = True
