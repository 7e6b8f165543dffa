"""docs/data-contract.md §3 is generated from the declarations: a declaration changed without
regenerating the doc (python -m tools.contract_doc) fails here."""
from __future__ import annotations

from tools import contract_doc


def test_the_data_contract_field_tables_match_the_declarations():
    assert contract_doc.main(["--check"]) == 0, "run: python -m tools.contract_doc"


def test_every_collection_and_every_declared_field_is_in_the_doc():
    from authmigrate.registry import COLLECTIONS

    text = contract_doc.DOC.read_text()
    for spec in COLLECTIONS.values():
        assert f"### `{spec.name}` → " in text
        for f in spec.all_fields:
            if f.source:
                assert f"| `{f.source}` |" in text, (spec.name, f.source)
