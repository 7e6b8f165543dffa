SELECT watermark FROM authmigrate.watermarks WHERE target_schema = %(schema)s AND collection = %(collection)s
