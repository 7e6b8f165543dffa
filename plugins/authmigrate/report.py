"""The run report as files: Markdown, an HTML rendering, and a PNG chart (time per task,
rows per table). Written to ``$AUTHMIGRATE_REPORT_DIR/<run id>/`` (default
``$AIRFLOW_HOME/authmigrate-reports``); the validate task's log names the folder."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger("authmigrate")


def report_root() -> Path:
    explicit = os.environ.get("AUTHMIGRATE_REPORT_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "authmigrate-reports"


def run_folder(run_id: str) -> Path:
    folder = report_root() / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def chart(path: Path, timings: dict[str, float], rows: dict[str, int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    names = list(timings)
    left.barh(names, [timings[n] for n in names], color="#4C78A8")
    left.set_xlabel("seconds")
    left.set_title("time per task")
    left.invert_yaxis()
    tables = [t for t in rows if rows[t]]
    right.barh(tables, [rows[t] for t in tables], color="#F58518")
    right.set_xlabel("rows")
    right.set_title("rows per table")
    right.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=96)
    plt.close(fig)


def write(run_id: str, markdown_text: str, timings: dict[str, float], rows: dict[str, int] | None) -> dict[str, str]:
    import markdown

    folder = run_folder(run_id)
    md = folder / "report.md"
    md.write_text(markdown_text + "\n")
    body = markdown.markdown(markdown_text, extensions=["tables"])
    html = folder / "report.html"
    paths = {"markdown": str(md), "html": str(html)}
    img = ""
    if timings or rows:
        png = folder / "chart.png"
        chart(png, timings, rows or {})
        paths["chart"] = str(png)
        img = '<p><img src="chart.png" alt="time per task and rows per table"></p>'
    html.write_text(
        "<!doctype html><meta charset='utf-8'><title>authmigrate run report</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px}code{background:#f4f4f4}</style>"
        f"{body}{img}\n"
    )
    log.info("report files: %s", folder)
    return paths
