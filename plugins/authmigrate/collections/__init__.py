"""Each collection's own logic, if it has any, in a module of its own (named by the declaration's
``module``), behind one signature: ``transform(docs, known, existing, extras) -> transform.Result``.
A collection without a module is transformed by its declaration alone (transform.transform_declared)."""
