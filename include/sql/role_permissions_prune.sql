-- the mapping file is the truth for role_permissions: pairs it no longer lists are removed
DELETE FROM role_permissions WHERE NOT ((role_id || '/' || permission_id) = ANY (%(pairs)s))
