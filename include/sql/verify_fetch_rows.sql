SELECT {columns} FROM {target} WHERE {key} = ANY (%(keys)s)
