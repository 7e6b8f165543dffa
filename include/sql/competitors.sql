-- existing target rows a batch row must not collide with (incremental runs)
SELECT {columns} FROM {table}
