INSERT INTO authmigrate.watermarks (target_schema, collection, watermark, run_id)
VALUES (%(schema)s, %(collection)s, %(watermark)s, %(run_id)s)
ON CONFLICT (target_schema, collection) DO UPDATE
    SET watermark = GREATEST(authmigrate.watermarks.watermark, EXCLUDED.watermark),
        run_id = EXCLUDED.run_id, advanced_at = now()
