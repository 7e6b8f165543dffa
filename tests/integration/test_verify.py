"""Field-level verification catches content errors that counts cannot see."""
from __future__ import annotations

import pytest

from tests.data import documents

pytestmark = pytest.mark.integration


def test_a_load_path_that_shifts_a_timestamp_fails_the_run_naming_id_and_field(migration):
    migration.seed(documents())
    migration.run()
    # a "bug" between staging and target: a trigger that shifts created_at by an hour and
    # truncates last_name for one user, as a wrong timezone or a too-short column would
    migration.execute(f"""
        CREATE FUNCTION "{migration.schema}".tamper() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = '000000000001' THEN
                NEW.created_at := NEW.created_at + interval '1 hour';
                NEW.last_name := left(NEW.last_name, 3);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER tamper BEFORE INSERT OR UPDATE ON "{migration.schema}".users
        FOR EACH ROW EXECUTE FUNCTION "{migration.schema}".tamper();""")
    alice = migration.db.users.find_one({"userId": "000000000001"})
    alice["lastName"] = "Longername"
    migration.db.users.replace_one({"_id": alice["_id"]}, alice)

    dr = migration.run(expect="failed")
    assert migration.last_states["validate"] == "failed"
    report = migration.sql("SELECT report FROM authmigrate.runs WHERE run_id = %s", (dr.run_id,))[0][0]
    line = next(l for l in report.splitlines() if "content users" in l)
    assert "[FAILED]" in line and "000000000001: last_name, created_at" in line, line
    assert "[ok] content oauth_client_apps" in report
    # found by the users load itself, right after its commit; the final validate failed the run on it
    assert "| users.verify |" in report and "| oauthClientApps.verify |" in report
    # counts alone were fine: this is what the content check adds
    assert "[ok] reconcile users documents" in report


def test_verify_table_names_swapped_columns_and_extra_rows(migration, tmp_path):
    import pandas as pd
    import psycopg

    from authmigrate.staging import write_frame
    from authmigrate.transform import documents_frame, transform_users
    from authmigrate.registry import COLLECTIONS
    from authmigrate.verify import verify_table

    migration.seed(documents())
    migration.run()
    frame = transform_users(documents_frame(documents()["users"], COLLECTIONS["users"].projection)).tables
    with psycopg.connect(migration.pg_uri) as conn:
        conn.execute(f'SET search_path TO "{migration.schema}"')
        assert verify_table(conn, "users", frame["users"])[0]
        assert verify_table(conn, "user_roles", frame["user_roles"])[0]
        conn.execute("UPDATE users SET first_name = last_name, last_name = first_name WHERE id = '000000000002'")
        conn.execute("DELETE FROM user_roles WHERE user_id = '000000000004'")
        ok, detail = verify_table(conn, "users", frame["users"])
        assert not ok and "000000000002: first_name, last_name" in detail
        ok, detail = verify_table(conn, "user_roles", frame["user_roles"])
        assert not ok and "000000000004" in detail
        # the same from the transform's files (what the validate task passes): compared in PostgreSQL
        for name in ("users", "user_roles"):
            ok, detail = verify_table(conn, name, str(write_frame(frame[name], tmp_path / f"{name}.parquet")))
            assert not ok and ("000000000002: first_name, last_name" if name == "users" else "000000000004") in detail
        conn.rollback()
        conn.execute(f'SET search_path TO "{migration.schema}"')
        for name in ("users", "user_roles"):  # untouched again: the files match
            ok, detail = verify_table(conn, name, str(tmp_path / f"{name}.parquet"))
            assert ok, detail
        # one of alice's two roles gone: she still has join rows, but not the exported set
        conn.execute("DELETE FROM user_roles WHERE user_id = '000000000001' AND role_id = "
                     "(SELECT min(role_id) FROM user_roles WHERE user_id = '000000000001')")
        assert conn.execute("SELECT count(*) FROM user_roles WHERE user_id = '000000000001'").fetchone()[0] >= 1
        conn.execute("INSERT INTO users (id, mongo_id, username, email) VALUES ('999', 'x', 'x', 'x@example.com')")
        ok, detail = verify_table(conn, "user_roles", str(tmp_path / "user_roles.parquet"))
        assert not ok and "000000000001" in detail, detail
        ok, detail = verify_table(conn, "users", str(tmp_path / "users.parquet"))
        assert not ok and "999: in users but not in the export" in detail, detail
        assert verify_table(conn, "users", str(tmp_path / "users.parquet"), full=False)[0]  # not a full export
        # a loaded pair the export does not have, of a parent the file does not hold: a mismatch of a
        # full export, outside the scope of a partial one (which still sees alice's missing pair)
        conn.execute("INSERT INTO user_roles (user_id, role_id) VALUES ('999', (SELECT min(role_id) FROM user_roles))")
        ok, detail = verify_table(conn, "user_roles", str(tmp_path / "user_roles.parquet"))
        assert not ok and "000000000001" in detail and "999" in detail, detail
        ok, detail = verify_table(conn, "user_roles", str(tmp_path / "user_roles.parquet"), full=False)
        assert not ok and "000000000001" in detail and "999" not in detail, detail
        conn.rollback()
        conn.execute(f'SET search_path TO "{migration.schema}"')
        # a pair exported twice but loaded once: the sets differ
        pairs = frame["user_roles"]
        twice = write_frame(pd.concat([pairs, pairs[pairs["user_id"] == "000000000003"].iloc[:1]]),
                            tmp_path / "user_roles_twice.parquet")
        ok, detail = verify_table(conn, "user_roles", str(twice))
        assert not ok and "000000000003" in detail, detail
        conn.rollback()


