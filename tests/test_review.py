"""The review sheet: blinded, balanced, escaped, read back from what a spreadsheet saves,
and scored with a Wilson interval checked against hand arithmetic."""

import csv
import html.parser
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import uuid

import pytest

from trainer.evaluation import review_sheet as review

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCREENSHOT_COPY = "/tmp/review_screenshot.png"
# None of the rows' own texts says "base" or "tuned", so any such word in a sheet leaks the key.
HOSTILE = "<script>document.title='pwned'</script> & \"quoted\" 'single' <img src=x onerror=\"document.title='x'\">"


def make_rows(n, reference=True):
    long_text = "The river carries the stone near the garden, and the lamp warms the window. " * 5
    rows = []
    for i in range(n):
        rows.append({
            "prompt": f"Prompt {i}: write a note about the harbor, café déjà vu" + (f"\n{HOSTILE}" if i == 0 else ""),
            "base": "" if i == 1 else f"old model text {i}\n  indented line\n{long_text}",
            "tuned": f"- new model text {i}\n- second line " + "x" * (120 if i == 2 else 3),
            "reference": (f"Reference {i}" if reference and i != 3 else None)})
    return rows


def read_csv(path):
    with open(path, "rb") as f:
        data = f.read()
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer.review", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def fill(sheet_path, key_path, outcomes, target, words=None, bom=False, delimiter=",", reverse=False):
    """The sheet with its preferred column filled as a person would: outcomes[i] is
    "tuned", "base", "tie" or "" for row i; the letter comes from the key. Saved the
    way a spreadsheet may: columns reordered, one added, rows reversed, any delimiter."""
    key = {r["id"]: r for r in read_csv(key_path)}
    rows = read_csv(sheet_path)
    words = words or {}
    for i, (row, outcome) in enumerate(zip(rows, outcomes)):
        if outcome in ("tuned", "base"):
            letter = "A" if key[row["id"]]["output_a"] == outcome else "B"
            row["preferred"] = words.get(i, letter.lower() if i % 2 else letter)
        else:
            row["preferred"] = words.get(i, outcome)
        row["rater"] = "Zoë"
    if reverse:
        rows.reverse()
    out = io.StringIO()
    writer = csv.DictWriter(out, ["notes", "preferred", "rater", "output_b", "id", "prompt", "output_a",
                                  "reference"], delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    with open(target, "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8"))
    return str(target)


