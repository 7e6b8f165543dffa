SELECT count(*) FROM {table} WHERE {parent_column} = ANY (%(parents)s)
