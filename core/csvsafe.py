"""CSV that is safe to open in a spreadsheet: no cell is taken for a formula."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Sheets.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def neutralise(cell: str) -> str:
    """Prefix a formula-looking cell with an apostrophe, as OWASP advises for CSV exports."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([neutralise("" if value is None else str(value)) for value in row])
    return buffer.getvalue()