def wilson(successes, n, z=1.959963984540054):
    """By hand, from the textbook formula: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


# ----------------------------------------------------------------------------- the sheet


def test_the_key_is_a_separate_file_and_the_sheet_never_names_the_models(tmp_path):
    rows = make_rows(6)
    paths = review.write_sheet(str(tmp_path), rows, seed=3)
    assert paths == {"sheet": str(tmp_path / "review.csv"), "key": str(tmp_path / "review_key.csv"),
                     "html": str(tmp_path / "review.html")}
    sheet, key = read_csv(paths["sheet"]), read_csv(paths["key"])
    assert list(sheet[0]) == ["id", "prompt", "reference", "output_a", "output_b", "preferred", "notes"]
    assert list(key[0]) == ["id", "output_a", "output_b"]
    assert [r["id"] for r in sheet] == [r["id"] for r in key] and len({r["id"] for r in sheet}) == 6
    for row, line, k in zip(rows, sheet, key):
        assert {k["output_a"], k["output_b"]} == {"base", "tuned"}
        # The sheet's A and B are the outputs the key names (a leading ' guards a formula-like start).
        assert line["output_a"].removeprefix("'") == row[k["output_a"]]
        assert line["output_b"].removeprefix("'") == row[k["output_b"]]
        assert line["preferred"] == line["notes"] == ""
    for path in (paths["sheet"], paths["html"]):
        with open(path, encoding="utf-8-sig") as f:
            text = f.read().replace(str(tmp_path), "OUTPUT").lower()
        assert "tuned" not in text and "base" not in text, path


def test_blinding_is_balanced_and_reproducible(tmp_path):
    for n in range(1, 26):
        first = review._blinding(n, seed=0)
        assert sum(first) in (n // 2, (n + 1) // 2), n
        assert review._blinding(n, seed=0) == first
    # An odd count's extra row goes to either model across seeds; orders differ by seed.
    assert {sum(review._blinding(5, seed)) for seed in range(20)} == {2, 3}
    assert len({tuple(review._blinding(24, seed)) for seed in range(20)}) == 20

    rows = make_rows(24)
    files = []
    for folder, seed in (("one", 7), ("two", 7), ("three", 8)):
        paths = review.write_sheet(str(tmp_path / folder), rows, seed=seed)
        files.append([open(paths[k], "rb").read().replace(str(tmp_path / folder).encode(), b"RUN")
                      for k in ("sheet", "key", "html")])  # the page names its own folder in the command
    assert files[0] == files[1]
    assert files[0][1] != files[2][1]
    assert sum(r["output_a"] == "tuned" for r in read_csv(tmp_path / "one" / "review_key.csv")) == 12


def test_csv_is_utf8_with_bom_multiline_cells_and_formula_guard(tmp_path):
    rows = make_rows(3)
    rows[2]["prompt"] = "=HYPERLINK(\"http://example.com\")"
    paths = review.write_sheet(str(tmp_path), rows, seed=0)
    with open(paths["sheet"], "rb") as f:
        data = f.read()
    assert data.startswith(b"\xef\xbb\xbf") and "café déjà vu".encode() in data
    sheet = read_csv(paths["sheet"])
    assert sheet[0]["prompt"] == rows[0]["prompt"]  # newline and quotes survive the quoting
    assert sheet[2]["prompt"] == "'" + rows[2]["prompt"]  # shown as text, not run, by a spreadsheet
    assert "'" + rows[0]["tuned"] in (sheet[0]["output_a"], sheet[0]["output_b"])  # "- new model text 0"
    assert sheet[0]["reference"] == "Reference 0"


def test_html_escapes_everything_and_shows_empty_outputs(tmp_path):
    rows = make_rows(4)
    rows[2]["tuned"] = "  \n"
    paths = review.write_sheet(str(tmp_path), rows, seed=0)
    page = open(paths["html"], encoding="utf-8").read()
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt; &amp; &quot;quoted&quot;" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched
    assert page.count("<tr id=") == 4
    assert '<span class="empty">(empty)</span>' in page  # row 1's empty output
    assert '<span class="empty">(only whitespace)</span>' in page  # row 2's blank output
    assert '<span class="empty">(none)</span>' in page  # row 3 has no reference
    assert "white-space: pre-wrap" in page and "\n  indented line\n" in page
    assert "--ratings=review.csv" in page and f"--run={tmp_path}" in page
    assert "<th>Reference</th>" in page

    without = review.write_sheet(str(tmp_path / "noref"), make_rows(4, reference=False), seed=0)
    assert "Reference" not in open(without["html"], encoding="utf-8").read()
    assert read_csv(without["sheet"])[0]["reference"] == ""


# ----------------------------------------------------------------------------- the numbers


def test_win_rate_is_the_wilson_interval_with_ties_as_half():
    win = review.win_rate(7, 3, 0)
    assert win["win_rate"] == 0.7
    assert [round(x, 4) for x in win["ci95"]] == [0.3968, 0.8922]
    assert win["ci95"] == pytest.approx(wilson(7, 10))
    assert win["verdict"].startswith("no clear preference; rate more rows (15 more")
    # z²/(4·0.2²) = 24.01: at 25 rows a 70% rate leaves 0.5 out, at 24 it does not.
    assert wilson(17.5, 25)[0] > 0.5 > wilson(16.8, 24)[0]

    ties = review.win_rate(5, 1, 4)  # (5 + 4/2) / 10
    assert ties["win_rate"] == 0.7 and ties["ci95"] == pytest.approx(wilson(7, 10))

    assert review.win_rate(20, 4, 0)["verdict"] == "the fine-tuned model is preferred"
    assert review.win_rate(3, 18, 3)["verdict"] == "the base model is preferred"
    even = review.win_rate(5, 5, 2)
    assert even["verdict"].startswith("no clear preference") and even["more_rows_needed"] is None
    perfect = review.win_rate(10, 0, 0)
    assert perfect["ci95"][1] == pytest.approx(1.0) and perfect["ci95"][0] == pytest.approx(wilson(10, 10)[0])
    assert 0.69 < perfect["ci95"][0] < 0.73  # the normal approximation would claim [1, 1]
    with pytest.raises(ValueError):
        review.win_rate(0, 0, 0)


# ----------------------------------------------------------------------------- the command


def test_cli_reads_a_filled_sheet_and_reports_the_win_rate(tmp_path):
    run = tmp_path / "run"
    paths = review.write_sheet(str(run), make_rows(12), seed=1)
    before = {k: open(paths[k], "rb").read() for k in ("sheet", "key")}
    # 6 fine-tuned wins, 2 base wins, 2 ties, 2 blank: (6 + 2/2) / 10 = 0.7.
    outcomes = ["tuned", "base", "tuned", "tie", "", "tuned", "tuned", "tie", "base", "", "tuned", "tuned"]
    ratings = fill(paths["sheet"], paths["key"], outcomes, tmp_path / "filled.csv",
                   words={3: " Same ", 7: "="}, reverse=True)
    out = cli(f"--run={run}", f"--ratings={ratings}")
    assert out.returncode == 0, out.stderr
    low, high = wilson(7, 10)
    assert f"{low:.1%} to {high:.1%}" == "39.7% to 89.2%"
    assert "Rated rows: 10 of 12" in out.stdout
    assert "Fine-tuned model preferred: 6, base model preferred: 2, ties: 2" in out.stdout
    assert "70.0% (95% interval 39.7% to 89.2%, Wilson)" in out.stdout
    assert "no clear preference; rate more rows (15 more would be needed" in out.stdout
    assert "a larger eval.review_examples" in out.stdout  # 2 rows left, 15 needed
    result = json.load(open(run / "review_result.json"))
    assert (result["rated"], result["tuned_wins"], result["base_wins"], result["ties"]) == (10, 6, 2, 2)
    assert result["ci95"] == pytest.approx([low, high]) and result["win_rate"] == pytest.approx(0.7)
    assert {k: open(paths[k], "rb").read() for k in ("sheet", "key")} == before


def test_cli_reads_an_excel_sheet_with_bom_and_semicolons(tmp_path):
    paths = review.write_sheet(str(tmp_path), make_rows(4), seed=2)
    ratings = fill(paths["sheet"], paths["key"], ["tuned", "tuned", "base", "tuned"], tmp_path / "saved.csv",
                   bom=True, delimiter=";")
    assert open(ratings, "rb").read(3) == b"\xef\xbb\xbf"
    out = cli(f"--run={tmp_path}", f"--ratings={ratings}")
    assert out.returncode == 0, out.stderr
    assert "Fine-tuned model preferred: 3, base model preferred: 1, ties: 0" in out.stdout


@pytest.mark.parametrize("case", ["bad value", "unknown id", "nothing rated"])
def test_cli_errors_name_the_file_and_line(tmp_path, case):
    paths = review.write_sheet(str(tmp_path), make_rows(4), seed=0)
    words = {2: "maybe"} if case == "bad value" else {}
    outcomes = ["", "", "", ""] if case == "nothing rated" else ["tuned", "base", "tie", "tuned"]
    ratings = fill(paths["sheet"], paths["key"], outcomes, tmp_path / "filled.csv", words=words)
    if case == "unknown id":
        text = open(ratings, encoding="utf-8").read()
        first_id = read_csv(paths["key"])[0]["id"]
        with open(ratings, "w", encoding="utf-8") as f:
            f.write(text.replace(first_id, "zzz-9"))
    out = cli(f"--run={tmp_path}", f"--ratings={ratings}")
    assert out.returncode == 2 and out.stderr.startswith("error: "), out.stderr
    assert ratings in out.stderr
    if case == "bad value":
        # Cells above it span several lines: the line of the file, not the spreadsheet's row 4.
        line = 1 + next(i for i, text in enumerate(open(ratings, encoding="utf-8").read().splitlines())
                        if ",maybe," in text)
        assert line > 4 and f"line {line} " in out.stderr and "'maybe'" in out.stderr and "A, B or tie" in out.stderr
    elif case == "unknown id":
        assert "line 2" in out.stderr and "'zzz-9' is not in this run's review key" in out.stderr
    else:
        assert "no rated rows" in out.stderr and "fill its preferred column" in out.stderr
    assert not (tmp_path / "review_result.json").exists()


# ----------------------------------------------------------------------------- in a browser


class Cells(html.parser.HTMLParser):
    """Every element name seen, the <title>, and the text of each body row's cells."""

    def __init__(self):
        super().__init__()
        self.tags, self.rows, self.title, self._cell, self._in = set(), [], "", None, None

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        if tag == "tr" and self._in == "tbody":
            self.rows.append([])
        elif tag == "td" and self.rows:
            self._cell = []
            self.rows[-1].append(self._cell)
        elif tag in ("tbody", "title"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag in ("tbody", "title"):
            self._in = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._in == "title":
            self.title += data


def test_chromium_renders_the_table_and_runs_no_script(tmp_path):
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    rows = make_rows(5)
    paths = review.write_sheet(str(tmp_path / "run"), rows, seed=0)
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    url = "file://" + paths["html"]
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = Cells()
    page.feed(dom.stdout)
    assert page.title == "Review sheet: 5 prompts"  # the prompt's script would have renamed it
    assert "script" not in page.tags and "img" not in page.tags
    sheet = read_csv(paths["sheet"])
    assert len(page.rows) == 5
    for cells, line, row in zip(page.rows, sheet, rows):
        texts = ["".join(c) for c in cells]
        assert len(texts) == 7  # id, prompt, reference, A, B, preferred, notes
        assert texts[0] == line["id"] and texts[1] == row["prompt"]
        assert texts[5] == texts[6] == ""
    assert HOSTILE in "".join(page.rows[0][1])  # shown as text
    assert "(empty)" in ["".join(c) for c in page.rows[1]][3:5]

    png = tmp_path / "review.png"
    shot = subprocess.run([*browser, f"--screenshot={png}", "--window-size=1280,900", "--hide-scrollbars", url],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1280, 900)
    shutil.copy(png, SCREENSHOT_COPY)


def test_sheet_and_ratings_on_cloud_storage(gcs_server, tmp_path):
    from tests.gcs_server import BUCKET
    from trainer import filesystem

    run = f"gs://{BUCKET}/review-{uuid.uuid4().hex[:8]}"
    paths = review.write_sheet(run, make_rows(4), seed=0)
    for name in ("sheet", "key", "html"):
        (tmp_path / os.path.basename(paths[name])).write_bytes(filesystem.read_bytes(paths[name]))
    local = tmp_path / "review.csv"
    assert local.read_bytes().startswith(b"\xef\xbb\xbf")
    filled = fill(local, tmp_path / "review_key.csv", ["tuned", "tuned", "tie", "base"], tmp_path / "filled.csv")
    filesystem.write_bytes(f"{run}/filled.csv", open(filled, "rb").read())
    result = review.summarise(run, f"{run}/filled.csv")
    assert (result["tuned_wins"], result["base_wins"], result["ties"]) == (2, 1, 1)
    assert filesystem.read_json(f"{run}/review_result.json")["win_rate"] == pytest.approx(0.625)
