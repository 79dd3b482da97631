"""Reports (HTML, PDF, JSON) of the fitted flagship, read back; escaping of analyst text; CLI errors."""

from __future__ import annotations

import datetime as dt
import html as htmllib
import io
import json
import re

import pytest

from conftest import FLAGSHIP, FLAGSHIP_AS_OF

NASTY_NOTE = "<script>alert('note')</script> & <b>bold</b>"
NASTY_ROW = {"kind": "sign", "theater": FLAGSHIP, "date": "2022-02-10", "category": "medical",
             "description": "Field hospital <img src=x onerror=alert(1)>",
             "source": "Analyst desk <i>draft</i>", "url": "javascript:alert(1)", "notes": NASTY_NOTE}


def _text(html_text: str) -> str:
    """Visible text of an HTML page, whitespace-normalised (tags dropped, entities decoded)."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", html_text)).split())


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def _report(cli, fmt: str, tmp_path, *extra) -> bytes:
    out = tmp_path / f"report.{fmt}"
    result = cli.ok("report", FLAGSHIP, "--format", fmt, "-o", out, *extra)
    assert str(out) in result.stdout
    return out.read_bytes()


def _common_parts(text: str, shown: dict) -> None:
    """What every format must say, in its visible text."""
    from forecast import wording

    assert wording.key_judgment(shown) in text
    assert shown["words"] in text
    assert f"{shown['prob']['30']['mean']:.0%}" in text
    assert shown["timing"]["median"] in text and shown["timing"]["p10"] in text and shown["timing"]["p90"] in text
    assert shown["run_id"] in text
    assert shown["data_hash"] in text
    assert shown["code_version"] in text
    assert shown["prior_hash"] in text


def test_html_report_is_complete_and_self_contained(fitted_store, tmp_path):
    shown = fitted_store.json("show", FLAGSHIP)
    page = _report(fitted_store, "html", tmp_path).decode("utf-8")
    text = _text(page)
    _common_parts(text, shown)
    for heading in ("Key judgment", "Timing", "Forecast history", "Drivers", "Priors used", "Diagnostics",
                    "Evidence", "Provenance"):
        assert f">{heading}" in page, heading
    # three charts, embedded; nothing fetched from elsewhere, nothing executed
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'src="(?!data:)', page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    # drivers, priors, diagnostics, generation time
    assert "Ultimatum / recognition" in text  # the indicator labels of forecast.features
    assert "Identical in every stated value to the current default profile" in text
    assert "passed the convergence gate" in text
    assert re.search(r"generated \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", text)
    # evidence with sources, only what the run could see
    from forecast import store

    rows = [r for r in store.load_evidence(fitted_store.engine(), FLAGSHIP) if r.kind != "outcome"]
    cut = dt.date.fromisoformat(FLAGSHIP_AS_OF)
    seen = [r for r in rows if r.known_on <= cut]
    later = [r for r in rows if r.known_on > cut]
    assert seen and later
    assert f"Evidence ({len(seen)} rows known by {FLAGSHIP_AS_OF})" in text
    for row in seen[:5] + seen[-5:]:
        assert " ".join(row.source.split()) in text, row.source
    assert f"{len(later)} later row(s)" in text


def test_json_report_holds_the_same_content(fitted_store, tmp_path):
    shown = fitted_store.json("show", FLAGSHIP)
    doc = json.loads(_report(fitted_store, "json", tmp_path))
    assert doc["theater"]["id"] == FLAGSHIP and doc["theater"]["name"].startswith("Russian build-up")
    assert doc["run"]["run_id"] == shown["run_id"] and doc["run"]["status"] == "published"
    assert doc["run"]["data_hash"] == shown["data_hash"] and doc["freshness"]["stale"] is False
    assert doc["evidence_changed"] is False and doc["reweighted"] is None and shown["stale"]["stale"] is False
    assert doc["run"]["code_version"] == shown["code_version"] and doc["generator_code_version"]
    assert doc["generated_at"] and doc["as_of"] == FLAGSHIP_AS_OF
    from forecast import wording

    assert doc["key_judgment"] == wording.key_judgment(shown)
    for key in ("prob", "words", "timing", "drivers", "history", "cumulative"):
        assert doc["forecast"][key] == shown[key], key
    assert doc["priors"]["profile"] == "default" and doc["priors"]["differs_from_default"] == []
    assert len(doc["priors"]["items"]) == 2 + len(shown["drivers"])
    assert doc["diagnostics"]["r_hat_max"] == shown["diagnostics"]["r_hat_max"]
    assert doc["diagnostics"]["gate_failures"] == []
    assert all({"date", "kind", "what", "source"} <= set(e) for e in doc["evidence"])
    assert all(e["date"] <= FLAGSHIP_AS_OF for e in doc["evidence"])


def test_pdf_report_reads_back(fitted_store, tmp_path):
    shown = fitted_store.json("show", FLAGSHIP)
    data = _report(fitted_store, "pdf", tmp_path)
    assert data.startswith(b"%PDF-")
    text = _pdf_text(data)
    _common_parts(text, shown)
    for heading in ("Key judgment", "Forecast history", "Drivers", "Priors used", "Diagnostics", "Provenance"):
        assert heading in text, heading
    assert "page 1 of" in text


def test_analyst_markup_is_shown_as_text(fitted_store, tmp_path):
    """A note with <script> (and markup in sources, descriptions, URLs) is escaped in every format."""
    path = tmp_path / "nasty.jsonl"
    path.write_text(json.dumps(NASTY_ROW) + "\n", encoding="utf-8")
    fitted_store.ok("import", path)

    page = _report(fitted_store, "html", tmp_path).decode("utf-8")
    assert "<script" not in page.lower() and "<img src=x" not in page and "<i>draft" not in page
    assert "&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert NASTY_NOTE in _text(page)
    assert 'href="javascript' not in page  # only http(s) URLs become links
    assert "The evidence has changed since this run" in _text(page)  # the row is newer than the fit

    doc = json.loads(_report(fitted_store, "json", tmp_path))
    assert NASTY_NOTE in [e["notes"] for e in doc["evidence"]]
    assert doc["evidence_changed"] is True
    assert doc["freshness"]["added"] == 1 and "1 row added" in doc["freshness"]["summary"]

    text = _pdf_text(_report(fitted_store, "pdf", tmp_path))  # the PDF lists rows without their notes
    assert NASTY_ROW["description"] in text.replace("\n", " ")


def test_reweighted_export_for_the_dashboard(fitted_store):
    """render() with a reweighted forecast and its profile: the numbers and priors are the override's."""
    from forecast import predict, priors, report, reweight, runs, store, wording

    run = runs.require_published(FLAGSHIP)
    fitted = priors.parse(run.profile_text())
    old = fitted.indicators["overstay"]
    profile = fitted.with_values(indicators={"overstay": priors.Stated(old.value * 2, old.low * 2, old.high * 2,
                                                                        old.rationale, old.unit)},
                                 name="hawkish <x>")
    text = profile.text
    weights = reweight.PriorReweighter(run).weights(profile)
    override = {**predict.summarise(run.draws(), weights.w), "pareto_k": 0.31}
    rows = store.load_evidence(fitted_store.engine(), FLAGSHIP)

    doc = json.loads(report.render(run, rows, "json", forecast_override=override, profile_override_text=text))
    assert doc["forecast"]["prob"] == override["prob"] != run.forecast()["prob"]
    assert doc["key_judgment"] == wording.key_judgment({**override, "as_of": FLAGSHIP_AS_OF})
    assert doc["reweighted"]["from_run"] == run.id and doc["reweighted"]["pareto_k"] == 0.31
    assert doc["priors"]["profile"] == "hawkish <x>"
    assert doc["priors"]["differs_from_default"] == ["indicators.overstay"]

    page = report.render(run, rows, "html", forecast_override=override, profile_override_text=text).decode()
    assert "Reweighted forecast." in page and "hawkish &lt;x&gt;" in page and "Pareto k = 0.31" in page
    assert "Differs from the current default profile in 1 statement(s)" in _text(page)

    with pytest.raises(report.ReportError):
        report.render(run, rows, "html", forecast_override=override)
    with pytest.raises(report.ReportError):
        report.render(run, rows, "docx")


def test_a_rejected_run_says_so(fitted_store):
    from forecast import report, runs

    good = runs.require_published(FLAGSHIP)
    bad = runs.Run(good.path, {**good.manifest, "status": "rejected", "reason": "min bulk ESS 20 < 400"})
    text = _text(report.render(bad, [], "html").decode())
    assert "Not a published forecast." in text and "min bulk ESS 20 < 400" in text


def test_report_default_output_name(fitted_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = fitted_store.json("report", FLAGSHIP, "--format", "json")
    assert written["run_id"] in written["path"] and written["path"].endswith(".json")
    assert json.loads((tmp_path / written["path"]).read_text())["run"]["run_id"] == written["run_id"]


def test_report_without_a_run_fails_clearly(initialised_cli, tmp_path):
    out = tmp_path / "r.html"
    result = initialised_cli("report", FLAGSHIP, "--format", "html", "-o", out)
    assert result.exit_code == 1
    assert "no published forecast" in result.stderr and f"forecast refit {FLAGSHIP}" in result.stderr
    assert not out.exists()


def test_report_bad_input_exits_2(initialised_cli, tmp_path):
    result = initialised_cli("report", FLAGSHIP, "--format", "docx", "-o", tmp_path / "r.docx")
    assert result.exit_code == 2 and "--format" in result.stderr and "html, pdf, json" in result.stderr
    result = initialised_cli("report", "no-such-theater", "--format", "html")
    assert result.exit_code == 2 and "unknown theater" in result.stderr


def test_report_to_a_missing_folder_exits_2(fitted_store, tmp_path):
    result = fitted_store("report", FLAGSHIP, "--format", "html", "-o", tmp_path / "nowhere" / "r.html")
    assert result.exit_code == 2 and "does not exist" in result.stderr
