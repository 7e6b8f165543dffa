INSERT INTO role_permissions (role_id, permission_id) VALUES (%(role_id)s, %(permission_id)s)
ON CONFLICT DO NOTHING
