# Image for every Airflow service in docker-compose.yaml (tagged authmigrate-airflow:3.3.2).
# The tag must match the apache-airflow version pinned in requirements.txt
# (tests/unit/test_compose.py checks it). DAGs, plugins and include/ are mounted, not copied.
FROM apache/airflow:3.3.2-python3.11

USER airflow
# Arrow's jemalloc pool hands freed memory back; the default (mimalloc) keeps it (plugins/authmigrate/memory.py).
ENV ARROW_DEFAULT_MEMORY_POOL=jemalloc
COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt
