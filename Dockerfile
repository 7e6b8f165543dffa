# Image for every Airflow service in docker-compose.yaml (tagged authmigrate-airflow:3.3.2).
# The tag must match the apache-airflow version pinned in requirements.txt
# (tests/unit/test_compose.py checks it). DAGs, plugins and include/ are mounted, not copied.
FROM apache/airflow:3.3.2-python3.11

USER airflow
COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt
