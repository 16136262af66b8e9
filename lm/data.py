"""Data: local text/JSONL/parquet -> tfds array_record token records -> grain packed batches."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataCfg:
    source: str = "kjv"  # "kjv" (embedded corpus) | "files" | "synthetic"
    paths: tuple[str, ...] = ()  # local .txt / .jsonl / .parquet files or globs (source="files")
    text_field: str = "text"  # JSONL / parquet column holding the text
    data_dir: str = "data_cache"  # where prepared tfds datasets live
    eval_fraction: float = 0.02  # held-out split (by document) when the files have no split
    shuffle: bool = True
    seed: int = 0
    worker_count: int = 0  # grain worker processes (0 = in-process)