def test_orphans_past_a_validated_constraint_are_counted(migration):
    """A foreign key that is present and validated does not prove the rows: a session with
    session_replication_role = replica (a replication tool's, or a hand fix's) skips its
    triggers. validate's orphan counts find them; the catalog check alone would pass."""
    import psycopg

    from authmigrate.validate import catalog_checks, orphan_checks

    migration.seed(documents())
    migration.run()
    with psycopg.connect(migration.pg_uri, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(f'INSERT INTO "{migration.schema}".user_roles (user_id, role_id) '
                     f'SELECT %s, min(id) FROM "{migration.schema}".roles', ("no-such-user",))
        conn.execute("RESET session_replication_role")
        conn.execute(f'SET search_path TO "{migration.schema}"')
        checks = {c.name: c for c in orphan_checks(conn)}
        assert all(c.ok for c in catalog_checks(conn, migration.schema))
    bad = checks.pop("orphans user_roles.user_id → users.id")
    assert not bad.ok and bad.detail == "1 orphan rows", bad
    assert checks and all(c.ok for c in checks.values()), [c.line() for c in checks.values() if not c.ok]


def test_the_verify_task_uses_the_checksums_the_load_saved_of_those_very_files(migration, tmp_path, monkeypatch):
    """The load task hashes the transform files while PostgreSQL works (save_file_checksums);
    verify_table then sums only the loaded side. A file written again after it was hashed is
    hashed anew; a mismatch still names the rows."""
    import os
    import stat

    import psycopg

    from authmigrate import verify
    from authmigrate.registry import COLLECTIONS
    from authmigrate.staging import write_frame
    from authmigrate.transform import documents_frame, transform_users

    migration.seed(documents())
    migration.run()
    frame = transform_users(documents_frame(documents()["users"], COLLECTIONS["users"].projection)).tables
    paths = {name: str(write_frame(frame[name], tmp_path / f"{name}.parquet")) for name in ("users", "user_roles")}
    verify.save_file_checksums(paths)
    for path in paths.values():
        assert stat.S_IMODE(os.stat(f"{path}.checksum.json").st_mode) == 0o600

    def no_hashing(*_):
        raise AssertionError("hashed the file again")

    monkeypatch.setattr(verify, "file_checksum", no_hashing)
    with psycopg.connect(migration.pg_uri) as conn:
        conn.execute(f'SET search_path TO "{migration.schema}"')
        for name, path in paths.items():
            ok, detail = verify.verify_table(conn, name, path)
            assert ok and "checksummed" in detail, detail
        conn.execute("UPDATE users SET last_name = 'changed' WHERE id = '000000000002'")
        ok, detail = verify.verify_table(conn, "users", paths["users"])
        assert not ok and "000000000002: last_name" in detail, detail
        conn.rollback()
        conn.execute(f'SET search_path TO "{migration.schema}"')
        write_frame(frame["users"].iloc[1:], tmp_path / "users.parquet")  # the transform ran again
        with pytest.raises(AssertionError, match="hashed the file again"):
            verify.verify_table(conn, "users", paths["users"])
