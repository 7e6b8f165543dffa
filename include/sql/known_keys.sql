SELECT {key} FROM {table}
