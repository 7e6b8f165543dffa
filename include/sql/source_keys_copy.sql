COPY {staging} (key) FROM STDIN
