"""Small stand-ins for the published files, in their real formats and archive layouts, for tests and dry runs.

    python -m kvattn_fairseq.data.fixtures {wmt16,cnndm,wikitext103} DIR

writes into DIR the files the prepare command would download, under their published names (so DIR works as
--raw): WMT's training .tgz archives with the parallel corpora where the real ones keep them, and the newstest
SGML files inside wmt13/test.tgz and wmt14/test-full.tgz; CNN/DailyMail's cnn_stories.tgz and dailymail_stories.tgz
(`<sha1 of url>.story` files) with abisee's all_{train,val,test}.txt URL lists; WikiText-103's wikitext-103-v1.zip.
The text is synthetic (a few hundred lines from a small En-De lexicon), with the quirks the real files have: empty
lines, over-long pairs, stray carriage returns and control characters, stories without an article.
"""
import gzip
import hashlib
import io
import os
import random
import tarfile
import zipfile
from typing import Dict, List, Tuple

from ..util.cli import ArgumentParser

SUBJECTS = [("the Commission", "die Kommission"), ("the Parliament", "das Parlament"),
            ("the government", "die Regierung"), ("our citizens", "unsere Bürger"), ("the Council", "der Rat"),
            ("this report", "dieser Bericht"), ("the market", "der Markt"), ("the city of Gutach", "die Stadt Gutach"),
            ("many farmers", "viele Bauern"), ("the new mayor", "der neue Bürgermeister")]
VERBS = [("supports", "unterstützt"), ("needs", "braucht"), ("welcomes", "begrüßt"), ("examines", "prüft"),
         ("changes", "ändert"), ("criticises", "kritisiert"), ("finances", "finanziert")]
OBJECTS = [("the proposal", "den Vorschlag"), ("a new strategy", "eine neue Strategie"),
           ("the budget", "den Haushalt"), ("more security for pedestrians", "mehr Sicherheit für Fußgänger"),
           ("the agreement", "das Abkommen"), ("clear rules", "klare Regeln"),
           ("3.5 million euros", "3,5 Millionen Euro"), ("the bridge over the Rhine", "die Brücke über den Rhein")]
ADVERBS = [("today", "heute"), ("in 2014", "im Jahr 2014"), ("again", "erneut"), ("at last", "endlich"),
           ("without delay", "unverzüglich")]


def sentence_pair(rng: random.Random) -> Tuple[str, str]:
    (se, sd), (ve, vd), (oe, od), (ae, ad) = (rng.choice(x) for x in (SUBJECTS, VERBS, OBJECTS, ADVERBS))
    en, de = f"{se[0].upper()}{se[1:]} {ve} {oe} {ae}", f"{sd[0].upper()}{sd[1:]} {vd} {ad} {od}"
    kind = rng.random()
    if kind < 0.1:
        return f'"{en}," said the spokesman.', f"„{de}“, sagte der Sprecher."
    if kind < 0.2:
        return f"Does {se} really need {oe}?", f"Braucht {sd} wirklich {od}?"
    return en + ".", de + "."


