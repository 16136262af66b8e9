"""Write a result record folder: config.json, versions.json, metrics.jsonl and a README stub.

The experiment writes its own ``plot.png`` and table; ``write`` stores the raw records (one
JSONL line per metric record, tagged with its method) and a README holding the command, the
table and a verdict placeholder that the person recording the result fills in by hand after
reading the numbers (``README.md`` is only created if absent, so a written verdict survives
re-runs; the generated table always goes to ``table.md``).
"""

from __future__ import annotations

import json
import os
import sys


def write(out: str, cfg, argv, records: dict, extra: dict, table_md: str) -> None:
    from lm import metrics as M
    M.write_provenance(out, cfg, argv)
    with open(os.path.join(out, "metrics.jsonl"), "w") as fh:
        for k, v in extra.items():
            fh.write(json.dumps({"method": k, **v}) + "\n")
        for m, recs in records.items():
            for r in recs:
                fh.write(json.dumps({"method": m, **r}) + "\n")
    with open(os.path.join(out, "table.md"), "w") as fh:
        fh.write(table_md + "\n")
    readme = os.path.join(out, "README.md")
    if not os.path.exists(readme):
        cmd = "python -m " + os.path.basename(sys.argv[0]).removesuffix(".py") + " " + " ".join(
            argv or [])
        with open(readme, "w") as fh:
            fh.write(f"# {os.path.basename(os.path.abspath(out))}\n\nCommand: `{cmd}`\n\n"
                     f"## Table\n\n{table_md}\n\n![plot](plot.png)\n\n## Verdict\n\nTBD\n")
