"""Everything that reads items, streamed as RawItems; nothing is decoded here.

Modules, each importing only those listed before it: ``remote`` (URLs and ``pipe:`` streams), ``layouts``
(the hub / CLIP_benchmark / CIFAR evaluation-set layouts), ``folder``, ``parquet`` and ``webdataset`` (the
three readers), ``spec`` (source specs opened as a ``Source``), ``fetch`` (reading items back by id);
``memory`` (in-memory sets) stands apart.
"""

from .fetch import fetch_items
from .folder import printable_id
from .parquet import PARQUET_ID_COLUMNS
from .spec import (SOURCE_KINDS, Source, as_source, open_source, parse_eval_spec, readback_problem, source_location,
                   source_spec)

__all__ = ["PARQUET_ID_COLUMNS", "SOURCE_KINDS", "Source", "as_source", "fetch_items", "open_source",
           "parse_eval_spec", "printable_id", "readback_problem", "source_location", "source_spec"]
