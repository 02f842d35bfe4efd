"""A real PostgreSQL 15 server from the machine's Debian packages.

initdb into a project-local data directory, its own port and socket directory,
started and stopped with pg_ctl. PostgreSQL refuses to run as root, so as root
the server runs as the ``postgres`` system user (created if missing).

Every connection, local socket or TCP, authenticates with scram-sha-256. The password
is generated at initdb (``secrets.token_urlsafe``) and kept in
``<state dir>/postgres/password`` (mode 0600), which outlives ``stack down``; the
connection file carries it in DATABASE_URL while the stack is up. A data directory
made by an older fxstream with ``trust`` authentication is switched over at its next
start: a password is generated, set for the ``postgres`` role (as a SCRAM verifier
computed here, so the password itself never reaches the server's log), and pg_hba.conf
rewritten to scram-sha-256.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.private_files import write_private
from pipeline.stack.process import StackError, ensure_port_free, log_tail, wait_until

PG_BIN = Path(os.environ.get("FXSTREAM_PG_BIN", "/usr/lib/postgresql/15/bin"))
DB_NAME = "fxstream"
SERVER_USER = "postgres"
DB_USER = "postgres"
AUTH_METHOD = "scram-sha-256"
HBA_LINES = (
    f"local   all             all                                     {AUTH_METHOD}",
    f"host    all             all             127.0.0.1/32            {AUTH_METHOD}",
    f"host    all             all             ::1/128                 {AUTH_METHOD}",
    f"local   replication     all                                     {AUTH_METHOD}",
    f"host    replication     all             127.0.0.1/32            {AUTH_METHOD}",
    f"host    replication     all             ::1/128                 {AUTH_METHOD}",
)


@dataclass(frozen=True)
class EmbeddedPostgres:
    state_dir: Path
    port: int

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "postgres" / "data"

    @property
    def socket_dir(self) -> Path:
        return self.state_dir / "postgres" / "run"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "postgres" / "password"

    def password(self) -> str | None:
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def url(self) -> str:
        """The libpq URL, with the password once there is one (token_urlsafe: nothing
        to percent-encode)."""
        password = self.password()
        auth = f"{DB_USER}:{password}" if password else DB_USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{DB_NAME}"

    def _as_server_user(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            args = ["runuser", "-u", SERVER_USER, "--", *args]
        return subprocess.run(args, capture_output=True, text=True)

    def _bin(self, name: str) -> str:
        path = PG_BIN / name
        if not path.exists():
            raise StackError(
                f"{path} not found: PostgreSQL 15 is not installed; run scripts/setup.sh "
                "(it installs Debian's postgresql-15) or set FXSTREAM_PG_BIN"
            )
        return str(path)

    def _ensure_server_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)

    def _make_reachable(self) -> None:
        """The server user must be able to walk down to its data directory.

        Directories that deny others even the search bit (a 0700 home or pytest's
        temporary root) get o+x: search only, no listing.
        """
        if os.geteuid() != 0:
            return
        for parent in reversed(self.state_dir.resolve().parents):
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
                logging.getLogger(__name__).info(
                    "granted o+x on %s so that the postgres user can reach its data", parent)
        mode = self.state_dir.stat().st_mode
        os.chmod(self.state_dir, mode | 0o001)

    def _own(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            for path in paths:
                shutil.chown(path, entry.pw_uid, entry.pw_gid)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def running(self) -> bool:
        if not self.initialized():
            return False
        result = self._as_server_user([self._bin("pg_ctl"), "-D", str(self.data_dir), "status"])
        return result.returncode == 0

    def start(self, timeout_s: float = 60.0) -> bool:
        """Initialize (once) and start; returns False when it was already running."""
        if self.running():
            self._ensure_password_auth()
            return False
        ensure_port_free(self.port, "PostgreSQL", "FXSTREAM_POSTGRES_PORT")
        self._ensure_server_user()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._make_reachable()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        self._own(self.socket_dir.parent, self.socket_dir, self.log_file)
        os.chmod(self.log_file.parent, self.log_file.parent.stat().st_mode | 0o001)
        if not self.initialized():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._own(self.data_dir)
            os.chmod(self.data_dir, 0o700)
            self._initdb()
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c synchronous_commit=on -c max_connections=100 "
            "-c shared_buffers=256MB"
        )
        result = self._as_server_user([
            self._bin("pg_ctl"), "-D", str(self.data_dir), "-o", options, "-l",
            str(self.log_file), "-w", "-t", str(int(timeout_s)), "start",
        ])
        if result.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start: {result.stdout}{result.stderr}{log_tail(self.log_file)}"
            )
        wait_until(self._accepts_sql, timeout_s, "PostgreSQL", log_file=self.log_file)
        self._ensure_password_auth()
        self._create_database()
        return True

    def _initdb(self) -> None:
        """initdb with scram-sha-256 and a generated password for the postgres role.

        initdb reads the password from a file (--pwfile) that only the server user can
        read and that is removed right after."""
        password = secrets.token_urlsafe(24)
        write_private(self.password_file, password + "\n")
        pwfile = self.password_file.with_name(".initdb-password")
        write_private(pwfile, password + "\n")
        try:
            self._own(pwfile)
            init = self._as_server_user([
                self._bin("initdb"), "-D", str(self.data_dir), f"--auth={AUTH_METHOD}",
                f"--pwfile={pwfile}", "-U", DB_USER, "-E", "UTF8", "--locale=C.UTF-8",
            ])
        finally:
            pwfile.unlink(missing_ok=True)
        if init.returncode != 0:
            raise StackError(f"initdb failed: {init.stdout}{init.stderr}")

    def _hba_file(self) -> Path:
        return self.data_dir / "pg_hba.conf"

    def _hba_trusts(self) -> bool:
        """Whether pg_hba.conf lets anyone in without a password (an older fxstream's)."""
        for line in self._hba_file().read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if fields and "trust" in fields[3:]:
                return True
        return False

    def _ensure_password_auth(self) -> None:
        """Switch a data directory created with trust to scram-sha-256 (see the module
        docstring); nothing to do for one created with a password."""
        if not self._hba_trusts():
            if self.password() is None:
                raise StackError(
                    f"PostgreSQL in {self.data_dir} requires a password and "
                    f"{self.password_file} is missing: restore that file, or remove "
                    f"{self.data_dir.parent} to start over with an empty database")
            return
        from psycopg import sql

        password = self.password()
        if password is None:
            password = secrets.token_urlsafe(24)
            write_private(self.password_file, password + "\n")
        with self._connect("postgres") as conn:  # still trust: the password is not checked
            verifier = conn.pgconn.encrypt_password(password.encode(), DB_USER.encode(),
                                                    AUTH_METHOD.encode()).decode()
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(DB_USER), sql.Literal(verifier)))
            # Rewritten in place: the file keeps the server user as its owner.
            self._hba_file().write_text(
                "# written by fxstream: every connection authenticates with a password\n"
                + "\n".join(HBA_LINES) + "\n")
            conn.execute("SELECT pg_reload_conf()")
        logging.getLogger(__name__).warning(
            "PostgreSQL in %s accepted every local connection without a password (trust); "
            "it now requires %s, with the generated password kept in %s",
            self.data_dir, AUTH_METHOD, self.password_file)

    def _connect(self, dbname: str = DB_NAME):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=DB_USER, dbname=dbname,
                               password=self.password() or "", connect_timeout=3,
                               autocommit=True)

    def _accepts_sql(self) -> bool:
        try:
            with self._connect("postgres") as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    def _create_database(self) -> None:
        with self._connect("postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (DB_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    def stop(self, mode: str = "fast") -> bool:
        if not self.running():
            return False
        result = self._as_server_user([
            self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop",
        ])
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not stop: {result.stdout}{result.stderr}")
        return True
