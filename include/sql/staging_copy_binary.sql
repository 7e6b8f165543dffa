COPY {staging} ({columns}) FROM STDIN (FORMAT BINARY)
