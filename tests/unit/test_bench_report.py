"""The benchmark's bookkeeping (tools/bench.py): task spans from `airflow dags test`'s log, the
peak memory per task, and the targets, including peak growth against a smaller N."""
from __future__ import annotations

import datetime as dt
import json

from tools import bench

T0 = dt.datetime(2026, 11, 25, 3, 0, 0, tzinfo=dt.timezone.utc)


def _metadata_db(path, rows) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE task_instance (task_id TEXT, map_index INT, run_id TEXT, start_date TEXT, "
                     "end_date TEXT)")
        for task, index, run, a, b in rows:  # Airflow's SQLite stores naive UTC
            stamp = [None if x is None else (T0 + dt.timedelta(seconds=x)).strftime("%Y-%m-%d %H:%M:%S.%f")
                     for x in (a, b)]
            conn.execute("INSERT INTO task_instance VALUES (?, ?, ?, ?, ?)", (task, index, run, *stamp))


def test_spans_of_tasks_side_by_side_and_the_peak_rss_of_each_task(tmp_path):
    log = tmp_path / "ours.log"
    log.write_text("2026-11-25T03:00:21Z [info     ] DagRun Finished: dag_id=mongo_to_postgres, logical_date=x, "
                   "run_id=manual__2, run_start_date=x, state=success, run_type=manual\n")
    _metadata_db(tmp_path / "airflow.db", [
        ("users.export", 0, "manual__2", 2, 6), ("users.export", 1, "manual__2", 3, 8),  # two chunks overlap
        ("oauthRoles.load", -1, "manual__2", 5, 7),
        ("users.transform", -1, "manual__2", 10, 20),  # 8 → 10: nothing ran
        ("users.load", -1, "manual__2", None, None),  # never ran (skipped)
        ("users.export", -1, "manual__1", 0, 100),  # another run
    ])
    timeline = bench.task_spans(tmp_path / "airflow.db", log, T0.timestamp(), wall=21.0)
    assert timeline["tasks"] == {"users.export": 9.0, "oauthRoles.load": 2.0, "users.transform": 10.0}
    assert timeline["startup"] == 2.0 and timeline["shutdown"] == 1.0 and timeline["between_tasks"] == 2.0
    assert timeline["intervals"]["users.export"] == [[2.0, 6.0], [3.0, 8.0]]
    samples = [(1.0, 900), (5.0, 300), (7.5, 350), (12.0, 700), (19.5, 650), (20.5, 990)]
    # the samples outside every task (start-up 900, shut-down 990) belong to none
    assert bench.task_peaks(timeline, samples) == {"users.export": 350, "oauthRoles.load": 300,
                                                   "users.transform": 700}
    assert bench.task_spans(tmp_path / "missing.db", log, T0.timestamp(), 21.0) == {}


def _systems(peak_mib: int) -> dict:
    ours = {"wall_seconds": 200.0, "task_seconds_total": 190.0, "rows_per_second": 15_000.0,
            "rows_per_second_load_tasks": 40_000.0, "peak_rss_bytes": peak_mib * bench.MIB,
            "validate_share_of_wall": 0.08}
    return {"ours": {"median": ours}, "floor": {"median": {"wall_seconds": 50.0}},
            "dlt": {"median": {"wall_seconds": 210.0}}, "naive": {"median": {"rows_per_second": 50_000.0}}}


def test_targets_with_and_without_a_peak_reference(tmp_path):
    ratios, targets = bench.ratios_and_targets(_systems(700))
    met = {t["target"]: t["met"] for t in targets}
    assert ratios["ours_over_floor_wall"] == 4.0 and met["ours ≤ 1.5× the floor (wall)"] is False
    assert met["peak RSS of any one process of ours ≤ 1 GiB"] is True and met["validation ≤ 10 % of total"] is True
    assert met["peak RSS summed over every process of ours ≤ 2 GiB"] is True
    assert not any("the peak at N" in t for t in met)

    reference = tmp_path / "bench.json"
    earlier = _systems(1500)  # the sum of the processes: not what the target compares
    earlier["ours"]["median"]["peak_process_rss_bytes"] = 500 * bench.MIB
    reference.write_text(json.dumps({"n_users": 100_000, "systems": earlier}))
    ref = bench.peak_reference(str(reference))
    for peak, ok in ((650, True), (660, False)):
        systems = _systems(1800)
        systems["ours"]["median"]["peak_process_rss_bytes"] = peak * bench.MIB
        ratios, targets = bench.ratios_and_targets(systems, ref)
        growth = next(t for t in targets if "its peak at N = 100,000 (500 MiB)" in t["target"])
        assert growth["measured"] == round(peak / 500, 2) and growth["met"] is ok


def test_the_file_source_part_has_its_own_ratio_and_targets():
    systems = _systems(700)
    _, targets = bench.ratios_and_targets(systems)
    assert next(t for t in targets if "from a .bson dump ≤ 2×" in t["target"])["met"] is None  # not measured
    systems["floor_files"] = {"median": {"wall_seconds": 40.0}}
    for wall, ok in ((79.0, True), (81.0, False)):
        systems["ours_files"] = {"median": {"wall_seconds": wall, "peak_rss_bytes": 2100 * bench.MIB,
                                            "peak_process_rss_bytes": 1100 * bench.MIB}}
        ratios, targets = bench.ratios_and_targets(systems)
        met = {t["target"]: t["met"] for t in targets}
        assert ratios["ours_files_over_floor_files_wall"] == round(wall / 40.0, 2)
        assert met["ours from a .bson dump ≤ 2× the file floor (wall)"] is ok
        assert met["peak RSS of any one process of ours from a .bson dump ≤ 1 GiB"] is False
        assert met["peak RSS summed over every process of ours from a .bson dump ≤ 2 GiB"] is False


def test_scale_out_is_the_wall_on_every_core_over_the_wall_on_one_worker():
    systems = _systems(700)
    scale = "scale-out: from the dump, all cores' wall ≤ 0.65× one worker's"
    assert {t["target"]: t["met"] for t in bench.ratios_and_targets(systems)[1]}[scale] is None  # not measured
    systems["ours_files_1w"] = {"median": {"wall_seconds": 100.0}}
    for wall, ok in ((65.0, True), (66.0, False)):
        systems["ours_files"] = {"median": {"wall_seconds": wall, "peak_rss_bytes": 1}}
        ratios, targets = bench.ratios_and_targets(systems)
        assert ratios["ours_files_2w_over_1w_wall"] == wall / 100
        assert {t["target"]: t["met"] for t in targets}[scale] is ok


def test_the_bench_floor_and_dlt_read_every_collection_the_seeder_writes():
    from tools import bench, bench_dlt, seed_mongo

    assert bench.COLLECTIONS == bench_dlt.COLLECTIONS == seed_mongo.COLLECTIONS


def test_a_long_run_s_memory_samples_are_downsampled_keeping_the_peak():
    """A run longer than 1,500 samples (5 min at 0.2 s): to_json's JSON round trip turns the
    (time, rss) pairs into lists; the downsampling keeps the peak and the last sample."""
    samples = [(i * 0.2, 100 + (i == 2_345) * 900) for i in range(4_000)]
    run = {"wall_seconds": 800.0, "memory_samples": samples}
    out = bench.to_json({"systems": {"ours": {"runs": [run], "median": run}}})
    kept = out["systems"]["ours"]["runs"][0]["memory_samples"]
    assert len(kept) <= 1_502 and (2_345 * 0.2, 1000) in kept and kept[-1] == samples[-1]
