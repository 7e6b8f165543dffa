-- roles no user holds and no permission mapping names are removed.
DELETE FROM roles AS r
WHERE NOT EXISTS (SELECT 1 FROM user_roles AS ur WHERE ur.role_id = r.id)
  AND NOT EXISTS (SELECT 1 FROM role_permissions AS rp WHERE rp.role_id = r.id)
