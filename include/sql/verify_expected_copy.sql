COPY {expected} (key, hash) FROM STDIN
