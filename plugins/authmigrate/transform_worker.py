"""One worker process of the users transform's first step (:func:`transform_task.accept_part`
over a run of the export's row groups), started by the transform task with its part as JSON;
its result is pickled to the file the part names. Logs to stderr, which the task's log takes."""
from __future__ import annotations

import json
import logging
import pickle
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from authmigrate.memory import tune
    from authmigrate.staging import private_file
    from authmigrate.transform_task import accept_part

    tune()
    spec = json.loads(argv[0])
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
