"""The results ledger: one outcome row per input change per run, in SQLite; its summaries and reports.

::

    async with SqliteLedger(path) as ledger:
        run_id = await ledger.start_run(config_file=..., streams=[...])
        await LedgerWriter(ledger, run_id, on_flush=...).run(receive)   # the one writer task
        summary = await ledger.finish_run(run_id, state="completed", read={...})
"""

from syncengine.ledger.report import OUTCOME_COLUMNS, render_runs, render_summary, write_report
from syncengine.ledger.schema import SCHEMA_VERSION
from syncengine.ledger.sqlite import SqliteLedger, open_ledger
from syncengine.ledger.values import ErrorCount, OutcomeRow, RunState, RunSummary, SeqSet, StreamCounts
from syncengine.ledger.watermark import Watermark
from syncengine.ledger.writer import LedgerWriter, send_all

__all__ = [
    "OUTCOME_COLUMNS",
    "SCHEMA_VERSION",
    "ErrorCount",
    "LedgerWriter",
    "OutcomeRow",
    "RunState",
    "RunSummary",
    "SeqSet",
    "SqliteLedger",
    "StreamCounts",
    "Watermark",
    "open_ledger",
    "render_runs",
    "render_summary",
    "write_report",
    "send_all",
]
