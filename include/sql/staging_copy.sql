-- {options}: empty, or ", FREEZE" (the table was truncated in this transaction)
COPY {staging} ({columns}) FROM STDIN (FORMAT TEXT{options})
