-- only on a table found empty under the load's lock: lets COPY ... FREEZE write its rows frozen
TRUNCATE {target}
