"""The real-text corpus of the quality experiment (run/specs/quality.py): the English documentation that ships inside
CPython itself, so every machine that runs the plugin has it and nobody tuned anything on it.

The pydoc topic pages (`pydoc_data.topics`) and the docstrings of the standard library's modules, classes and
functions (read with `ast`, nothing is imported), one document per line, one character per token (whitespace made
visible, since fairseq's dictionary splits tokens on it).  Documents go to train / valid / test by a hash of their
text (about 90 / 5 / 5), so a document is never split across sets.  The corpus's size and SHA-256 are recorded in
OUT/corpus.json: a different Python version ships different text.
"""
import ast
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from typing import Dict, List

from ..util.io import install_dir, temp_dir_beside, write_atomic

SPACE, NEWLINE = "\u2581", "\u21b5"  # visible stand-ins: fairseq's dictionary splits tokens on whitespace
MIN_DOC = 200
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}
SPLITS = ("train", "valid", "test")
META = "corpus.json"


def documents(docstrings: bool = True) -> List[str]:
    import pydoc_data.topics

    docs = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    root = sysconfig.get_paths()["stdlib"] if docstrings else os.devnull
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(f for f in filenames if f.endswith(".py")):
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        docs.append(doc)
    return [d.strip() for d in docs if len(d.strip()) >= MIN_DOC]


def characters(doc: str) -> str:
    return " ".join(NEWLINE if c == "\n" else SPACE if c.isspace() else c for c in doc)


def split_of(doc: str) -> str:
    bucket = int(hashlib.sha256(doc.encode("utf-8")).hexdigest()[:8], 16) % 20
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def write_corpus(raw: str, limit: int = 0) -> Dict:
    """Write train/valid/test.txt into `raw`; returns what was written (sizes, checksum).  `limit` > 0: the first
    `limit` pydoc topic pages only (a tiny corpus for checking the chain)."""
    docs = sorted(set(documents(docstrings=not limit)))
    if limit:
        docs = docs[:limit]
    os.makedirs(raw, exist_ok=True)
    counts = {s: 0 for s in SPLITS}
    files = {s: open(os.path.join(raw, f"{s}.txt"), "w", encoding="utf-8") for s in SPLITS}
    digest = hashlib.sha256()
    try:
        for doc in docs:
            s = split_of(doc)
            files[s].write(characters(doc) + "\n")
            counts[s] += len(doc)
            digest.update(doc.encode("utf-8"))
    finally:
        for f in files.values():
            f.close()
    return {"source": "CPython's pydoc topics and standard-library docstrings", "python": sys.version.split()[0],
            "documents": len(docs), "characters": counts, "sha256": digest.hexdigest()}


def prepare(out: str, limit: int = 0) -> Dict:
    """OUT/raw (the text), OUT/data-bin (fairseq-preprocess --only-source) and OUT/corpus.json, built beside OUT and
    renamed into place; returns what corpus.json records."""
    from .build import fairseq_preprocess, scrub_log

    out = os.path.abspath(out)
    tmp = temp_dir_beside(out)
    try:
        raw = os.path.join(tmp, "raw")
        info = write_corpus(raw, limit)
        print(f"corpus: {info['documents']} documents, characters {info['characters']}", flush=True)
        prefs = [a for s in SPLITS for a in (f"--{s}pref", os.path.join(raw, f"{s}.txt"))]
        fairseq_preprocess(["--only-source", *prefs,
                            "--destdir", os.path.join(tmp, "data-bin"), "--workers", "1"])
        scrub_log(os.path.join(tmp, "data-bin", "preprocess.log"), tmp)
        write_atomic(os.path.join(tmp, META), json.dumps(info, indent=1) + "\n")
        install_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def read_info(out: str) -> Dict:
    with open(os.path.join(out, META), encoding="utf-8") as f:
        return json.load(f)
