"""The prepare scripts (scripts/prepare-*.sh) end to end on fixtures in the published formats, their output contract,
fairseq loading what they wrote, bad input (one line on stderr, exit 2, nothing that looks complete), resuming, and
the resumable downloader against a local HTTP server."""
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from kvattn_fairseq.data import cnndm, download, fixtures, wmt16
from kvattn_fairseq.data.common import clean
from kvattn_fairseq.util.errors import OneLineError

from conftest import USER_DIR, run, run_cli

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"wmt16": "prepare-wmt16-en-de.sh", "cnndm": "prepare-cnndm.sh", "wikitext103": "prepare-wikitext103.sh"}


def prepare(dataset: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return run(["bash", REPO / "scripts" / SCRIPTS[dataset], *args, "--workers", "2"], env=env, timeout=600,
               check=check)


def assert_one_line_error(proc: subprocess.CompletedProcess, prog: str, *needles: str) -> str:
    """Exit 2, no traceback, and the error is one line naming the problem (fairseq's import-time INFO lines aside)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("INFO:fairseq")]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_complete(out: Path) -> None:
    assert not out.exists()
    for sibling in out.parent.glob(out.name + "*"):
        assert not (sibling / "prepare.json").exists(), sibling


def assert_contract_common(out: Path) -> dict:
    info = json.loads((out / "prepare.json").read_text())
    newest = max(p.stat().st_mtime for p in out.rglob("*") if p.is_file() and p.name != "prepare.json")
    assert (out / "prepare.json").stat().st_mtime >= newest  # written last
    text = (out / "prepare.json").read_text()
    assert str(out.parent) not in text and ".tmp-" not in text  # no machine paths
    assert ".tmp-" not in (out / "data-bin" / "preprocess.log").read_text()
    assert not list(out.parent.glob(out.name + ".tmp-*"))
    return info


def decode_split(data_bin: Path, prefix: str, lang: str):
    """Every sentence of a binarized split, turned back into text the way fairseq-generate's
    `--post-process sentencepiece` (and `--bpe sentencepiece`) does."""
    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(data_bin / f"dict.{lang}.txt"))
    ds = data_utils.load_indexed_dataset(str(data_bin / f"{prefix}.{lang}"), d)
    return [data_utils.post_process(d.string(ds[i]), "sentencepiece") for i in range(len(ds))], d, ds


@pytest.fixture(scope="module")
def raw_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    proc = run([sys.executable, "-m", "kvattn_fairseq.data.fixtures", "wmt16", str(root / "wmt16")],
               env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=None)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(root / "wmt16")) == sorted(os.path.basename(p) for p in proc.stdout.split())
    fixtures.cnndm(str(root / "cnndm"))
    fixtures.wikitext103(str(root / "wikitext103"))
    return root


@pytest.fixture(scope="module")
def prepared(raw_dirs, tmp_path_factory):
    """Each dataset prepared once from its fixture; CNN/DM with a short source limit so truncation happens."""
    out = tmp_path_factory.mktemp("prepared")
    extra = {"cnndm": ["--max-source-positions", "64"]}
    for name in SCRIPTS:
        prepare(name, "--out", out / name, "--raw", raw_dirs / name, "--tiny", *extra.get(name, []))
    return out


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_wmt16_contract(prepared):
    out = prepared / "wmt16"
    info = assert_contract_common(out)
    names = {p.name for p in (out / "data-bin").iterdir()}
    for split in ("train", "valid", "test"):
        for lang in ("en", "de"):
            assert {f"{split}.en-de.{lang}.bin", f"{split}.en-de.{lang}.idx"} <= names
    assert (out / "data-bin/dict.en.txt").read_text() == (out / "data-bin/dict.de.txt").read_text()  # joined
    test_en = (out / "test.en").read_text(encoding="utf-8").splitlines()
    test_de = (out / "test.de").read_text(encoding="utf-8").splitlines()
    assert len(test_en) == len(test_de) == 80 == info["splits"]["test"]["pairs"]
    assert test_en[7] == "AT&T said so."  # sacreBLEU's segment text: whitespace collapsed, '&' as is
    hyps_de, d, ds = decode_split(out / "data-bin", "test.en-de", "de")
    hyps_en, _, _ = decode_split(out / "data-bin", "test.en-de", "en")
    assert hyps_de == [clean(l) for l in test_de] and hyps_en == [clean(l) for l in test_en]
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert all(sp.decode(sp.encode(l)) == l for l in test_de)  # spm.model alone decodes its own pieces
    assert [sp.decode_pieces(d.string(ds[i]).split()) for i in range(len(ds))] == hyps_de
    train = info["splits"]["train"]
    assert train["corpora"]["europarl"] == {"pairs": 220, "kept": 219}  # the empty pair
    assert train["dropped_by_length_filter"] >= 1  # the over-long pair
    assert info["splits"]["valid"]["pairs"] == 60 and info["subword"]["vocab_size"] <= 320
    assert [s["checksum"]["status"] for s in info["sources"]] == ["mismatch"] * 5  # fixtures are not the real files


@pytest.mark.slow
def test_wmt16_trains_in_fairseq(prepared, tmp_path):
    proc = run_cli("fairseq-train", prepared / "wmt16" / "data-bin", "--arch", "transformer", "--task", "translation",
                   "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
                   "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
                   "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings",
                   "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--max-update", "1", "--cpu",
                   "--no-save", "--log-format", "simple", "--user-dir", USER_DIR, "--save-dir", tmp_path)
    assert "done training" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_cnndm_contract(prepared):
    out = prepared / "cnndm"
    info = assert_contract_common(out)
    source = (out / "test.source").read_text(encoding="utf-8").splitlines()
    target = (out / "test.target").read_text(encoding="utf-8").splitlines()
    refs = [json.loads(l) for l in (out / "test.ref.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(source) == len(target) == len(refs) == 20 == info["splits"]["test"]["examples"]
    assert all(isinstance(r, list) and len(r) >= 2 for r in refs)
    assert [" ".join(r) for r in refs] == target
    assert any(s.endswith(" .") for r in refs for s in r)  # highlights without a sentence end got " ." (HF 3.0.0)
    assert info["splits"]["train"] == {"listed": 120, "examples": 119, "dropped_empty": 1,
                                       "sources_truncated": info["splits"]["train"]["sources_truncated"]}
    hyps, d, _ = decode_split(out / "data-bin", "test.source-target", "target")
    assert hyps == [clean(t) for t in target]
    assert (out / "data-bin/dict.source.txt").read_text() == (out / "data-bin/dict.target.txt").read_text()

    from fairseq.tasks.translation import load_langpair_dataset

    ds = load_langpair_dataset(str(out / "data-bin"), "test", "source", d, "target", d, combine=False,
                               dataset_impl="mmap", upsample_primary=1, left_pad_source=True, left_pad_target=False,
                               max_source_positions=64, max_target_positions=1024)
    assert len(ds) == 20 and max(ds.src_sizes) == 64  # truncated: 63 pieces + </s>
    assert info["splits"]["test"]["sources_truncated"] > 0
    sources, _, _ = decode_split(out / "data-bin", "test.source-target", "source")
    assert all(clean(full).startswith(cut) for full, cut in zip(source, sources))  # test.source is the full article


@pytest.mark.slow
def test_wikitext103_contract(prepared, raw_dirs):
    out = prepared / "wikitext103"
    info = assert_contract_common(out)
    assert {"dict.txt", "train.bin", "train.idx", "valid.bin", "valid.idx", "test.bin", "test.idx"} <= \
        {p.name for p in (out / "data-bin").iterdir()}
    import zipfile

    with zipfile.ZipFile(raw_dirs / "wikitext103" / "wikitext-103-v1.zip") as zf:
        train = zf.read("wikitext-103/wiki.train.tokens").decode().splitlines()
        test = zf.read("wikitext-103/wiki.test.tokens").decode().splitlines()
    vocab = {l.split()[0] for l in (out / "data-bin/dict.txt").read_text().splitlines()}
    assert {w for l in train for w in l.split()} - {"<unk>"} <= vocab  # no threshold: every training word

    from fairseq.data import Dictionary, data_utils

    d = Dictionary.load(str(out / "data-bin/dict.txt"))
    ds = data_utils.load_indexed_dataset(str(out / "data-bin/test"), d)
    assert len(ds) == len(test) == info["splits"]["test"]["lines"]
    assert d.string(ds[1]) == test[1].strip()
    assert info["data_bin"]["dictionary_size"] == len(d)


@pytest.mark.slow
def test_prepared_dir_is_skipped_then_forced(prepared, raw_dirs):
    out = prepared / "wikitext103"
    before = (out / "prepare.json").read_text()
    proc = prepare("wikitext103", "--out", out, "--raw", raw_dirs / "wikitext103", "--tiny")
    assert "already prepared" in proc.stdout and (out / "prepare.json").read_text() == before
    prepare("wikitext103", "--out", out, "--raw", raw_dirs / "wikitext103", "--tiny", "--force")
    assert json.loads((out / "prepare.json").read_text())["splits"] == json.loads(before)["splits"]
    assert not list(out.parent.glob("wikitext103.old-*")) and not list(out.parent.glob("wikitext103.tmp-*"))


def _cli(module, argv, capsys):
    """A prepare command's main in this process (the refusals come before any work): (exit status, its one line)."""
    code = module.cli([str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return code, lines[0]


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_not_reused(prepared, raw_dirs, capsys):
    out, raw = prepared / "wmt16", raw_dirs / "wmt16"
    before = (out / "prepare.json").read_text()
    for change, named in ((["--tiny", "--bpe-size", "500"], "bpe_size"), (["--tiny", "-s", "de", "-t", "en"],
                                                                          "source_lang 'en' -> 'de'"),
                          ([], "tiny True -> False")):
        code, line = _cli(wmt16, ["--out", out, "--raw", raw, *change], capsys)
        assert code == 2 and "was prepared with other settings" in line and named in line and "--force" in line
    assert (out / "prepare.json").read_text() == before


@pytest.mark.slow
def test_force_never_removes_the_users_files_or_the_raw_input(prepared, raw_dirs, tmp_path, capsys):
    from kvattn_fairseq.data import wikitext103

    out = prepared / "wikitext103"
    kept = out / "notes.txt"
    kept.write_text("the user's")
    try:
        code, line = _cli(wikitext103, ["--out", out, "--raw", raw_dirs / "wikitext103", "--tiny", "--force"], capsys)
        assert code == 2 and "holds files this tool did not make (notes.txt)" in line
        assert kept.read_text() == "the user's" and (out / "prepare.json").exists()
    finally:
        kept.unlink()
    raw = tmp_path / "raw"
    shutil.copytree(raw_dirs / "wikitext103", raw)
    listing = sorted(os.listdir(raw))
    for target in (raw, raw / "inside"):  # --out equal to --raw, or inside it
        code, line = _cli(wikitext103, ["--out", target, "--raw", raw, "--force"], capsys)
        assert code == 2 and "overlap" in line and "--raw" in line
    assert sorted(os.listdir(raw)) == listing


# ---------------------------------------------------------------------------------------------------- bad input
def test_an_empty_out_is_not_the_current_directory(tmp_path, capsys, monkeypatch):
    from kvattn_fairseq.data import wikitext103

    monkeypatch.chdir(tmp_path)
    code, line = _cli(wikitext103, ["--out", "", "--raw", tmp_path], capsys)
    assert code == 2 and line == "prepare-wikitext103: error: --out: an empty path; give a directory (it is created " \
                                 "if needed)"
    assert os.listdir(tmp_path) == [] and not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp-*"))


def test_wikitext_that_is_not_utf8_text_is_one_line_before_binarizing(tmp_path, capsys):
    """fairseq-preprocess would stop on such a file with a traceback ('negative seek position -1')."""
    from kvattn_fairseq.data import wikitext103

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for split in ("valid", "test"):
        (raw / f"wiki.{split}.tokens").write_text(" = Valkyria = \n the game \n")
    (raw / "wiki.train.tokens").write_bytes(b" = Title = \n text \n\x1f\x8b\x08\xff gzip, not text \n")
    code, line = _cli(wikitext103, ["--out", out, "--raw", raw], capsys)
    assert code == 2 and line.startswith(f"prepare-wikitext103: error: {raw / 'wiki.train.tokens'} is not UTF-8 "
                                         f"text (line 3, byte 20: invalid start byte)"), line
    assert_nothing_complete(out)


@pytest.mark.slow
def test_bad_raw_path_and_language_pair(tmp_path):
    out = tmp_path / "out"
    proc = prepare("wmt16", "--out", out, "--raw", tmp_path / "nowhere", check=False)
    assert_one_line_error(proc, "prepare-wmt16-en-de", "--raw", "no such directory")
    (tmp_path / "raw").mkdir()
    proc = prepare("wmt16", "--out", out, "--raw", tmp_path / "raw", "-s", "fr", "-t", "en", check=False)
    assert_one_line_error(proc, "prepare-wmt16-en-de", "--source-lang fr")
    assert_nothing_complete(out)


@pytest.mark.slow
def test_missing_file_names_the_download(raw_dirs, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(raw_dirs / "wmt16", raw)
    (raw / "test-full.tgz").unlink()
    proc = prepare("wmt16", "--out", tmp_path / "out", "--raw", raw, check=False)
    assert_one_line_error(proc, "prepare-wmt16-en-de", "test-full.tgz", "https://statmt.org/wmt14/test-full.tgz")
    assert_nothing_complete(tmp_path / "out")


@pytest.mark.slow
def test_truncated_tgz_fails_then_resumes(raw_dirs, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(raw_dirs / "wmt16", raw)
    good = (raw / "training-parallel-commoncrawl.tgz").read_bytes()
    (raw / "training-parallel-commoncrawl.tgz").write_bytes(good[: len(good) // 2])
    proc = prepare("wmt16", "--out", out, "--raw", raw, "--tiny", check=False)
    assert_one_line_error(proc, "prepare-wmt16-en-de", "training-parallel-commoncrawl.tgz", "truncated or corrupt",
                          "rerun")
    assert_nothing_complete(out)
    (raw / "training-parallel-commoncrawl.tgz").write_bytes(good)
    proc = prepare("wmt16", "--out", out, "--raw", raw, "--tiny")
    assert "extract-training-parallel-europarl-v7.tgz: done earlier, skipped" in proc.stdout
    assert (out / "prepare.json").exists()


@pytest.mark.slow
def test_wikitext_truncated_zip_and_wrong_layout(raw_dirs, tmp_path):
    import zipfile

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    good = (raw_dirs / "wikitext103" / "wikitext-103-v1.zip").read_bytes()
    (raw / "wikitext-103-v1.zip").write_bytes(good[:-300])
    proc = prepare("wikitext103", "--out", out, "--raw", raw, check=False)
    assert_one_line_error(proc, "prepare-wikitext103", "wikitext-103-v1.zip", "truncated or corrupt")
    assert_nothing_complete(out)
    assert not list(tmp_path.glob("out.tmp-*"))  # nothing finished, nothing kept
    with zipfile.ZipFile(raw / "wikitext-103-v1.zip", "w") as zf:  # e.g. WikiText-2 saved under the 103 name
        zf.writestr("wikitext-2/wiki.train.tokens", " = A = \n")
    proc = prepare("wikitext103", "--out", out, "--raw", raw, check=False)
    assert_one_line_error(proc, "prepare-wikitext103", "wikitext-103/wiki.train.tokens", "layout")
    assert_nothing_complete(out)


@pytest.mark.slow
def test_cnndm_story_missing_and_unfinished_outdir(raw_dirs, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(raw_dirs / "cnndm", raw)
    for archive in ("cnn_stories.tgz", "dailymail_stories.tgz"):  # --raw may hold the extracted story folders
        with tarfile.open(raw / archive) as tf:
            tf.extractall(raw, filter="data")
        (raw / archive).unlink()
    with open(raw / "all_test.txt", "a") as f:
        f.write("http://www.cnn.com/not/in/the/archives.html\n")
    proc = prepare("cnndm", "--out", out, "--raw", raw, "--tiny", check=False)
    assert_one_line_error(proc, "prepare-cnndm", "1 of the 21 stories all_test.txt lists",
                          hashlib.sha1(b"http://www.cnn.com/not/in/the/archives.html").hexdigest())
    assert "collect-train: done" in proc.stdout  # the train and valid stories were read from the folders
    assert_nothing_complete(out)
    out.mkdir()
    (out / "something.txt").write_text("not ours")
    proc = prepare("cnndm", "--out", out, "--raw", raw, check=False)
    assert_one_line_error(proc, "prepare-cnndm", "no prepare.json", "--force")
    assert (out / "something.txt").exists()


# ---------------------------------------------------------------------------------------------------- pieces
def test_raw_accepts_archives_or_extracted_files(tmp_path):
    remote = wmt16.TRAIN["europarl"]
    assert download.locate(remote, str(tmp_path)) is None
    (tmp_path / remote.name).write_bytes(b"")
    assert download.locate(remote, str(tmp_path)) == ("archive", str(tmp_path / remote.name))
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "europarl-v7.de-en.de").write_text("x\n")  # at its path inside the archive
    (tmp_path / "europarl-v7.de-en.en").write_text("x\n")  # or by its bare name
    kind, files = download.locate(remote, str(tmp_path))
    assert kind == "files" and files == {"training/europarl-v7.de-en.de": str(tmp_path / remote.members[0]),
                                         "training/europarl-v7.de-en.en": str(tmp_path / "europarl-v7.de-en.en")}
    (tmp_path / "cnn" / "stories").mkdir(parents=True)
    assert download.locate(cnndm.STORIES["cnn"], str(tmp_path)) == ("tree", str(tmp_path / "cnn" / "stories"))


def test_story_parsing_matches_huggingface_rules():
    text = "(CNN) -- First line\n\nSecond line.\n\n@highlight\n\nNo period here\n\n@highlight\n\nDone!\n"
    assert cnndm.parse_story(text) == (["(CNN) -- First line .", "Second line."], ["No period here .", "Done!"])
    assert cnndm.parse_story("@highlight\n\nonly a highlight\n") == ([], ["only a highlight ."])


def test_sgm_reading_matches_sacrebleu(raw_dirs, tmp_path):
    from sacrebleu.dataset import DATASETS

    members = download.extract(str(raw_dirs / "wmt16" / "test-full.tgz"), ["test-full/newstest2014-deen-ref.de.sgm"],
                               str(tmp_path))
    path = members["test-full/newstest2014-deen-ref.de.sgm"]
    DATASETS["wmt14/full"]._convert_format(path, str(tmp_path / "sacrebleu.txt"))
    assert wmt16.read_sgm(path) == (tmp_path / "sacrebleu.txt").read_text(encoding="utf-8").splitlines()


def test_published_checksums_match_sacrebleu_table():
    from sacrebleu.dataset import DATASETS

    remotes = wmt16.eval_remotes("en", "de")
    for split, name in (("valid", "wmt13"), ("test", "wmt14/full")):
        assert remotes[split].checksum[1] == DATASETS[name].md5[0]
        assert remotes[split].urls[0] == DATASETS[name].data[0]
        assert set(remotes[split].members) <= {m for pair in DATASETS[name].langpairs.values() for m in pair}


def test_clean_keeps_text_and_drops_invisible_characters():
    assert clean("  Fu\u00dfg\u00e4nger\u00a0und\tmehr\r\n") == "Fußgänger und mehr"
    assert clean("soft\u00adhyphen zero\u200bwidth bell\x07 meta\u2581sym") == "softhyphen zerowidth bell meta sym"
    assert clean("\u2026 \u201equotes\u201c") == "\u2026 \u201equotes\u201c"  # no NFKC rewriting


# ---------------------------------------------------------------------------------------------------- downloads
class _Server:
    """A local HTTP server for one payload, with Range support, that can be told to cut a response short."""

    def __init__(self, payload: bytes):
        self.payload, self.cut_at, self.ranges = payload, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                start = 0
                if self.headers.get("Range"):
                    server.ranges.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                self.wfile.write(body if server.cut_at is None else body[: max(0, server.cut_at - start)])

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client hanging up early is part of the tests
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.tgz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server(os.urandom(3 << 20))
    yield s
    s.close()


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    remote = download.Remote("data.tgz", (server.url,), None,
                             ("sha256", hashlib.sha256(server.payload).hexdigest(), "the test"))
    server.cut_at = len(server.payload) // 3
    with pytest.raises(OneLineError, match="incomplete.*rerun to resume"):
        download.download(remote, str(tmp_path), attempts=1)
    assert (tmp_path / "data.tgz.part").stat().st_size == len(server.payload) // 3
    assert not (tmp_path / "data.tgz").exists()
    server.cut_at = None
    path, status = download.download(remote, str(tmp_path), attempts=1)
    assert server.ranges == [f"bytes={len(server.payload) // 3}-"] and status == "verified"
    assert Path(path).read_bytes() == server.payload and not (tmp_path / "data.tgz.part").exists()
    assert download.download(remote, str(tmp_path))[1] == "verified"  # already there: not fetched again
    assert len(server.ranges) == 1


def test_download_rejects_a_checksum_mismatch_and_tries_mirrors(server, tmp_path):
    remote = download.Remote("data.tgz", ("http://127.0.0.1:9/closed", server.url), None,
                              ("md5", "0" * 32, "the test"))
    with pytest.raises(OneLineError, match="does not match its published md5"):
        download.download(remote, str(tmp_path), attempts=1)
    assert not list(tmp_path.iterdir())
    path, status = download.download(remote, str(tmp_path), attempts=1, ignore_checksums=True)
    assert status.startswith("skipped") and Path(path).read_bytes() == server.payload
    sized = download.Remote("other.tgz", (server.url,), 123)  # e.g. a host answering with an error page
    with pytest.raises(OneLineError, match="serves 3145728 bytes, the published file has 123"):
        download.download(sized, str(tmp_path), attempts=1)
    assert not (tmp_path / "other.tgz.part").exists()


def test_download_unreachable_is_one_clear_error(tmp_path):
    remote = download.Remote("x.zip", ("http://127.0.0.1:9/x.zip",))
    with pytest.raises(OneLineError, match=r"could not download x.zip \(http://127.0.0.1:9/x.zip: .*\); .*--raw DIR"):
        download.download(remote, str(tmp_path), attempts=1, timeout=5)
