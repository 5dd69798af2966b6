"""Runs the real Codex CLI (`codex exec --json`) against a local Responses endpoint.

The binaries come from `npm ci` at the repository root: package.json pins @openai/codex (the version the
project is tested with) and `codex-latest`, an alias of the newest release when it was last updated, so
both the pinned client and the newest one are driven through the same tests. Each run gets a
fresh CODEX_HOME and HOME, a provider pointing at `base_url`, and no way out to the internet: the
start-up features that call the web are switched off and every proxy variable points at a closed local
port, so a call that slips through fails at once instead of hanging.

`run_codex` blocks; call it through `asyncio.to_thread` when the server it talks to runs on the test's
own event loop.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CODEX_VERSION = "0.169.0"
# Installed package directories (under node_modules) by the name tests use for them.
CODEX_PACKAGES = {"pinned": "@openai/codex", "latest": "codex-latest"}
API_KEY_ENV = "SLUICE_TEST_API_KEY"
PROVIDER_ID = "sluice"
TIMED_OUT = 124

# Nothing listens on the discard port: anything that honours a proxy variable fails fast.
_DEAD_PROXY = "http://127.0.0.1:9"
_LOCAL_HOSTS = "127.0.0.1,localhost,::1"

_NATIVE_TARGETS: dict[tuple[str, str], tuple[str, str]] = {
    ("Linux", "x86_64"): ("codex-linux-x64", "x86_64-unknown-linux-musl"),
    ("Linux", "aarch64"): ("codex-linux-arm64", "aarch64-unknown-linux-musl"),
    ("Darwin", "x86_64"): ("codex-darwin-x64", "x86_64-apple-darwin"),
    ("Darwin", "arm64"): ("codex-darwin-arm64", "aarch64-apple-darwin"),
}

# Overrides given with -c so that extra_config may still declare its own [features] table.
_OFFLINE_OVERRIDES = (
    "features.plugins=false",  # otherwise: git ls-remote github.com/openai/plugins and catalogue calls
    "features.shell_snapshot=false",  # otherwise: a login shell sourcing the host's ~/.bashrc at start-up
    "features.unbounded_connection_retries=false",  # otherwise: retries a refused connection forever
    "check_for_update_on_startup=false",
    "analytics.enabled=false",
)


@dataclass
class CodexResult:
    exit_code: int
    final_message: str | None
    events: list[dict]
    stderr: str
    duration: float = 0.0
    config_toml: str = field(default="", repr=False)

    @property
    def error_messages(self) -> list[str]:
        """Messages of `error` events, failed turns and `error` items (such as the WebSocket fallback)."""
        messages: list[str] = []
        for event in self.events:
            kind = event.get("type")
            if kind == "error":
                messages.append(str(event.get("message", "")))
            elif kind == "turn.failed":
                messages.append(str((event.get("error") or {}).get("message", "")))
            elif kind == "item.completed" and (event.get("item") or {}).get("type") == "error":
                messages.append(str(event["item"].get("message", "")))
        return messages

    def describe(self) -> str:
        """A failure message for assertions: exit code, errors and the tail of stderr."""
        return (
            f"codex exited {self.exit_code} after {self.duration:.1f}s; final={self.final_message!r}; "
            f"errors={self.error_messages}; stderr tail:\n{self.stderr[-2000:]}"
        )


def codex_binary(version: str = "pinned") -> str | None:
    """The native Codex binary of ``version`` ("pinned" or "latest") installed under <repo>/node_modules,
    or None when `npm ci` has not run."""
    installed = REPO_ROOT / "node_modules" / CODEX_PACKAGES[version]
    target = _NATIVE_TARGETS.get((platform.system(), platform.machine()))
    if target is not None:
        package, triple = target
        # npm puts the pinned release's native package at the top and the alias's under the alias.
        modules = REPO_ROOT / "node_modules" if version == "pinned" else installed / "node_modules"
        native = modules / "@openai" / package / "vendor" / triple / "bin" / "codex"
        if native.is_file() and os.access(native, os.X_OK):
            return str(native)
    # The Node launcher finds the native binary on platforms the table does not list.
    launcher = installed / "bin" / "codex.js"
    return str(launcher) if launcher.exists() else None


def codex_config(
    base_url: str,
    *,
    websockets: bool,
    model: str = "gpt-5.5",
    extra_config: str = "",
    default_retries: bool = False,
) -> str:
    """config.toml for a provider at base_url; extra_config goes in at the root, before the provider table.
    Retries are cut to one stream retry and no request retry unless ``default_retries``: then Codex
    retries as it does for a developer who configured nothing (what refusals must be shaped for)."""
    retries = [] if default_retries else ["stream_max_retries = 1", "request_max_retries = 0"]
    return "\n".join(
        [
            f"model = {json.dumps(model)}",
            f'model_provider = "{PROVIDER_ID}"',
            extra_config.strip(),
            "",
            f"[model_providers.{PROVIDER_ID}]",
            'name = "Sluice"',
            f"base_url = {json.dumps(base_url.rstrip('/'))}",
            'wire_api = "responses"',
            f'env_key = "{API_KEY_ENV}"',
            f"supports_websockets = {'true' if websockets else 'false'}",
            *retries,
            # A stalled stream becomes a Codex error well inside the run's own timeout.
            "stream_idle_timeout_ms = 15000",
            "",
        ]
    )


def _offline_env(codex_home: Path, home: Path, api_key: str, key_env: str = API_KEY_ENV) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        key_env: api_key,
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[name] = env[name.lower()] = _DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = _LOCAL_HOSTS
    return env


def parse_events(stdout: str) -> list[dict]:
    events: list[dict] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            events.append({"type": "unparsed", "line": line})
    return events


def final_agent_message(events: list[dict]) -> str | None:
    """The last agent message of the last turn that completed; None when no turn completed."""
    last: str | None = None
    for event in events:
        item = event.get("item") or {}
        if event.get("type") == "item.completed" and item.get("type") == "agent_message":
            last = item.get("text")
        elif event.get("type") == "turn.completed":
            return last
    return None


def run_codex(
    base_url: str,
    api_key: str,
    prompt: str,
    *,
    websockets: bool,
    workdir: Path,
    timeout: float = 120,
    extra_config: str = "",
    model: str = "gpt-5.5",
    version: str = "pinned",
    default_retries: bool = False,
    config_toml: str | None = None,
    key_env: str = API_KEY_ENV,
) -> CodexResult:
    """Run one `codex exec` task (read-only sandbox) against base_url (e.g. http://127.0.0.1:8000/v1)
    with the pinned Codex release or the latest one. ``config_toml`` replaces the generated config.toml
    (one a user was given, whose provider reads the key from ``key_env``)."""
    binary = codex_binary(version)
    if binary is None:
        raise RuntimeError("Codex CLI is not installed: run `npm ci` at the repository root")
    with tempfile.TemporaryDirectory(prefix="codex-run-") as scratch:
        codex_home = Path(scratch) / "codex-home"
        home = Path(scratch) / "home"
        codex_home.mkdir()
        home.mkdir()
        config = config_toml or codex_config(
            base_url,
            websockets=websockets,
            model=model,
            extra_config=extra_config,
            default_retries=default_retries,
        )
        (codex_home / "config.toml").write_text(config)
        command = [binary, "exec", "--skip-git-repo-check", "--strict-config", "-s", "read-only", "--json"]
        for override in _OFFLINE_OVERRIDES:
            command += ["-c", override]
        command.append(prompt)
        started = time.monotonic()
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=_offline_env(codex_home, home, api_key, key_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
            exit_code = process.returncode
        except subprocess.TimeoutExpired:
            # The sandboxed tool processes share the session: end them with Codex.
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            stderr += f"\n[codex_cli] killed after {timeout:.0f}s without finishing\n"
            exit_code = TIMED_OUT
        duration = time.monotonic() - started
    events = parse_events(stdout)
    return CodexResult(
        exit_code=exit_code,
        final_message=final_agent_message(events),
        events=events,
        stderr=stderr,
        duration=duration,
        config_toml=config,
    )


class Tui:
    """Codex's interactive TUI in a detached tmux session of its own (a private tmux server), driven by
    keystrokes and read from the screen."""

    def __init__(self, server: str) -> None:
        self.server = server

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=10)
        return done.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J")

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-l", text)
        time.sleep(0.3)
        self.tmux("send-keys", "Enter")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        """The screen once it shows ``text`` (AssertionError with the screen when it does not in time)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the TUI never showed {text!r}; its screen:\n{screen}")
            time.sleep(0.2)

    def ready(self, timeout: float = 30) -> None:
        """Past the start-up screens (a new-model offer, which may come a moment after the composer shows,
        answers "use existing model") to the composer, shown alone for a second and a half."""
        deadline = time.monotonic() + timeout
        calm_since: float | None = None
        while time.monotonic() < deadline:
            screen = self.screen()
            if "Use existing model" in screen:
                calm_since = None
                self.tmux("send-keys", "2")
                time.sleep(0.3)
                self.tmux("send-keys", "Enter")
            elif "Ask Codex to do anything" in screen:
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since > 1.5:
                    return
            time.sleep(0.2)
        raise AssertionError(f"the TUI did not become ready; its screen:\n{self.screen()}")


@contextmanager
def codex_tui(base_url: str, api_key: str, *, workdir: Path, version: str = "pinned") -> Iterator[Tui]:
    """Codex's TUI against base_url over WebSocket, with Codex's own retry settings, in tmux (160x45)."""
    binary = codex_binary(version)
    if binary is None or shutil.which("tmux") is None:
        raise RuntimeError("the TUI needs the Codex CLI (npm ci) and tmux")
    with tempfile.TemporaryDirectory(prefix="codex-tui-") as scratch:
        codex_home, home = Path(scratch) / "codex-home", Path(scratch) / "home"
        codex_home.mkdir()
        home.mkdir()
        # The offer of a newer model is recorded as seen (it would take the first keystrokes otherwise).
        seen = '[notice.model_migrations]\n"gpt-5.5" = "gpt-6-sol"'
        config = codex_config(base_url, websockets=True, default_retries=True, extra_config=seen)
        (codex_home / "config.toml").write_text(config)
        env = _offline_env(codex_home, home, api_key) | {"TERM": "xterm-256color"}
        command = [binary, "-s", "read-only"]
        for override in _OFFLINE_OVERRIDES:
            command += ["-c", override]
        tui = Tui(f"sluice-{os.getpid()}-{Path(scratch).name}")
        exports = [f"{name}={value}" for name, value in env.items()]
        tui.tmux(
            "-f", "/dev/null", "new-session", "-d", "-x", "160", "-y", "45", "-c", str(workdir),
            "env", "-i", *exports, *command,
        )  # fmt: skip
        try:
            tui.ready()
            yield tui
        finally:
            tui.tmux("kill-server")
