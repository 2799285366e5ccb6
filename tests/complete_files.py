"""A check for kill tests: every file under a final name is whole (issue 14 item 4)."""
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq


def assert_complete(out):
    """Every file under a final name reads to its end: each tar member by member, each parquet,
    npy and json whole. Temp names (and what lies in a temp folder) are a writer's work in progress,
    which the rerun removes."""
    checked = 0
    for dirpath, _dirs, names in os.walk(out):
        if ".tmp-" in dirpath:
            continue
        for name in (n for n in names if ".tmp-" not in n):
            path = os.path.join(dirpath, name)
            if name.endswith(".tar"):
                with tarfile.open(path) as tar:
                    for member in tar:
                        if member.isfile():
                            assert len(tar.extractfile(member).read()) == member.size, path
            elif name.endswith(".parquet"):
                pq.read_table(path)
            elif name.endswith(".npy"):
                np.load(path)
            elif name.endswith(".json"):
                with open(path, "rb") as f:
                    json.loads(f.read())
            else:
                continue
            checked += 1
    return checked