def parallel(n: int, seed: int) -> List[Tuple[str, str]]:
    rng = random.Random(seed)
    return [sentence_pair(rng) for _ in range(n)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1262304000, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_tgz(path: str, files: Dict[str, bytes]) -> str:
    """A .tgz with directory entries first, as tar writes them; fixed times so the bytes are reproducible."""
    dirs = sorted({"/".join(n.split("/")[:i]) + "/" for n in files for i in range(1, n.count("/") + 1)})
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d.rstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1262304000
            tar.addfile(info)
        for name, data in files.items():
            _add(tar, name, data)
    return path


def _text(lines: List[str]) -> bytes:
    return "".join(l + "\n" for l in lines).encode("utf-8")


def sgm(pairs: List[str], setid: str, kind: str, lang: str, docs: int = 4) -> bytes:
    head = (f'<srcset setid="{setid}" srclang="any">' if kind == "src"
            else f'<refset setid="{setid}" srclang="any" trglang="{lang}">')
    out, per_doc = [head], (len(pairs) + docs - 1) // docs
    for d in range(docs):
        out += [f'<doc sysid="{kind if kind == "src" else "ref"}" docid="{1000 + d}-fixture" genre="news" '
                f'origlang="en">', "<p>"]
        for i in range(d * per_doc, min(len(pairs), (d + 1) * per_doc)):
            out.append(f'<seg id="{i - d * per_doc + 1}">{pairs[i]}</seg>')
        out += ["</p>", "</doc>"]
    out.append("</srcset>" if kind == "src" else "</refset>")
    return _text(out)


def wmt16(out: str) -> List[str]:
    os.makedirs(out, exist_ok=True)
    europarl = parallel(220, 1)
    europarl[5] = ("", "")  # Europarl has empty lines
    europarl[9] = (europarl[9][0], europarl[9][1].replace(" ", "\r", 1))  # a stray carriage return inside a line
    europarl[12] = (" ".join([europarl[12][0]] * 40), " ".join([europarl[12][1]] * 40))  # far over 250 pieces
    crawl = parallel(160, 2)
    crawl[3] = (crawl[3][0] + "\x07", "\u200b" + crawl[3][1])  # crawled text carries control/format characters
    news = parallel(120, 3)
    news[0] = ("AT&T and Fish & Chips said so.", "AT&T und Fish & Chips sagten das.")
    valid, test = parallel(60, 4), parallel(80, 5)
    test[7] = ("AT&T  said  so.", "AT&T  sagte  das.")  # raw '&' and double spaces, as in the real SGML
    side = lambda pairs, i: _text([p[i] for p in pairs])  # noqa: E731
    files = [
        write_tgz(os.path.join(out, "training-parallel-europarl-v7.tgz"), {
            "training/europarl-v7.de-en.de": side(europarl, 1), "training/europarl-v7.de-en.en": side(europarl, 0),
            "training/europarl-v7.fr-en.fr": _text(["Bonjour ."] * 5), "training/europarl-v7.fr-en.en":
                _text(["Hello ."] * 5)}),
        write_tgz(os.path.join(out, "training-parallel-commoncrawl.tgz"), {
            "commoncrawl.de-en.annotation": _text(["crawl"] * len(crawl)),
            "commoncrawl.de-en.de": side(crawl, 1), "commoncrawl.de-en.en": side(crawl, 0)}),
        write_tgz(os.path.join(out, "training-parallel-nc-v11.tgz"), {
            "training-parallel-nc-v11/news-commentary-v11.de-en.de": side(news, 1),
            "training-parallel-nc-v11/news-commentary-v11.de-en.en": side(news, 0)}),
        write_tgz(os.path.join(out, "test.tgz"), {
            "test/newstest2013-src.de.sgm": sgm([p[1] for p in valid], "newstest2013", "src", "de"),
            "test/newstest2013-src.en.sgm": sgm([p[0] for p in valid], "newstest2013", "src", "en"),
            "test/newstest2013-src.fr.sgm": sgm(["Bonjour ."] * len(valid), "newstest2013", "src", "fr")}),
        write_tgz(os.path.join(out, "test-full.tgz"), {
            "test-full/newstest2014-deen-ref.de.sgm": sgm([p[1] for p in test], "newstest2014", "ref", "de"),
            "test-full/newstest2014-deen-ref.en.sgm": sgm([p[0] for p in test], "newstest2014", "ref", "en"),
            "test-full/newstest2014-deen-src.de.sgm": sgm([p[1] for p in test], "newstest2014", "src", "de"),
            "test-full/newstest2014-deen-src.en.sgm": sgm([p[0] for p in test], "newstest2014", "src", "en")}),
    ]
    return files


def _story_url(rng: random.Random, i: int) -> str:
    if rng.random() < 0.5:
        return (f"http://web.archive.org/web/2015040{i % 9 + 1}000000id_/http://www.cnn.com/2015/04/0{i % 9 + 1}/"
                f"europe/fixture-story-{i}/index.html")
    return (f"http://web.archive.org/web/2015040{i % 9 + 1}000000id_/http://www.dailymail.co.uk/news/"
            f"article-{3000000 + i}/Fixture-story-{i}.html")


def story(rng: random.Random, source: str, empty_article: bool = False) -> Tuple[str, List[str]]:
    sents = [sentence_pair(rng)[0] for _ in range(rng.randint(6, 24))]
    paras, i = [], 0
    while i < len(sents):
        k = rng.randint(1, 3)
        paras.append(" ".join(sents[i:i + k]))
        i += k
    paras[0] = ("(CNN) -- " if source == "cnn" else "By . Daily Mail Reporter . ") + paras[0]
    highlights = [s.rstrip(".") if rng.random() < 0.6 else s for s in rng.sample(sents, rng.randint(2, 4))]
    body = [] if empty_article else paras
    text = "\n\n".join(body + [f"@highlight\n\n{h}" for h in highlights]) + "\n"
    return text, highlights


def cnndm(out: str) -> List[str]:
    os.makedirs(out, exist_ok=True)
    rng = random.Random(7)
    stories = {"cnn": {}, "dailymail": {}}
    lists = {"all_train.txt": 120, "all_val.txt": 16, "all_test.txt": 20}
    n = 0
    for name, count in lists.items():
        urls = []
        for _ in range(count):
            url = _story_url(rng, n)
            source = "cnn" if "cnn.com" in url else "dailymail"
            digest = hashlib.sha1(url.encode("utf-8")).hexdigest()
            text, _ = story(rng, source, empty_article=(name == "all_train.txt" and n == 4))
            stories[source][f"{source}/stories/{digest}.story"] = text.encode("utf-8")
            urls.append(url)
            n += 1
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.writelines(u + "\n" for u in urls)
    for source in stories:  # the archives also hold stories that no list names
        text, _ = story(rng, source)
        stories[source][f"{source}/stories/{hashlib.sha1(source.encode()).hexdigest()}.story"] = text.encode()
    files = [os.path.join(out, name) for name in lists]
    for source, members in stories.items():
        files.append(write_tgz(os.path.join(out, f"{source}_stories.tgz"), dict(sorted(members.items()))))
    return files


WIKI_WORDS = ("the of and in to a was is for on as with by he at from his an were are which this also be had "
              "first its it has after their game season team film album song city river war station village "
              "two three 1 @,@ 000 @-@ @.@ 5 19th <unk> ( ) , ; : \" ' s").split()


def wiki_article(rng: random.Random) -> List[str]:
    title = " ".join(w.capitalize() for w in rng.sample(WIKI_WORDS[20:35], 2))
    lines = [" ", f" = {title} = ", " "]
    for section in range(rng.randint(1, 3)):
        if section:
            lines += [f" = = {rng.choice(WIKI_WORDS[20:35]).capitalize()} = = ", " "]
        for _ in range(rng.randint(1, 3)):
            words = [rng.choice(WIKI_WORDS) for _ in range(rng.randint(12, 60))]
            lines += [" " + " ".join(words) + " . ", " "]
    return lines


def wikitext103(out: str) -> List[str]:
    os.makedirs(out, exist_ok=True)
    rng = random.Random(11)
    splits = {}
    for split, articles in (("train", 40), ("valid", 5), ("test", 5)):
        splits[split] = "".join(l + "\n" for _ in range(articles) for l in wiki_article(rng)).encode("utf-8")
    path = os.path.join(out, "wikitext-103-v1.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("wikitext-103/", (2016, 9, 26, 0, 0, 0)), b"")
        for split in ("test", "valid", "train"):  # the order the real zip lists them
            zf.writestr(zipfile.ZipInfo(f"wikitext-103/wiki.{split}.tokens", (2016, 9, 26, 0, 0, 0)),
                        splits[split], zipfile.ZIP_DEFLATED)
    return [path]


WRITERS = {"wmt16": wmt16, "cnndm": cnndm, "wikitext103": wikitext103}


def cli(argv=None) -> int:
    p = ArgumentParser(prog="python -m kvattn_fairseq.data.fixtures", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", choices=sorted(WRITERS))
    p.add_argument("dir")
    args = p.parse_args(argv)
    for path in WRITERS[args.dataset](args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
