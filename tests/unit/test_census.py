"""The source census: every field path of every document, its BSON types, and its mark."""
from __future__ import annotations

import datetime as dt
from unittest import mock

from bson import Int64, ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from authmigrate import census
from authmigrate.census import FieldCensus, classify, collection_census, findings, report_lines

UTC = dt.timezone.utc


def census_of(docs):
    c = FieldCensus()
    c.add(docs[:2])
    c.add(docs[2:])  # batch by batch, as the transform decodes
    return c


def test_every_path_is_counted_with_its_types_in_every_document():
    docs = [
        {"_id": ObjectId(), "userId": "1", "signCount": 3, "providerRoles": ["a", "b"], "__v": 0},
        {"_id": ObjectId(), "userId": "2", "signCount": "12", "providerRoles": [], "prefs": {"theme": "dark"}},
        {"_id": ObjectId(), "userId": 3, "signCount": Int64(5), "providerRoles": ["a", 7],
         "prefs": {"theme": None, "tags": [{"k": 1}]}},
        {"_id": ObjectId(), "userId": "4", "createdAt": dt.datetime(2024, 1, 1, tzinfo=UTC), "signCount": None},
    ]
    paths = census_of(docs).paths()
    assert paths["_id"] == {"documents": 4, "types": {"objectId": 4}}
    assert paths["userId"] == {"documents": 4, "types": {"int": 1, "string": 3}}
    assert paths["signCount"] == {"documents": 4, "types": {"int": 1, "long": 1, "null": 1, "string": 1}}
    assert paths["providerRoles"] == {"documents": 3, "types": {"array": 3}}
    assert paths["providerRoles[]"] == {"documents": 2, "types": {"int": 1, "string": 3}}
    assert paths["prefs"] == {"documents": 2, "types": {"object": 2}}
    assert paths["prefs.theme"] == {"documents": 2, "types": {"null": 1, "string": 1}}
    assert paths["prefs.tags[]"] == {"documents": 1, "types": {"object": 1}}
    assert paths["prefs.tags[].k"] == {"documents": 1, "types": {"int": 1}}
    assert paths["createdAt"] == {"documents": 1, "types": {"date": 1}}
    assert paths["__v"] == {"documents": 1, "types": {"int": 1}}


def test_paths_are_marked_and_type_surprises_found():
    docs = [{"_id": 1, "userId": "1", "signCount": "12", "__v": 0, "legacyFlag": True, "prefs": {"a": 1}},
            {"_id": 2, "userId": "2", "signCount": 4, "signCountX": None}]
    out = classify(census_of(docs).paths(), mapped={"userId", "signCount"}, ignored={"__v"},
                   expects={"signCount": ("int", "long"), "userId": ("string",)})
    marks = {p: e["mark"] for p, e in out["paths"].items()}
    assert marks == {"_id": "mapped", "userId": "mapped", "signCount": "mapped", "__v": "ignored",
                     "legacyFlag": "unmapped", "prefs": "unmapped", "prefs.a": "unmapped", "signCountX": "unmapped"}
    assert out["unmapped_fields"] == {"legacyFlag": 1, "prefs": 1, "signCountX": 1}
    assert out["type_surprises"] == [{"field": "signCount", "expected": ["int", "long"], "seen": {"string": 1}}]


def test_a_collection_census_uses_the_declaration_and_the_rules():
    docs = [{"_id": ObjectId(), "userId": "000000000001", "username": "a", "signCount": "7", "__v": 0,
             "favouriteColour": "red"}]
    c = collection_census(census_of(docs), "users")
    assert c["documents"] == 1
    assert c["unmapped_fields"] == {"favouriteColour": 1}
    assert c["type_surprises"] == [{"field": "signCount", "expected": ["int", "long"], "seen": {"string": 1}}]
    census = {"unmapped_collections": {"userappconsents": 44}, "collections": {"users": c}}
    text = "\n".join(report_lines(census))
    assert "- `userappconsents`: 44 documents" in text
    assert "- unmapped `favouriteColour`: in 1 documents, types string ×1" in text
    assert "- ignored by declaration `__v`: in 1 documents" in text
    assert "- `signCount` expects int/long, seen string ×1" in text
    assert findings(census) == ["collection 'userappconsents' (44 documents) is not mapped",
                                "users.favouriteColour (1 documents) is not mapped"]


def test_values_never_reach_the_census_not_even_as_the_keys_of_a_map():
    secret = "hunter2-secret-value"
    # a sub-document keyed by data (e-mails): once it has more names than a schema would, its keys are `*`
    by_email = {f"user{i}@example.com": {"lastSeen": i} for i in range(40)}
    docs = [{"_id": 1, "password": secret, "extra": secret, "seenBy": by_email, "prefs": {"theme": secret}},
            {"_id": 2, "seenBy": {"other@example.com": {"lastSeen": 1}}}]
    c = collection_census(census_of(docs), "users")
    assert secret not in repr(c) and "@example.com" not in repr(c)
    assert c["paths"]["seenBy.*"] == {"documents": 2, "types": {"object": 41}, "mark": "unmapped"}
    assert c["paths"]["seenBy.*.lastSeen"]["types"] == {"int": 41}
    assert c["paths"]["prefs.theme"]["types"] == {"string": 1}  # a small sub-document keeps its names


def test_more_paths_than_kept_still_lists_every_top_level_field():
    from authmigrate.census import MAX_PATHS

    wide = {"_id": 1, **{f"f{i:04d}": 1 for i in range(MAX_PATHS + 20)},
            "deep": {f"k{i}": [1] for i in range(30)}}
    c = collection_census(census_of([wide]), "users")
    assert len(c["unmapped_fields"]) == MAX_PATHS + 21  # every field, and the sub-document itself
    assert all(f in c["paths"] for f in c["unmapped_fields"])
    assert findings({"collections": {"users": c}})[0] == "users.deep (1 documents) is not mapped"


class _PerDocument(FieldCensus):
    """The census as it was counted before it counted a batch column by column: every document
    walked on its own. The contract of :meth:`FieldCensus.add`."""

    def add(self, docs):
        for doc in docs:
            self._fields.update(zip(doc, map(type, doc.values())))
            seen: set = set()
            for field, value in doc.items():
                if isinstance(value, (dict, list)):
                    self._walk({field: value}, "", 1, seen, count_keys=False)
            self.documents += 1


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "b", ""]),
                     st.floats(allow_nan=False, width=32))
_names = st.sampled_from(["a", "b", "roles", "tags", "profile"])
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_names, inner, max_size=3)),
                       max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(_names, _values, max_size=5), max_size=12), st.integers(0, 12), st.booleans(),
       st.booleans())
def test_a_batch_counts_exactly_what_walking_each_document_counts(docs, cut, wide, given_columns):
    """Column by column (some columns given, as the transform has them), or (more top-level
    fields than ``MAX_COLUMNS``) document by document."""
    fast, walked = FieldCensus(), _PerDocument()
    with mock.patch.object(census, "MAX_COLUMNS", 2 if wide else census.MAX_COLUMNS):
        for part in (docs[:cut], docs[cut:]):
            columns = {f: [d.get(f) for d in part] for f in ("a", "roles")} if given_columns else None
            fast.add(part, columns)
            walked.add(part)
    assert fast.paths() == walked.paths()
    assert fast.documents == walked.documents
