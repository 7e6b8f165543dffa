"""One worker process of the users transform's first step (:func:`transform_task.accept_part`),
started with its part as JSON; its result is pickled to the file the part names. Logs to
stderr, which the task's log takes.

- ``SPEC``: started by the transform task over a run of the export's row groups.
- ``--stream SPEC``: started by the users export (:class:`export.AcceptWhileReading`), takes the
  export's batches as they are read, an Arrow IPC stream of raw BSON on its stdin, from the
  export's first document on, until the stream ends."""
from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from pathlib import Path


def _stream_batches(source, minimum: int):
    """The IPC stream's batches, joined into batches of at least ``minimum`` documents (pandas has
    a per-call cost; the export's batches are its MongoDB batches)."""
    import pyarrow as pa

    pending, rows = [], 0
    with pa.ipc.open_stream(source) as reader:
        for batch in reader:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= minimum:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                pending, rows = [], 0
    if rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from authmigrate.memory import tune
    from authmigrate.staging import private_file
    from authmigrate.transform_task import MIN_TRANSFORM_BATCH, accept_batches, accept_part

    tune()
    stream = argv[:1] == ["--stream"]
    spec = json.loads(argv[-1])
    if stream:
        os.nice(10)  # the export's read, which this one keeps pace with, goes first
        batches = _stream_batches(sys.stdin.buffer, max(spec["batch_size"], MIN_TRANSFORM_BATCH))
        part = accept_batches(batches, 0, Path(spec["out"]), None, spec["what"])
    else:
        part = accept_part([tuple(f) for f in spec["files"]], spec["start"], Path(spec["out"]), spec["batch_size"],
                           spec["what"])
    result = Path(spec["result"])
    tmp = result.with_suffix(".partial")
    with private_file(tmp) as fh:
        pickle.dump(part, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
