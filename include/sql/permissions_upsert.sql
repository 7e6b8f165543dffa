INSERT INTO permissions (id, name, description) VALUES (%(id)s, %(name)s, %(description)s)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description
WHERE (permissions.name, permissions.description) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description)
