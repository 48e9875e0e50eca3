"""`becomingone report`: one PNG of coherence and collapse events from the archive (SPEC section 6).

:mod:`flows.report.summary` reads the archive (the rows to draw, the
per-sensor summary); :mod:`flows.report.figure` draws them with matplotlib.
"""

from flows.report.figure import MAX_PANELS, ReportResult, write_report
from flows.report.summary import SummaryRow, summary_rows

__all__ = ["MAX_PANELS", "ReportResult", "SummaryRow", "summary_rows", "write_report"]
