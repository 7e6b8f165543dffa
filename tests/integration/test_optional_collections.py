"""The app's optional collections against a real nx-27017 source: one the source lacks is a line
in the report, not a failure; one stored under its Mongoose name is found there; a name the
operator typed must exist."""
from __future__ import annotations

import pytest

from tests.data import documents

pytestmark = pytest.mark.integration


def test_an_absent_optional_collection_is_reported_and_a_typed_name_must_exist(migration, monkeypatch, tmp_path):
    from authmigrate.config import ConfigError, RunConfig
    from authmigrate.export import combine, export_chunk, plan_chunks
    from authmigrate.transform_task import transform_collection
    from authmigrate.validate import Check, reconcile, render_report

    monkeypatch.setenv("AUTHMIGRATE_STAGING_DIR", str(tmp_path))
    docs = documents()
    settings = docs.pop("appSettings")
    del docs["invitations"]
    migration.seed({**docs, "appsettings": settings})  # the Mongoose name; no invitations at all
    cfg = RunConfig.from_params({"target_schema": migration.schema}, "optional-1")

    (chunk,) = plan_chunks(cfg, "invitations")
    assert chunk == {"collection": "invitations", "kind": "absent", "index": 0}
    exported = combine([export_chunk(cfg, chunk)])
    assert exported["absent"] and exported["documents"] == 0 and exported["source"] == "invitations"
    transformed = transform_collection(cfg, "invitations", exported, {"users": None})
    assert transformed["absent"] and transformed["tables"] == {}
    result = {"export": exported, "transform": transformed, "load": {"absent": True, "changes": {}}}
    (check,) = reconcile({"invitations": result}, {}, [])
    assert check.ok and "the source has no collection 'invitations' (optional)" in check.detail
    report = render_report(cfg, {"invitations": result}, [Check("x", True, "")], None, [])
    assert "| invitations | absent from the source (`invitations`): not migrated" in report

    (chunk,) = plan_chunks(cfg, "appSettings")
    assert chunk["kind"] == "all"
    assert export_chunk(cfg, chunk)["documents"] == len(settings)  # read from `appsettings`

    typed = RunConfig.from_params({"target_schema": migration.schema, "source_invitations": "invites"}, "optional-2")
    with pytest.raises(ConfigError, match=r"collection 'invites' not found .* set the source_invitations param"):
        plan_chunks(typed, "invitations")
    with pytest.raises(ConfigError, match="collection 'users' not found"):  # a required one is never optional
        migration.db.users.drop()
        plan_chunks(cfg, "users")
