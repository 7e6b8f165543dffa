INSERT INTO roles (id, name) VALUES (%(id)s, %(id)s) ON CONFLICT (id) DO NOTHING
