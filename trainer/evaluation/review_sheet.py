"""The review sheet: a person compares the base model with the fine-tuned one, blinded.

write_sheet puts held-out prompts and both models' outputs in OUTPUT/review.csv
(to fill in) and OUTPUT/review.html (to read), as "output A" and "output B" in
an order drawn per row; which model is A is only in OUTPUT/review_key.csv, so
the sheet can be handed out without it. The person writes A, B or tie in the
preferred column; this command reads that back against the key and reports
the fine-tuned model's win rate with a 95% interval and a plain verdict
(summarise; `python -m trainer.review` prints it, and it is written to
OUTPUT/review_result.json). The sheet and the key are
never modified.
"""

import csv
import dataclasses
import hashlib
import html
import io
import json
import math
import re
import shlex

import numpy as np

from trainer import filesystem
from trainer.errors import UserError

SHEET, KEY, HTML, RESULT = "review.csv", "review_key.csv", "review.html", "review_result.json"
SHEET_COLUMNS = ("id", "prompt", "reference", "output_a", "output_b", "preferred", "notes")
KEY_COLUMNS = ("id", "output_a", "output_b")
BASE, TUNED = "base", "tuned"
# What a person may write in the preferred column (compared lower-cased, stripped).
RATING_WORDS = {"a": "A", "b": "B", "tie": "tie", "=": "tie", "same": "tie", "both": "tie", "neither": "tie"}
VALID_RATINGS = "A, B or tie (also =, same, both, neither for a tie; blank skips the row)"
# Two-sided 95%: the normal distribution's 97.5% quantile.
Z95 = 1.959963984540054
# The blinding draws from its own stream of the run's seed, so the same seed used
# elsewhere (data order, sampling) does not give correlated numbers here.
_BLINDING_STREAM = 0x5EE
# Excel, LibreOffice and Google Sheets read a cell starting with one of these as a
# formula: a model output "- first item" shows as #NAME?, and "=HYPERLINK(...)" in
# a prompt would be live. A leading ' is their "this is text" mark, hidden in the cell.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Sheet ids are letters-dash-number ("kzt-07"): text to every spreadsheet (a bare
# "07" loses its zero, "7e03" becomes 7000, "mar-1" a date), and the letters come
# from the sheet's content, so ratings from another run's sheet meet ids this key
# does not have instead of being silently scored against the wrong A/B order.
_ID_LETTERS = "bcdfghjklmnpqrstvwxz"  # consonants only: never a month name


# ----------------------------------------------------------------------------- the sheet


def write_sheet(output_dir: str, rows: list[dict], seed: int) -> dict:
    """OUTPUT/review.csv, review_key.csv and review.html for `rows`.

    rows: {"prompt", "base", "tuned", "reference" (str or None)} each, base being
    the model before fine-tuning. Returns {"sheet", "key", "html"}: the three paths.
    Same rows and seed, same files.
    """
    if not rows:
        raise ValueError("write_sheet needs at least one row")
    ids = _row_ids(rows, seed)
    tuned_first = _blinding(len(rows), seed)
    sheet, key = [], []
    for row_id, row, tuned_a in zip(ids, rows, tuned_first):
        a, b = (TUNED, BASE) if tuned_a else (BASE, TUNED)
        sheet.append({"id": row_id, "prompt": row["prompt"], "reference": row.get("reference"),
                      "output_a": row[a], "output_b": row[b]})
        key.append({"id": row_id, "output_a": a, "output_b": b})
    paths = {"sheet": filesystem.join(output_dir, SHEET), "key": filesystem.join(output_dir, KEY),
             "html": filesystem.join(output_dir, HTML)}
    filesystem.makedirs(output_dir)
    filesystem.write_bytes(paths["sheet"], _csv_bytes(SHEET_COLUMNS, (
        {**r, **{c: _as_text(r[c]) for c in ("prompt", "reference", "output_a", "output_b")},
         "preferred": "", "notes": ""} for r in sheet)))
    filesystem.write_bytes(paths["key"], _csv_bytes(KEY_COLUMNS, key))
    filesystem.write_bytes(paths["html"], render_html(sheet, output_dir).encode("utf-8"))
    return paths


def _blinding(n: int, seed: int) -> list[bool]:
    """Per row: is the fine-tuned output shown as A?

    A seeded permutation of exactly n/2 Trues rather than a coin per row: with
    coins, 24 rows split 15/9 or worse 31% of the time, and people favour the
    first (left) of two texts, so an unbalanced sheet tilts the win rate by that
    position bias. Balanced, the bias helps each model on half the rows. An odd
    count's extra row goes to either side with equal chance.
    """
    rng = np.random.default_rng([seed, _BLINDING_STREAM])
    first = n // 2 + (int(rng.integers(2)) if n % 2 else 0)
    return [bool(x) for x in rng.permutation(np.arange(n) < first)]


def _row_ids(rows: list[dict], seed: int) -> list[str]:
    digest = hashlib.sha256(json.dumps([seed, rows], sort_keys=True, default=str).encode()).digest()
    tag = "".join(_ID_LETTERS[b % len(_ID_LETTERS)] for b in digest[:3])
    width = len(str(len(rows)))
    return [f"{tag}-{i:0{width}d}" for i in range(1, len(rows) + 1)]


def _as_text(value) -> str:
    """A CSV cell: None as blank, a formula-looking start made plain text (see _FORMULA_STARTS)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_bytes(columns, records) -> bytes:
    """UTF-8 with a byte-order mark: without it Excel on Windows reads a CSV in the
    locale's code page (é shows as Ã©); LibreOffice and Google Sheets take the
    mark as UTF-8 too. CRLF rows and quoted multi-line cells, as Excel writes them."""
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return "\ufeff".encode("utf-8") + out.getvalue().encode("utf-8")


_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif;
       margin: 0; color: #1d1d1f; background: #fff; }
header { padding: 14px 20px 8px; max-width: 1100px; }
h1 { font-size: 20px; margin: 0 0 6px; }
header p, header ol { margin: 4px 0; }
header ol { padding-left: 22px; }
code { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
       background: #f0f0f3; padding: 1px 5px; border-radius: 4px; overflow-wrap: anywhere; }
table { border-collapse: collapse; table-layout: fixed; width: calc(100% - 24px); margin: 10px 12px 30px; }
th, td { border: 1px solid #c9c9d0; padding: 7px 9px; vertical-align: top; text-align: left; }
thead th { position: sticky; top: 0; background: #e9e9ef; font-size: 13px; z-index: 1; }
tbody tr:nth-child(even) td { background: #f8f8fa; }
td { white-space: pre-wrap; overflow-wrap: anywhere; }
td.id { font: 13px/1.45 ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-weight: 600;
        white-space: nowrap; }
td.prompt { color: #333; }
td.rating, td.notes { background: #fffef2; }
tbody tr:nth-child(even) td.rating, tbody tr:nth-child(even) td.notes { background: #fbf9e8; }
.empty { color: #8a8a93; font-style: italic; }
th.output, td.output { border-left: 2px solid #8e8e99; }
th small { font-weight: normal; color: #55555e; }
col.id { width: 4.8em; } col.rating { width: 6.2em; } col.notes { width: 8em; }
@media print { thead th { position: static; } body { font-size: 11px; } }
"""


def render_html(sheet: list[dict], output_dir: str) -> str:
    """One self-contained page: inline CSS, no script, nothing fetched. The
    Content-Security-Policy forbids scripts and outside resources, a second wall
    behind the escaping of every text."""
    has_reference = any(r["reference"] is not None for r in sheet)
    # Prompt and reference get set shares; the two outputs split what is left equally
    # (at 1280 px: about 310 px each with a reference column, 390 px without).
    cols = ['<col class="id">', f'<col style="width:{"17%" if has_reference else "21%"}">']
    heads = ['<th>id</th>', '<th>Prompt</th>']
    if has_reference:
        cols.append('<col style="width:13%">')
        heads.append('<th>Reference</th>')
    cols += ['<col>', '<col>', '<col class="rating">', '<col class="notes">']
    heads += ['<th class="output">Output A</th>', '<th class="output">Output B</th>',
              '<th>Preferred<br><small>A, B or tie</small></th>', '<th>Notes</th>']
    body = []
    for r in sheet:
        cells = [f'<td class="id">{_escape(r["id"])}</td>', f'<td class="prompt">{_cell(r["prompt"])}</td>']
        if has_reference:
            cells.append(f'<td class="reference">{_cell(r["reference"], missing="(none)")}</td>')
        cells += [f'<td class="output">{_cell(r["output_a"])}</td>', f'<td class="output">{_cell(r["output_b"])}</td>',
                  '<td class="rating"></td>', '<td class="notes"></td>']
        body.append(f'<tr id="{_escape(r["id"])}">{"".join(cells)}</tr>')
    command = f"python -m trainer.review --run={shlex.quote(output_dir)} --ratings=review.csv"
    reference = ", the reference answer" if has_reference else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Review sheet: {len(sheet)} prompts</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Which output is better? ({len(sheet)} prompts)</h1>
<p>Each row shows a prompt{reference} and two outputs, A and B, written by two different models.
Which model wrote A changes from row to row and is not shown here: judge the text alone.</p>
<ol>
<li>Read the prompt{reference} and outputs A and B.</li>
<li>In <code>review.csv</code>, fill the <b>preferred</b> column with <b>A</b>, <b>B</b> or <b>tie</b>
(leave it blank to skip a row; <b>notes</b> is free text), and save it as CSV.</li>
<li>Then run <code>{_escape(command)}</code> (with the path of the saved file).</li>
</ol>
</header>
<table>
<colgroup>{"".join(cols)}</colgroup>
<thead><tr>{"".join(heads)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
</body>
</html>
"""


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def _cell(text, missing: str = "(empty)") -> str:
    """Escaped text; a blank one as a visible grey marker (not the text itself)."""
    if text is None:
        return f'<span class="empty">{missing}</span>'
    if not text.strip():
        label = "(empty)" if text == "" else "(only whitespace)"
        return f'<span class="empty">{label}</span>'
    return _escape(text)


# ----------------------------------------------------------------------------- reading back


@dataclasses.dataclass
class Record:
    """One CSV row: its fields by lower-cased column name, where it starts in the file."""
    line: int
    fields: dict


def read_table(path: str, required: tuple) -> list[Record]:
    """A CSV as a spreadsheet saves it: with or without a byte-order mark (UTF-8 or
    UTF-16), comma, semicolon or tab separated, columns in any order, extra ones kept."""
    if not filesystem.exists(path):
        raise UserError(f"{path} does not exist.")
    text = _decode(filesystem.read_bytes(path))
    first = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    delimiter = _delimiter(first, required)
    if delimiter is None:
        raise UserError(f"{path}: the first line must name the columns {', '.join(required)}; it is {first[:200]!r}.")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = _column_names(next(reader))
    records = []
    while True:
        start = reader.line_num + 1  # a quoted cell can span lines: report where the row begins
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise UserError(f"{path}, line {start}: not readable as CSV ({e}).") from None
        if any(cell.strip() for cell in row):
            records.append(Record(start, {name: (row[i] if i < len(row) else "") for i, name in enumerate(header)}))
    return records


def _column_names(cells: list[str]) -> list[str]:
    return [c.replace("\ufeff", "").strip().lower() for c in cells]  # a second BOM can survive an editor


def _delimiter(header_line: str, required: tuple):
    """Comma, or what a spreadsheet used instead: Excel in German or French locales
    saves with ';', its "Unicode text" with tabs. None if no choice shows the columns."""
    for delimiter in (",", ";", "\t"):
        try:
            if set(required) <= set(_column_names(next(csv.reader([header_line], delimiter=delimiter), []))):
                return delimiter
        except csv.Error:
            continue
    return None


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Excel's plain "CSV" is saved in the locale's code page (cp1252 and kin). The
        # columns read here (ids, ratings) are ASCII, which every such code page shares;
        # latin-1 decodes any byte, so only free text such as notes may come out garbled.
        return data.decode("latin-1")


def read_key(path: str) -> dict[str, tuple[str, str]]:
    """{id: (model shown as A, model shown as B)} from a key write_sheet wrote."""
    key = {}
    for record in read_table(path, KEY_COLUMNS):
        row_id = record.fields["id"].strip()
        pair = (record.fields["output_a"].strip(), record.fields["output_b"].strip())
        if sorted(pair) != sorted((BASE, TUNED)):
            raise UserError(f"{path}, line {record.line}: output_a/output_b must be {BASE} and {TUNED} in some "
                            f"order, not {pair[0]!r}/{pair[1]!r}. The key is written by training; regenerate it "
                            "rather than editing it.")
        key[row_id] = pair
    if not key:
        raise UserError(f"{path} has no rows.")
    return key


def read_ratings(path: str, key_ids=None) -> dict[str, str]:
    """{id: "A" | "B" | "tie"} for every rated row of a filled sheet; blank ones are skipped.

    key_ids: when given, an id outside it is an error (a row of another sheet)."""
    ratings, lines = {}, {}
    for record in read_table(path, ("id", "preferred")):
        row_id, value = record.fields["id"].strip(), record.fields["preferred"].strip()
        if not value:
            continue
        rating = RATING_WORDS.get(value.lower())
        if rating is None:
            raise UserError(f"{path}, line {record.line} (id {row_id or 'blank'}): preferred is {value!r}; "
                            f"write {VALID_RATINGS}.")
        if key_ids is not None and row_id not in key_ids:
            example = next(iter(key_ids), "")
            raise UserError(f"{path}, line {record.line}: id {row_id!r} is not in this run's review key (its ids "
                            f"look like {example!r}). Is this the sheet of another run, or was the id edited?")
        if row_id in ratings:
            raise UserError(f"{path}, line {record.line}: id {row_id!r} is rated twice (also on line "
                            f"{lines[row_id]}); keep one of the two rows.")
        ratings[row_id], lines[row_id] = rating, record.line
    return ratings


# ----------------------------------------------------------------------------- the verdict


def win_rate(wins: int, losses: int, ties: int) -> dict:
    """The fine-tuned model's win rate, (wins + ties/2) / rated, with a 95% interval.

    wins: rows where the fine-tuned output was preferred; losses: the base output.

    The interval is Wilson's score interval: the rates p0 that a two-sided 95%
    score test would not reject, |p - p0| <= z * sqrt(p0 (1 - p0) / n). Unlike
    the normal approximation p +- z * sqrt(p (1 - p) / n) it stays inside [0, 1]
    and does not collapse to zero width at 0 or 10 wins of 10, so it is sane for
    the small N of a review (24 rows). It is exact for win/lose rows; a tie
    counted as half is not such a trial, which makes it approximate. Ties only
    lower the variance (a score in {0, 1/2, 1} varies less than one in {0, 1}
    with the same mean), so with ties the interval errs on the wide side.

    Since 0.5 lies outside the interval exactly when |p - 0.5| > z * 0.5 / sqrt(n),
    n > z^2 / (4 (p - 0.5)^2) rows at the same rate would settle the question:
    "more_rows_needed" is that count minus the rows rated (None when decided, or
    when p is exactly 0.5 and no count would).
    """
    n = wins + losses + ties
    if n <= 0 or min(wins, losses, ties) < 0:
        raise ValueError(f"win_rate needs rated rows, got wins={wins} losses={losses} ties={ties}")
    p = (wins + ties / 2) / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    more = None
    if low > 0.5:
        verdict = "the fine-tuned model is preferred"
    elif high < 0.5:
        verdict = "the base model is preferred"
    elif p == 0.5:
        verdict = ("no clear preference; the ratings are split evenly, so more rows would narrow the interval "
                   "around 50% but, at this rate, never show a preference")
    else:
        more = max(1, math.floor(z2 / (4 * (p - 0.5) ** 2)) + 1 - n)
        verdict = (f"no clear preference; rate more rows ({more} more would be needed for the 95% interval to "
                   f"exclude 50%, if the fine-tuned model's win rate stayed at {p:.1%})")
    return {"rated": n, "wins": wins, "losses": losses, "ties": ties, "win_rate": p, "ci95": [low, high],
            "verdict": verdict, "more_rows_needed": more}


def summarise(run: str, ratings_path: str) -> dict:
    """Read the key and the ratings, count, and write OUTPUT/review_result.json."""
    run, ratings_path = filesystem.expand(run), filesystem.expand(ratings_path)
    key_path = filesystem.join(run, KEY)
    if not filesystem.exists(key_path):
        raise UserError(f"{key_path} does not exist: --run must be the output_dir of a run that wrote a review "
                        "sheet (eval.review_examples > 0).")
    key = read_key(key_path)
    ratings = read_ratings(ratings_path, key_ids=key)
    if not ratings:
        raise UserError(f"{ratings_path} has no rated rows: fill its preferred column with {VALID_RATINGS}, "
                        "save it as CSV, and run this again.")
    counts = {"A": 0, "B": 0, "tie": 0}
    wins = losses = ties = 0
    for row_id, rating in ratings.items():
        counts[rating] += 1
        if rating == "tie":
            ties += 1
        elif key[row_id]["AB".index(rating)] == TUNED:
            wins += 1
        else:
            losses += 1
    stats = win_rate(wins, losses, ties)
    result = {"ratings": ratings_path, "key": key_path, "sheet_rows": len(key), "rated": stats["rated"],
              "tuned_wins": wins, "base_wins": losses, "ties": ties, "win_rate": stats["win_rate"],
              "ci95": stats["ci95"], "verdict": stats["verdict"], "more_rows_needed": stats["more_rows_needed"],
              # How often each side was picked: on a balanced sheet a large A/B gap hints at position bias.
              "picked": counts,
              "method": "win rate of the fine-tuned model, ties counted as half; 95% Wilson score interval"}
    filesystem.write_json(filesystem.join(run, RESULT), result)
    return result


def report(result: dict) -> str:
    low, high = result["ci95"]
    lines = [f"Rated rows: {result['rated']} of {result['sheet_rows']}",
             f"Fine-tuned model preferred: {result['tuned_wins']}, base model preferred: {result['base_wins']}, "
             f"ties: {result['ties']}",
             f"Win rate of the fine-tuned model (a tie counts half): {result['win_rate']:.1%} "
             f"(95% interval {low:.1%} to {high:.1%}, Wilson)",
             f"Verdict: {result['verdict']}"]
    unrated = result["sheet_rows"] - result["rated"]
    if result["more_rows_needed"] is not None and result["more_rows_needed"] > unrated:
        lines.append(f"The sheet has {unrated} unrated row{'s' * (unrated != 1)} left: a larger "
                     "eval.review_examples would give more.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
