"""configs/paper_numbers.yaml: every published figure keeps its source and setting, and every table's
published rows render, checked figures plain and unchecked ones marked †."""

from __future__ import annotations

import pytest
import yaml

from gpoa.config import Config, load_config
from gpoa.errors import UsageError
from gpoa.experiments.published import MARK, PAPER_NUMBERS, load_paper_numbers, load_published, side_by_side
from gpoa.experiments.reproduce import backbones

DOCUMENT = yaml.safe_load(PAPER_NUMBERS.read_text())
MAINTAINERS = "as read by the project's maintainers from arXiv 2509.18891"


def entries():
    return [(table, number, entry) for table, spec in DOCUMENT.items()
            for number, entry in enumerate(spec["entries"], 1)]


@pytest.mark.parametrize("table,number,entry", entries(), ids=lambda v: str(v)[:24] if isinstance(v, str) else "")
def test_every_entry_names_its_source_setting_and_where_its_figures_are_stated(table, number, entry):
    assert str(entry["source"]).strip() and str(entry["setting"]).strip()
    assert entry.get("rows") or entry.get("unverified")
    if entry.get("rows"):  # checked: a table number, or the URL and the sentence that states each figure
        assert entry.get("table") or str(entry.get("url", "")).startswith("https://") and entry.get("quote")
        quote = " ".join(str(entry.get("quote", "")).split())
        for row, values in entry["rows"].items():
            for column, value in values.items():
                # as a percentage ("52.7") or the fraction the source holds ("0.798"); or computed from its data
                assert (entry.get("table") or entry.get("derived") or f"{value}" in quote
                        or f"{value / 100:.3f}" in quote), (row, column)
    if entry.get("unverified"):
        assert str(entry["unverified"]["source"]).strip() and entry["unverified"]["rows"]
        if "2509.18891" in entry["source"]:  # Point Prompt Defender's tables: the source line
            assert entry["unverified"]["source"] == MAINTAINERS


@pytest.mark.parametrize("table", sorted(DOCUMENT))
def test_each_tables_published_rows_render_checked_plain_unchecked_marked(table):
    published = load_published(table)
    assert published.rows and published.citations
    # one row of ours with no figure in common: every published row still shows
    csv_rows, markdown = side_by_side(published, [("ours", "a column of ours", 1.0)], ["ours"],
                                      [("a column of ours", "a column of ours")])
    shown = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            label, *cells = [part.strip() for part in line.strip("|").split("|")]
            shown.setdefault(label, []).extend(cells)
    assert shown["ours"] == ["1.0"]
    for (row, column), cell in published.cells.items():
        assert (f"{cell.value}" if cell.verified else f"{cell.value}{MARK}") in shown[row], (row, column)
        assert {"row": row, "column": column, "ours": "", "published": cell.value,
                "verified": "yes" if cell.verified else "no"} in csv_rows
    unverified = [cell for cell in published.cells.values() if not cell.verified]
    assert (MARK in markdown) == bool(unverified)
    for line in published.unverified_sources:
        assert f"{MARK} not checked against the paper here: {line}" in markdown
    for citation in published.citations:
        assert f"- {citation}" in markdown


def test_a_paper_row_beside_ours_and_one_without_a_counterpart():
    """The DAVIS table as the video benchmark will fill it: ours, then the published rows, J&F blank."""
    published = load_published("davis2016")
    columns = [("j_mean", "J mean"), ("f_mean", "F mean"), ("jf_mean", "J&F mean")]
    ours = [("OSVOS", "j_mean", 75.04), ("OSVOS", "f_mean", None), ("tracker", "j_mean", 70.0),
            ("tracker", "f_mean", 72.0), ("tracker", "jf_mean", 71.0)]
    csv_rows, markdown = side_by_side(published, ours, ["tracker", "OSVOS"], columns)
    lines = markdown.splitlines()
    assert lines[2:5] == ["| tracker | 70.0 | 72.0 | 71.0 |", "| OSVOS | 75.0 | — | — |",
                          "| OSVOS (paper) | 79.8 | 80.6 | — |"]
    assert "| OFL (paper) | 68.0 | 63.4 | — |" in lines and "As published" not in markdown
    assert {"row": "OSVOS", "column": "j_mean", "ours": "75.0400", "published": 79.8, "verified": "yes"} in csv_rows
    # the shape the video benchmark reads
    rows, source = load_paper_numbers("davis2016")
    assert rows["OFL"] == {"j_mean": 68.0, "f_mean": 63.4} and set(rows) == {"OSVOS", "OFL", "BVS", "FCP", "JMP"}
    assert "global_eval_val_2016.js" in source and "79.8% vs 68.0%" in source


@pytest.mark.parametrize("column,table", [("j_mean", "davis2016-clips-j"), ("f_mean", "davis2016-clips-f")])
def test_per_clip_davis_figures_average_to_the_published_means(column, table):
    """The per-clip J and F (means computed from the DAVIS benchmark's per-frame results) hold all 20
    DAVIS 2016 val clips for every method of the davis2016 table, and their mean is the method's published
    mean (both rounded to 0.1, so within 0.1): a figure copied wrong by two points or more on one clip shows."""
    overall, clips = load_published("davis2016"), load_published(table)
    assert len(clips.columns) == 20 and set(clips.rows) == set(overall.rows)
    for method in clips.rows:
        figures = [cell.value for cell in clips.row(method).values()]
        assert len(figures) == 20, method
        assert abs(sum(figures) / 20 - overall.row(method)[column].value) < 0.1, method
    assert all(entry.get("derived") for entry in DOCUMENT[table]["entries"])
    assert "computed here: each clip's figure is the mean" in "; ".join(clips.citations)


def test_figures_without_their_source_are_refused(tmp_path):
    path = tmp_path / "numbers.yaml"

    def refused(entry: dict, columns=("m",)) -> str:
        path.write_text(yaml.safe_dump({"t": {"columns": {c: c for c in columns}, "entries": [entry]}}))
        with pytest.raises(UsageError) as error:
            load_published("t", path)
        return str(error.value)

    base = {"source": "a paper", "setting": "one shot"}
    assert "no setting" in refused({"source": "a paper", "rows": {"r": {"m": 1.0}}})
    assert "table number" in refused({**base, "url": "https://example.org", "rows": {"r": {"m": 1.0}}})
    assert "source line" in refused({**base, "unverified": {"rows": {"r": {"m": 1.0}}}})
    assert "do not list" in refused({**base, "table": "Table 2", "rows": {"r": {"x": 1.0}}})
    assert "not a number" in refused({**base, "table": "Table 2", "rows": {"r": {"m": "high"}}})
    assert "no figures" in refused(base)
    path.write_text(yaml.safe_dump({"t": {"columns": {"m": "m"}, "entries": [
        {**base, "table": "Table 2", "rows": {"r": {"m": 1.0}}},
        {**base, "unverified": {"source": "someone", "rows": {"r": {"m": 2.0}}}}]}}))
    with pytest.raises(UsageError, match="2.0 here and 1.0"):
        load_published("t", path)
    assert load_published("absent", path).rows == []


def test_the_header_says_which_backbones_produced_ours():
    assert "a stand-in for the papers' SAM + DINOv2" in backbones(Config())
    assert backbones(load_config("configs/sam_dinov2.yaml")).endswith("the papers' backbones")
    assert "not the papers' SAM + DINOv2" in backbones(load_config("configs/sam2_dinov2.yaml"))
