"""The embedded PostgreSQL authenticates every connection with a password."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psycopg
import pytest

from pipeline.private_files import write_private
from pipeline.stack.postgres import EmbeddedPostgres
from pipeline.stack.process import free_port
from tests.test_stack import needs_local_servers

pytestmark = [pytest.mark.integration, needs_local_servers]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _refuses_without_password(pg: EmbeddedPostgres) -> None:
    for host in ("127.0.0.1", str(pg.socket_dir)):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(host=host, port=pg.port, user="postgres", dbname="postgres",
                            connect_timeout=5).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres",
                        password="not-the-password", connect_timeout=5).close()


def test_a_new_server_requires_the_generated_password(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "state", free_port())
    try:
        assert pg.start()
        password = pg.password()
        assert password and len(password) >= 32
        assert _mode(pg.password_file) == 0o600
        assert password in pg.url
        assert not list(pg.password_file.parent.glob(".initdb-password*"))
        hba = (pg.data_dir / "pg_hba.conf").read_text()
        assert "trust" not in [f for line in hba.splitlines()
                               for f in line.split("#", 1)[0].split()]
        _refuses_without_password(pg)
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        # A stop and a start (as the outage tests do) keep the password.
        assert pg.stop()
        assert pg.start()
        assert pg.password() == password
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pg.stop("immediate")


def test_a_data_directory_made_with_trust_is_switched_to_a_password(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "state", free_port())
    try:
        assert pg.start()
        with psycopg.connect(pg.url) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('from the trust days')")
        assert pg.stop()
        # What an older fxstream left: pg_hba.conf with trust, no password file.
        (pg.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n")
        old_password = pg.password()
        pg.password_file.unlink()

        assert pg.start()
        assert pg.password() not in (None, old_password)
        assert _mode(pg.password_file) == 0o600
        hba = (pg.data_dir / "pg_hba.conf").read_text()
        assert "trust" not in [f for line in hba.splitlines()
                               for f in line.split("#", 1)[0].split()]
        _refuses_without_password(pg)
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("from the trust days",)]
        log = pg.log_file.read_text()
        assert pg.password() not in log and old_password not in log
    finally:
        pg.stop("immediate")


def test_private_files_are_0600_from_the_start_and_replace_wider_ones(tmp_path: Path) -> None:
    path = tmp_path / "connection.env"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    old_umask = os.umask(0)
    try:
        write_private(path, "DATABASE_URL=postgresql://u:pw@h/db\n")
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert path.read_text() == "DATABASE_URL=postgresql://u:pw@h/db\n"
    assert [p.name for p in tmp_path.iterdir()] == ["connection.env"]
