COPY {expected} ({columns}) FROM STDIN (FORMAT BINARY)
