"""The papers' published numbers (``configs/paper_numbers.yaml``) and our tables rendered beside them.

Each table of the file holds entries, one per source: the figures checked against that source
(``rows``, printed plain; ``derived`` where they are computed from the source's data, e.g. per-clip
means of per-frame results, and the entry says how) and the figures nobody here could check
(``unverified``, printed with † and their source line under the table). :func:`load_published`
reads and checks one table (every entry names its source, the table number or a URL and the
sentence that states its figures, and its setting); :func:`side_by_side` renders any table of ours,
given as (row, column, value) triples, with the published rows beside ours, and the paper's own
layout under ours wherever it differs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from gpoa.errors import UsageError

PAPER_NUMBERS = Path(__file__).resolve().parents[2] / "configs" / "paper_numbers.yaml"
MARK = "†"
CSV_FIELDS = ("row", "column", "ours", "published", "verified")


@dataclass(frozen=True)
class Published:
    """One published figure: its value (in the unit of its column) and whether it was checked."""

    value: float
    verified: bool

    def text(self) -> str:
        """The figure as published, † if nobody here could check it."""
        return str(self.value) + ("" if self.verified else MARK)


@dataclass
class PublishedTable:
    """One table of ``configs/paper_numbers.yaml``: its columns, its figures and their sources."""

    name: str
    title: str = ""
    layout: str = "same"  # "own": the paper's rows are not ours; its table is printed under ours
    corner: str = "method"  # the title of the paper's row column
    columns: dict = field(default_factory=dict)  # column → title, the paper's order
    rows: list = field(default_factory=list)  # row names, the file's order
    cells: dict = field(default_factory=dict)  # (row, column) → Published
    citations: list = field(default_factory=list)  # one line per entry
    unverified_sources: list = field(default_factory=list)

    def row(self, name: str) -> dict:
        """column → :class:`Published` of row ``name`` (empty if the papers do not have it)."""
        return {column: cell for (row, column), cell in self.cells.items() if row == name}


def load_published(table: str, path: Path = PAPER_NUMBERS) -> PublishedTable:
    """The published numbers of ``table`` (an empty table if the file has none), checked: every entry
    names its source and setting, its checked figures a table number or a URL and the sentence that
    states them (or, ``derived``, the data they are computed from and how), its unverified figures
    who read them; every figure's column is one of the table's."""
    if not path.is_file():
        return PublishedTable(table)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {exc}") from exc
    spec = document.get(table)
    if spec is None:
        return PublishedTable(table)
    where = f"{path}: {table}"
    result = PublishedTable(table, title=str(spec.get("title", table)), layout=str(spec.get("layout", "same")),
                            corner=str(spec.get("corner", "method")),
                            columns={str(k): str(v) for k, v in (spec.get("columns") or {}).items()})
    if result.layout not in ("same", "own"):
        raise UsageError(f"{where}: layout must be 'same' or 'own', not '{result.layout}'")
    for number, entry in enumerate(spec.get("entries") or [], 1):
        here = f"{where}, entry {number}"
        for key in ("source", "setting"):
            if not str(entry.get(key) or "").strip():
                raise UsageError(f"{here} has no {key}")
        citation = " ".join(str(entry["source"]).split())
        if entry.get("rows"):
            if entry.get("table"):
                citation += f", {entry['table']}"
            elif entry.get("url") and entry.get("quote"):
                citation += f" ({entry['url']}): “{' '.join(str(entry['quote']).split())}”"
                if entry.get("derived"):
                    citation += f", computed here: {' '.join(str(entry['derived']).split())}"
            else:
                raise UsageError(f"{here}: checked figures need the table number (table:) or the URL and the "
                                 "sentence that states them (url:, quote:); otherwise enter them under unverified:")
            add_rows(result, entry["rows"], True, here)
        unverified = entry.get("unverified") or {}
        if unverified:
            line = str(unverified.get("source") or "").strip()
            if not line or not unverified.get("rows"):
                raise UsageError(f"{here}: unverified figures need their source line and rows")
            add_rows(result, unverified["rows"], False, here)
            if line not in result.unverified_sources:
                result.unverified_sources.append(line)
            citation += f" ({MARK} {line})"
        if not entry.get("rows") and not unverified:
            raise UsageError(f"{here} has no figures (rows: or unverified:)")
        result.citations.append(f"{citation}; {' '.join(str(entry['setting']).split())}")
    return result


def add_rows(table: PublishedTable, rows: dict, verified: bool, where: str) -> None:
    """``rows`` ({row: {column: value}}) into ``table``; a figure two entries give must agree (the
    checked one is kept)."""
    for row, values in rows.items():
        row = str(row)
        for column, value in (values or {}).items():
            column = str(column)
            if column not in table.columns:
                raise UsageError(f"{where}: row '{row}' has column '{column}', which the table's columns do not list")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UsageError(f"{where}: row '{row}', column '{column}': '{value}' is not a number")
            cell = Published(float(value), verified)
            known = table.cells.get((row, column))
            if known is not None and known.value != cell.value:
                raise UsageError(f"{where}: row '{row}', column '{column}' is {value} here and {known.value} in "
                                 "an earlier entry")
            if known is None or verified and not known.verified:
                table.cells[(row, column)] = cell
        if row not in table.rows:
            table.rows.append(row)


def load_paper_numbers(table: str) -> tuple:
    """(rows {row: {column: value}}, source) of ``table``: every published figure, checked or not (see
    :func:`load_published` for which is which), and its sources in one line."""
    published = load_published(table)
    rows = {row: {column: cell.value for column, cell in published.row(row).items()} for row in published.rows}
    return rows, "; ".join(published.citations) or "none recorded in configs/paper_numbers.yaml"


# ----- rendering ---------------------------------------------------------------------------------------
def number(value: Optional[float], spec: str) -> str:
    return "—" if value is None else format(value, spec)


def side_by_side(published: PublishedTable, ours: Sequence[tuple], rows: Sequence[str], columns: Sequence[tuple],
                 corner: str = "method", formats: Optional[dict] = None) -> tuple:
    """(CSV rows, Markdown) of our table with the published numbers beside it.

    ``ours``: (row, column, value or None) in the column's display unit; ``rows``: our rows in order
    (a row without any value is left out); ``columns``: (column, title) in order; ``formats``:
    column → format spec (default ``.1f``). A published row of the same name follows ours as
    "<row> (paper)"; a published row without a counterpart comes after ours, ours blank. Where the
    paper's layout differs (``layout: own``, or figures in columns ours lacks), its table is printed
    under ours in its own layout. Checked figures are plain, unchecked ones carry † and a line under
    the table."""
    formats = formats or {}
    values = {(row, column): value for row, column, value in ours}
    keys = [column for column, _ in columns]
    beside = published.layout == "same"
    lines = [f"| {corner} | " + " | ".join(title for _, title in columns) + " |", "| --- |" + " ---: |" * len(columns)]
    csv_rows, shown, paired, printed = [], set(), set(), set()

    def published_line(row: str) -> None:
        cells = published.row(row)
        if beside and row not in printed and any(column in cells for column in keys):
            printed.add(row)
            lines.append(f"| {row} (paper) | " + " | ".join(published_cells(published, row, keys)) + " |")
            shown.update((row, c) for c in keys if c in cells)

    for row in rows:
        mine = [values.get((row, column)) for column in keys]
        if all(v is None for v in mine):
            continue
        lines.append(f"| {row} | " + " | ".join(number(v, formats.get(c, ".1f")) for v, c in zip(mine, keys)) + " |")
        for column, value in zip(keys, mine):
            cell = published.cells.get((row, column)) if beside else None
            csv_rows.append(csv_row(row, column, value, cell))
            if cell is not None:
                paired.add((row, column))
        published_line(row)
    for row in published.rows:  # the papers' rows we have no counterpart for: ours blank
        published_line(row)
    csv_rows += [csv_row(row, column, None, cell) for (row, column), cell in published.cells.items()
                 if (row, column) not in paired]
    if any(key not in shown for key in published.cells):  # the paper's table in its own layout
        lines += ["", f"As published: {published.title}", "",
                  f"| {published.corner} | " + " | ".join(published.columns.values()) + " |",
                  "| --- |" + " ---: |" * len(published.columns)]
        lines += [f"| {row} | " + " | ".join(published_cells(published, row, published.columns)) + " |"
                  for row in published.rows]
    lines += footnotes(published)
    return csv_rows, "\n".join(lines)


def published_cells(published: PublishedTable, row: str, columns: Sequence[str]) -> list:
    """The published figures of ``row`` in ``columns`` ("—" where the paper has none; † if unchecked)."""
    cells = published.row(row)
    return [cells[column].text() if column in cells else "—" for column in columns]


def csv_row(row: str, column: str, ours: Optional[float], cell: Optional[Published]) -> dict:
    text = "" if ours is None else str(ours) if isinstance(ours, int) else f"{ours:.4f}"
    return {"row": row, "column": column, "ours": text,
            "published": "" if cell is None else cell.value,
            "verified": "" if cell is None else "yes" if cell.verified else "no"}


def footnotes(published: PublishedTable) -> list:
    """The lines under a table: what † means (if any figure carries it) and every source."""
    lines = [""]
    if published.unverified_sources:
        lines.append(f"{MARK} not checked against the paper here: " + "; ".join(published.unverified_sources) + ".")
    if published.citations:
        lines += ["Published numbers:"] + [f"- {line}" for line in published.citations]
    else:
        lines.append("Published numbers: none recorded for this table in configs/paper_numbers.yaml.")
    return lines


def csv_text(csv_rows: Sequence[dict]) -> str:
    """``row,column,ours,published,verified`` for :func:`side_by_side`'s CSV rows."""
    handle = io.StringIO()
    writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows)
    return handle.getvalue()
