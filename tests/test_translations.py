"""The Chinese texts say what the English ones say: the same commands, code, figures and pictures.

Every translated text is checked against its English original, in both directions,
so a change to one that forgets the other fails:

- every fenced code block (commands, code, printed tables) appears in the other,
  byte for byte, as many times;
- every inline command (a backticked span that starts like one: ``minires ...``,
  ``.venv/bin/...``, ``python ...``, ``pip ...``, ``mpiexec ...``, an option such as
  ``--epochs 2``, or a ``VARIABLE=value``) appears in the other;
- every number written in digits in the prose (``37.1%``, ``1.83x``, ``2015``) and every
  picture and table row of numbers appears in the other.

README.zh-CN.md has two sections the English README has not, each between
``<!-- zh-CN only: NAME -->`` and ``<!-- /zh-CN only -->``: where the Chinese materials are, and
the troubleshooting of downloads. The latter quotes the English messages a user sees, so a search
in Chinese finds them; a test below checks that each quoted message is what the code prints.

The notebooks' translations (tutorials/zh-CN/) hold the English notebooks' code cells and
outputs unchanged (so they need no run of their own: their code is the code the notebook
tests execute), the same cells in the same order, and the same figures in each markdown cell.
"""
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HANDOUTS = sorted(p.name for p in (ROOT / "tutorials" / "assignments").glob("0*.md") if ".zh-CN." not in p.name)
PAIRS = [("README.md", "README.zh-CN.md")] + [
    (f"tutorials/assignments/{h}", f"tutorials/assignments/{h[:-3]}.zh-CN.md") for h in HANDOUTS]
NOTEBOOKS = ["01_residual_learning.ipynb", "02_shortcuts.ipynb", "03_gradient_flow.ipynb", "04_degradation.ipynb"]

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
COMMAND = re.compile(r"(\.venv/bin/|\.ci/|(minires|python3?|pip|pytest|mpiexec|mpirun|srun|jupyter|cd|git)(?![\w./-])|"
                     r"--[a-z]|[A-Z][A-Z0-9_]*=)")
# ASCII bounds (共2条 holds a 2; 3x3 holds none), a trailing x kept (1.83x is a speed-up, not 1.83)
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d[\d,]*(?:\.\d+)?(?:x(?![A-Za-z0-9_]))?(?![A-Za-z0-9_])")
PICTURE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)|<img [^>]*src=\"([^\"]+)\"")
ANSWER_MARKER = re.compile(r"<!--\s*(END\s+)?ANSWER\b[^>]*-->")


ZH_ONLY = re.compile(r"<!-- zh-CN only: (?P<what>[^>]*?) -->\n(?P<text>.*?)<!-- /zh-CN only -->\n?", re.S)


def read(rel):
    """A text as the comparisons see it: a Chinese text's one zh-CN-only section (troubleshooting) left out."""
    return ZH_ONLY.sub("", (ROOT / rel).read_text(encoding="utf-8"))


def fenced(text):
    return Counter(m.group(0) for m in FENCE.finditer(text))


def prose(text):
    """The text outside fenced code blocks and HTML comments."""
    return re.sub(r"<!--.*?-->", "", FENCE.sub("", text), flags=re.S)


def joined(text):
    """The prose with each paragraph on one line: a code span may be broken over two lines."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", prose(text))


def code_spans(text):
    """Every inline code span (file names, functions, options, values), whitespace normalised."""
    return {" ".join(c.split()) for c in INLINE.findall(joined(text))}


def commands(text):
    spans = (" ".join(c.split()) for c in INLINE.findall(joined(text)))
    return {c for c in spans if COMMAND.match(c)}


def figures(text):
    """Every number written in digits in the prose (code spans and link targets left out), commas dropped."""
    words = re.sub(r"\]\([^)]*\)", "]", INLINE.sub(" ", joined(text)))
    return {n.replace(",", "").rstrip(",") for n in NUMBER.findall(words)}


def pictures(text):
    return {a or b for a, b in PICTURE.findall(text)}


def table_rows_of_numbers(text):
    """The cells of every table row that holds a number, the first (label) cell left out: they must match."""
    rows = []
    for line in prose(text).splitlines():
        if line.startswith("|") and re.search(r"\d", line) and not re.fullmatch(r"[|:\- ]+", line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append(tuple(c for c in cells[1:] if re.fullmatch(r"[\d.,%*x:\- ]+|`[^`]*`", c)))
    return Counter(r for r in rows if r)


def _both_ways(name, english, chinese, what):
    only_en = sorted(english - chinese) if isinstance(english, set) else sorted((english - chinese).elements())
    only_zh = sorted(chinese - english) if isinstance(chinese, set) else sorted((chinese - english).elements())
    assert not only_en and not only_zh, (
        f"{name}: {what} differ between the English and the Chinese text.\n"
        f"  only in the English ({len(only_en)}): {only_en[:6]}\n  only in the Chinese ({len(only_zh)}): {only_zh[:6]}\n"
        "Change both texts alike.")


@pytest.mark.parametrize("en,zh", PAIRS, ids=[zh for _, zh in PAIRS])
def test_the_same_code_blocks(en, zh):
    _both_ways(zh, fenced(read(en)), fenced(read(zh)), "the fenced code blocks")


@pytest.mark.parametrize("en,zh", PAIRS, ids=[zh for _, zh in PAIRS])
def test_the_same_inline_commands(en, zh):
    _both_ways(zh, commands(read(en)), commands(read(zh)), "the inline commands")


@pytest.mark.parametrize("en,zh", PAIRS, ids=[zh for _, zh in PAIRS])
def test_the_same_inline_code(en, zh):
    """Beyond the commands: every file, function, option and value named in code in one is named in the other."""
    _both_ways(zh, code_spans(read(en)), code_spans(read(zh)), "the inline code spans")


@pytest.mark.parametrize("en,zh", PAIRS, ids=[zh for _, zh in PAIRS])
def test_the_same_figures_pictures_and_tables(en, zh):
    english, chinese = read(en), read(zh)
    _both_ways(zh, figures(english), figures(chinese), "the numbers in the prose")
    _both_ways(zh, pictures(english), pictures(chinese), "the pictures")
    _both_ways(zh, table_rows_of_numbers(english), table_rows_of_numbers(chinese), "the tables' numbers")


@pytest.mark.parametrize("en,zh", PAIRS, ids=[zh for _, zh in PAIRS])
def test_the_translation_links_its_original_and_is_chinese(en, zh):
    english, chinese = read(en), read(zh)
    name = Path(en).name
    assert f"]({name})" in chinese, f"{zh} does not link the English {name}"
    han = len(re.findall(r"[\u4e00-\u9fff]", prose(chinese)))
    assert han > 0.1 * len(prose(english).split()), f"{zh}: too little Chinese for a translation of {en}"
    # answer spans (cut from student copies) wrap the same places in both
    assert len(ANSWER_MARKER.findall(english)) == len(ANSWER_MARKER.findall(chinese)), (
        f"{zh}: the English text has {len(ANSWER_MARKER.findall(english))} ANSWER markers, the Chinese "
        f"{len(ANSWER_MARKER.findall(chinese))}: wrap the same places")


def test_every_handout_is_translated():
    for h in HANDOUTS:
        assert (ROOT / "tutorials" / "assignments" / f"{h[:-3]}.zh-CN.md").is_file(), f"{h} has no Chinese handout"
    assert len(HANDOUTS) >= 7


def test_the_checks_catch_a_forgotten_change():
    """The comparisons above fail on a one-sided edit (a test that could never fail would prove nothing)."""
    english = "Run `minires train --epochs 2` (37.1%):\n\n```bash\n.venv/bin/minires train\n```\n"
    chinese = "运行`minires train --epochs 2`（37.1%）：\n\n```bash\n.venv/bin/minires train\n```\n"
    assert commands(english) == commands(chinese) == {"minires train --epochs 2"}
    assert fenced(english) == fenced(chinese) and figures(english) == figures(chinese) == {"37.1"}
    assert figures("1.83x as fast, 3x3, 2,300 times") == figures("快1.83x，3x3，2,300倍") == {"1.83x", "2300"}
    assert commands(chinese.replace("--epochs 2", "--epochs 3")) != commands(english)
    assert fenced(chinese.replace("minires train\n", "minires train --quiet\n")) != fenced(english)
    assert figures(chinese.replace("37.1%", "37.2%")) != figures(english)
    assert commands("`minires/autograd.py`, `minires.functional`, `--mirror URLS`") == {"--mirror URLS"}


# ---------------------------------------------------------------- the notebooks


def _notebook(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def synced(english, chinese):
    """The Chinese notebook rebuilt on the English one: its code cells, outputs and metadata, and the
    Chinese text of each markdown cell (matched by cell id). Returns (notebook, ids with no Chinese text)."""
    text = {c.get("id"): _source(c) for c in chinese["cells"] if c["cell_type"] == "markdown"}
    result = json.loads(json.dumps(english))
    missing = []
    for cell in result["cells"]:
        if cell["cell_type"] == "markdown":
            if cell.get("id") in text:
                lines = text[cell["id"]].split("\n")
                cell["source"] = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
            else:
                missing.append(cell.get("id"))
    return result, missing


def test_the_chinese_notebooks_are_the_four():
    assert sorted(p.name for p in (ROOT / "tutorials" / "zh-CN").glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_chinese_notebook_is_the_english_one_with_its_text_translated(name):
    english = _notebook(ROOT / "tutorials" / name)
    chinese = _notebook(ROOT / "tutorials" / "zh-CN" / name)
    rebuilt, missing = synced(english, chinese)
    hint = f"; after changing tutorials/{name}, run `python tests/test_translations.py` to carry it over"
    assert not missing, f"tutorials/zh-CN/{name}: no Chinese text for the English cells {missing}{hint}"
    assert [(c["cell_type"], c.get("id")) for c in chinese["cells"]] == \
        [(c["cell_type"], c.get("id")) for c in english["cells"]], f"tutorials/zh-CN/{name}: not the same cells{hint}"
    assert chinese == rebuilt, f"tutorials/zh-CN/{name}: code cells, outputs or metadata differ from the English{hint}"
    for en_cell, zh_cell in zip(english["cells"], chinese["cells"]):
        if en_cell["cell_type"] != "markdown":
            continue
        en, zh, where = _source(en_cell), _source(zh_cell), f"tutorials/zh-CN/{name}, cell {en_cell.get('id')}"
        _both_ways(where, fenced(en), fenced(zh), "the fenced code blocks")
        _both_ways(where, code_spans(en), code_spans(zh), "the inline code spans")
        _both_ways(where, figures(en), figures(zh), "the numbers in the text")
        _both_ways(where, pictures(en), pictures(zh), "the pictures")
        assert len(ANSWER_MARKER.findall(en)) == len(ANSWER_MARKER.findall(zh)), f"{where}: not the same ANSWER spans"
        assert re.search(r"[\u4e00-\u9fff]", prose(zh)), f"{where}: no Chinese text"


def _sync_notebooks():
    """Carry a changed (re-executed) English notebook over: its code, outputs and metadata, the Chinese text kept."""
    status = 0
    for name in NOTEBOOKS:
        path = ROOT / "tutorials" / "zh-CN" / name
        rebuilt, missing = synced(_notebook(ROOT / "tutorials" / name), _notebook(path))
        if missing:
            print(f"{path}: translate the new English cells {missing} first (add them with those ids); not written")
            status = 1
            continue
        path.write_text(json.dumps(rebuilt, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path}: synced")
    return status


if __name__ == "__main__":
    raise SystemExit(_sync_notebooks())


# ---------------------------------------------------------------- the troubleshooting section quotes what the code prints

# Each message a user may meet while getting data, as the section quotes it ("…" where the message
# names a file, a URL, a number): the test makes the code print each one and matches it.
QUOTED = [
    "could not download … (nothing was saved to …)",
    "Tried … URLs, in order:",
    "Copy these files by hand into …, then run the command again.",
    "Or set MINIRES_DATA_MIRROR (or --mirror) to a mirror, such as a copy of a filled cache folder.",
    "[Errno 111] Connection refused",
    "HTTP Error 404: Not Found",
    "timed out (no answer)",
    "gave up after … s, the deadline for …: only … of … bytes came (a stalled or very slow server)",
    "corrupted download (md5 …, expected …)",
    "the server announces … bytes, but … has …; it is not the expected file",
    "the server sent more than the … bytes of …; it is not the expected file",
    "was truncated: received … of … bytes",
    "damaged gzip file (…); delete it and download it again",
]
HOME = "/home/you/.cache/minires"  # the cache folder the section's examples show


def troubleshooting():
    found = dict(ZH_ONLY.findall((ROOT / "README.zh-CN.md").read_text(encoding="utf-8")))
    return found["troubleshooting"]


def test_only_the_chinese_materials_and_troubleshooting_are_chinese_only():
    """The zh-CN-only sections escape the comparisons, so there are exactly these two, and nothing else is."""
    for en, zh in PAIRS:
        names = [m.group("what") for m in ZH_ONLY.finditer((ROOT / zh).read_text(encoding="utf-8"))]
        assert names == (["Chinese materials", "troubleshooting"] if zh == "README.zh-CN.md" else []), (zh, names)
        assert "zh-CN only" not in read(zh), f"{zh}: a zh-CN-only marker that does not close its section"


def _messages(tmp_path, monkeypatch):
    """What the code prints, for every failure the section quotes (loopback servers, no network)."""
    import gzip
    import socket
    import threading

    import test_download as td
    from minires import cli
    from minires.data import DataFormatError, DownloadError, get_dataset
    from minires.data import download as dl
    from minires.data.formats import read_idx

    monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("MINIRES_DATA_MIRROR", raising=False)
    server = td.Server(monkeypatch)
    out = []

    def failing(call, error=DownloadError):
        with pytest.raises(error) as info:
            call()
        out.append(str(info.value))

    try:
        files, _, _ = td.mnist_files()
        td.serve_mnist(server, files, algorithm="md5")
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{refused.getsockname()[1]}"
        refused.close()
        name = "train-images-idx3-ubyte.gz"
        body = files[name]
        server.serve(name, body[:40] + bytes([body[40] ^ 1]) + body[41:])  # corrupted
        monkeypatch.setenv("MINIRES_DATA_MIRROR", f"{dead},{server.url('nothing-here')}")  # refused, 404
        failing(lambda: get_dataset("mnist"))
        monkeypatch.delenv("MINIRES_DATA_MIRROR")
        server.serve(name, body + b"x")  # announces too many bytes
        failing(lambda: get_dataset("mnist"))
        server.serve(name, body + b"x", mode="no-length")  # sends too many
        failing(lambda: get_dataset("mnist"))
        server.serve(name, body, mode="truncate")
        failing(lambda: get_dataset("mnist"))
        resource = dl.Resource("big.bin", server.url("big.bin"), "md5", "0" * 32, 1 << 18)
        server.serve("big.bin", bytes(1 << 18))
        clock = iter([0.0] + [1000.0] * 100)  # the deadline passes after the first chunk
        monkeypatch.setattr(dl.time, "monotonic", lambda: next(clock))
        failing(lambda: dl.download(resource, str(tmp_path / "d"), progress=False, deadline=30))
        monkeypatch.undo()  # the clock, and the environment: set again below
        monkeypatch.setenv("MINIRES_DATA", str(tmp_path / "cache"))
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        silent = socket.socket()  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        try:
            mute = dl.Resource("mute.bin", f"http://127.0.0.1:{silent.getsockname()[1]}/mute.bin", "md5", "0" * 32, 4)
            failing(lambda: dl.download(mute, str(tmp_path / "m"), progress=False, timeout=0.3))
        finally:
            silent.close()
        bad = tmp_path / "bad.gz"
        bad.write_bytes(gzip.compress(b"0123456789" * 50)[:30])
        failing(lambda: read_idx(bad), DataFormatError)
        failing(lambda: get_dataset("mnist", download=False), FileNotFoundError)
        err = __import__("io").StringIO()
        with __import__("contextlib").redirect_stderr(err):
            assert cli.main(["train", "--mirror", "ftp://mirror.example.org/minires"]) == 2
        out.append(err.getvalue().strip().splitlines()[-1])
    finally:
        server.close()
    return out


def test_the_troubleshooting_section_quotes_what_the_code_prints(tmp_path, monkeypatch):
    section = troubleshooting()
    printed = _messages(tmp_path, monkeypatch)
    text = "\n".join(printed)
    for quote in QUOTED:
        assert f"`{quote}" in section, f"README.zh-CN.md's troubleshooting section does not quote {quote!r}"
        pattern = ".+?".join(re.escape(part) for part in quote.split("…"))
        assert re.search(pattern, text), f"the code no longer prints {quote!r}; the messages now:\n{text}"
    # the whole examples, with the test's folders replaced by the section's
    cache = str(tmp_path / "cache")
    first = re.sub(r"Tried \d+ URLs", "Tried 2 URLs", printed[0].splitlines()[0].replace(cache, HOME))  # 3 here
    assert first in section, f"the section's example does not begin as the code's message: {first!r}"
    from minires.data import datasets
    from minires.data.download import copy_by_hand
    order = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    ending = copy_by_hand([datasets.RESOURCES["mnist"][f] for f in order], f"{HOME}/mnist")
    assert ending in section, f"the section's example does not end as the code's message:\n{ending}"
    for line in printed[-2:]:  # download=False, and a --mirror minires cannot read
        line = line.replace(cache, HOME)
        assert line in section, f"the section does not quote {line!r}"
