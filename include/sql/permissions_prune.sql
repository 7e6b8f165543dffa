DELETE FROM permissions WHERE NOT (id = ANY (%(ids)s))
