-- qualified: never another schema's index of the same name through the search_path
DROP INDEX IF EXISTS {schema}.{index}
