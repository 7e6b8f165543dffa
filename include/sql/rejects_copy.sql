COPY authmigrate.rejects (run_id, collection, source_id, scope, element, reason_code, reason, document) FROM STDIN
