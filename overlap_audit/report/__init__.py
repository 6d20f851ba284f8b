"""The report: report.json (everything, machine-readable), report.md (the Figure-17 table), splits.parquet
and report.html (table, plot and matched-pair galleries); corpus_matches.parquet (the matched corpus items).

``model`` holds the Report value, ``format`` the text of its numbers, ``markdown`` and ``html`` the two
renderings, ``write`` the report directory.
"""

from .format import model_line, recall_line
from .markdown import format_extended_table, format_markdown, format_table, interpretation
from .value import CORPUS_MATCHES, REPORT_JSON, REPORT_MD, SPLITS, DatasetReport, Report, load_report
from .write import check_report_dir, clean_leftovers, report_lock, write_report, write_splits

__all__ = [
    "CORPUS_MATCHES", "REPORT_JSON", "REPORT_MD", "SPLITS", "DatasetReport", "Report", "load_report",
    "model_line", "recall_line",
    "format_table", "format_extended_table", "interpretation", "format_markdown",
    "write_splits", "write_report", "check_report_dir", "clean_leftovers", "report_lock",
]
