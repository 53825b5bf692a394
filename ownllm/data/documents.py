"""Documents (PDF, DOCX, HTML, Markdown, text) → passages that keep structure and provenance.

A passage is one heading, paragraph, list item or table, with the file, the PDF page, the heading
path above it and its character span in the document's extracted text (the passages' texts joined
by blank lines, which is also what ``--also-text`` trains on). Readers are the field's libraries:
pypdf, python-docx, BeautifulSoup, markdown-it-py; text files go through the data files' encoding
detection (GB18030, UTF-16 …). ``chunk_passages`` cuts them by the target model's tokens.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ownllm.data import formats
from ownllm.errors import DataError

DOCUMENTS = (".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt")
DOCX_MAX_UNZIPPED = 256 << 20  # a DOCX is a zip whose parts python-docx reads whole: a 4 MB file can hold GBs


@dataclass
class Passage:
    file: str
    text: str
    kind: str = "paragraph"               # heading | paragraph | item | table
    headings: tuple[str, ...] = ()        # the heading path above it (a heading's: its parents)
    level: int = 0                        # a heading's level, 1 = top
    page: int | None = None               # PDF page, from 1
    start: int = 0                        # [start, end) in the document's extracted text
    end: int = 0
    cells: list[list[str]] = field(default_factory=list)  # a table's rows of cells, header first


def list_documents(paths) -> tuple[list[str], list[str]]:
    """Files to read (folders recursively, in sorted order) and files skipped for their type."""
    files, skipped = [], []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    (files if n.lower().endswith(DOCUMENTS) else skipped).append(os.path.join(root, n))
        elif not os.path.exists(path):
            raise DataError(f"file not found: {path}", hint="check the path (and the current folder)")
        elif path.lower().endswith(DOCUMENTS):
            files.append(path)
        else:
            raise DataError(f"{path}: not a document ownllm reads", hint=f"documents: {', '.join(DOCUMENTS)}")
    if not files:
        raise DataError(f"no documents in {', '.join(map(str, paths))}", hint=f"documents: {', '.join(DOCUMENTS)}")
    return files, skipped


def read_document(path: str) -> list[Passage]:
    """The passages of one document, in reading order, with headings and offsets filled in."""
    ext = os.path.splitext(path)[1].lower()
    reader = {".pdf": _read_pdf, ".docx": _read_docx, ".html": _read_html, ".htm": _read_html,
              ".md": _read_markdown, ".markdown": _read_markdown}.get(ext, _read_txt)
    try:
        blocks = reader(path)
    except DataError:
        raise
    except Exception as e:  # a damaged or mislabelled file: the library's own words, where it is
        raise DataError(f"{path} could not be read as {ext[1:].upper()}: {type(e).__name__}: {e}",
                        hint="open it in its application and save it again, or convert it to text") from None
    passages = _with_headings(path, blocks)
    if not passages:
        raise DataError(f"{path} has no text", hint="the file is empty or holds only images")
    return passages


def _with_headings(path: str, blocks: list[dict]) -> list[Passage]:
    out, path_above, offset = [], [], 0
    for b in blocks:
        text = _WS_LINE.sub(" ", b["text"]).strip() if b["kind"] != "table" else b["text"].strip()
        if not text:
            continue
        if b["kind"] == "heading":
            level = b.get("level", 1)
            del path_above[level - 1:]
            headings = tuple(h for h, _ in path_above)
            path_above.append((text, level))
        else:
            level, headings = 0, tuple(h for h, _ in path_above)
        out.append(Passage(path, text, b["kind"], headings, level, b.get("page"), offset, offset + len(text),
                           b.get("cells", [])))
        offset += len(text) + 2  # passages are joined by a blank line
    return out


_WS_LINE = re.compile(r"[ \t\r\f\v]*\n[ \t\r\f\v]*|[ \t\r\f\v]+")


def document_text(passages: list[Passage]) -> str:
    """The extracted text the passages' offsets point into."""
    return "\n\n".join(p.text for p in passages)


# -- readers: each returns blocks {"kind", "text", "level"?, "page"?, "cells"?} ---------------------
def _table_block(rows: list[list[str]]) -> dict:
    rows = [[_WS_LINE.sub(" ", c).strip() for c in r] for r in rows if any(c.strip() for c in r)]
    return {"kind": "table", "text": "\n".join(" | ".join(r) for r in rows), "cells": rows}


def _read_docx(path: str) -> list[dict]:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    _check_unzipped_size(path, DOCX_MAX_UNZIPPED)
    d = docx.Document(path)
    blocks = []
    for el in d.element.body.iterchildren():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "tbl":
            blocks.append(_table_block([[c.text for c in row.cells] for row in Table(el, d).rows]))
        elif tag == "p":
            p = Paragraph(el, d)
            style = (p.style.name if p.style is not None else "") or ""
            m = re.match(r"(?:Heading|标题)\s*(\d)", style)
            if style == "Title" or m:
                blocks.append({"kind": "heading", "text": p.text, "level": int(m.group(1)) + 1 if m else 1})
            else:
                blocks.append({"kind": "item" if style.startswith("List") else "paragraph", "text": p.text})
    return _title_is_top(blocks)


def _check_unzipped_size(path: str, limit: int) -> None:
    """Refuse a zip whose parts expand past ``limit`` bytes: the sizes its directory declares first, then the
    bytes each part really gives, read in chunks (a directory can lie)."""
    import zipfile

    def refuse():
        return DataError(f"{path} expands to more than {limit >> 20} MB when unzipped (a DOCX is a zip archive); "
                         "it was not read", hint="a document this large is unusual: check the file, or save it as PDF")

    with zipfile.ZipFile(path) as z:
        if sum(i.file_size for i in z.infolist()) > limit:
            raise refuse()
        total = 0
        for info in z.infolist():
            with z.open(info) as part:
                while chunk := part.read(1 << 20):
                    total += len(chunk)
                    if total > limit:
                        raise refuse()


def _title_is_top(blocks: list[dict]) -> list[dict]:
    """Without a Title (level 1 here), Heading 1 is the top level."""
    levels = [b["level"] for b in blocks if b["kind"] == "heading"]
    shift = min(levels) - 1 if levels else 0
    for b in blocks:
        if b["kind"] == "heading":
            b["level"] -= shift
    return blocks


_BLOCK_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "table", "dt", "dd", "pre", "blockquote",
               "figcaption", "td", "th")


def _read_html(path: str) -> list[dict]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(formats.read_text_file(path, "the HTML file"), "html.parser")
    for junk in soup(["script", "style", "noscript", "template", "nav", "header", "footer", "svg"]):
        junk.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    blocks = []
    for el in (soup.body or soup).find_all(_BLOCK_TAGS):
        if el.find_parent(["table", "li", "p", "pre", "blockquote", "dd"]) is not None:
            continue  # read as part of the block around it
        if el.name == "table":
            blocks.append(_table_block([[c.get_text(" ") for c in tr.find_all(["td", "th"])]
                                        for tr in el.find_all("tr")]))
        elif el.name[0] == "h" and el.name[1:].isdigit():
            blocks.append({"kind": "heading", "text": el.get_text(" "), "level": int(el.name[1])})
        else:
            # a <br> inside a paragraph is a line of its own (问：… <br> 答：…)
            lines = [ln.strip() for ln in el.get_text().split("\n") if ln.strip()]
            kind = "item" if el.name == "li" else "paragraph"
            blocks += [{"kind": kind, "text": ln} for ln in lines] if len(lines) > 1 else \
                [{"kind": kind, "text": " ".join(lines)}]
    return _title_is_top(blocks)


def _read_markdown(path: str) -> list[dict]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(formats.read_text_file(path, "the Markdown file"))
    blocks, table, row, heading, in_item = [], None, None, None, 0
    for t in tokens:
        if t.type == "heading_open":
            heading = int(t.tag[1])
        elif t.type in ("bullet_list_open", "ordered_list_open"):
            in_item += 1
        elif t.type in ("bullet_list_close", "ordered_list_close"):
            in_item -= 1
        elif t.type == "table_open":
            table = []
        elif t.type == "tr_open":
            row = []
        elif t.type == "tr_close":
            table.append(row)
        elif t.type == "table_close":
            blocks.append(_table_block(table))
            table = None
        elif t.type == "inline" and table is not None:
            row.append(t.content)
        elif t.type == "inline" and heading:
            blocks.append({"kind": "heading", "text": t.content, "level": heading})
            heading = None
        elif t.type == "inline":
            blocks.append({"kind": "item" if in_item else "paragraph", "text": t.content})
        elif t.type in ("fence", "code_block"):
            blocks.append({"kind": "paragraph", "text": t.content})
    return _title_is_top(blocks)


def _read_txt(path: str) -> list[dict]:
    text = formats.read_text_file(path, "the text file")
    return [{"kind": "paragraph", "text": p} for p in re.split(r"\n\s*\n", text) if p.strip()]


def _read_pdf(path: str) -> list[dict]:
    """Lines from pypdf's text visitor (text, position, font size) → headings (larger or bold than the
    body text) and paragraphs (a vertical gap wider than the page's line spacing starts a new one)."""
    import pypdf

    reader = pypdf.PdfReader(path)
    lines = []  # (page, y, size, bold, text)
    for number, page in enumerate(reader.pages, 1):
        found: list = []

        def visit(text, cm, tm, font, size, found=found):
            if text.strip():
                y = tm[5] * cm[3] + tm[4] * cm[1] + cm[5]
                scale = (tm[2] ** 2 + tm[3] ** 2) ** 0.5 * ((cm[2] ** 2 + cm[3] ** 2) ** 0.5 or 1)
                name = str((font or {}).get("/BaseFont", ""))
                found.append((number, round(y, 1), round(size * scale, 1), "Bold" in name or "Black" in name, text))

        page.extract_text(visitor_text=visit)
        lines += _merge_same_line(found)
    if not lines:
        raise DataError(f"{path} has no text layer (a scanned PDF?); ownllm does not run OCR",
                        hint="run OCR first, e.g. `ocrmypdf IN.pdf OUT.pdf`, or export the text from its source")
    chars = Counter()
    for _, _, size, bold, text in lines:
        chars[(size, bold)] += len(text)
    body_size, body_bold = chars.most_common(1)[0][0]
    heading_sizes = sorted({s for _, _, s, b, t in lines if _is_heading(s, b, t, body_size, body_bold)}, reverse=True)
    return _pdf_blocks(lines, body_size, body_bold, heading_sizes)


def _merge_same_line(found: list) -> list:
    out = []
    for f in found:
        if out and out[-1][0] == f[0] and abs(out[-1][1] - f[1]) < 1 and out[-1][2] == f[2]:
            prev = out[-1]
            glue = "" if prev[4].endswith(" ") or f[4].startswith(" ") or _cjk(prev[4][-1:]) else " "
            out[-1] = prev[:4] + (prev[4] + glue + f[4],)
        else:
            out.append(f)
    return [(p, y, s, b, t.strip()) for p, y, s, b, t in out if t.strip()]


def _is_heading(size: float, bold: bool, text: str, body_size: float, body_bold: bool) -> bool:
    return len(text) <= 160 and (size > body_size * 1.08 or (bold and not body_bold and size >= body_size * 0.95))


def _pdf_blocks(lines: list, body_size: float, body_bold: bool, heading_sizes: list) -> list[dict]:
    gaps = Counter(round(a[1] - b[1]) for a, b in zip(lines, lines[1:])
                   if a[0] == b[0] and a[2] == b[2] == body_size and a[1] > b[1])
    # the line spacing: the smallest gap that recurs (paragraph gaps are wider; single-line paragraphs
    # can outnumber the lines inside paragraphs)
    recurring = [g for g, n in gaps.items() if n >= 2] or list(gaps)
    advance = min(recurring) if recurring else body_size * 1.5
    blocks, prev = [], None
    for line in lines:
        page, y, size, bold, text = line
        heading = _is_heading(size, bold, text, body_size, body_bold)
        same_block = prev is not None and blocks and prev[0] == page and prev[2] == size and prev[3] == bold \
            and 0 < prev[1] - y <= advance * 1.3 and blocks[-1]["kind"] == ("heading" if heading else "paragraph")
        if same_block:
            glue = "" if _cjk(blocks[-1]["text"][-1:]) else " "
            blocks[-1]["text"] = blocks[-1]["text"].rstrip("-") + ("" if blocks[-1]["text"].endswith("-") else glue) + text
        elif heading:
            blocks.append({"kind": "heading", "text": text, "page": page,
                           "level": heading_sizes.index(size) + 1 if size in heading_sizes else len(heading_sizes)})
        else:
            blocks.append({"kind": "paragraph", "text": text, "page": page})
        prev = line
    return blocks


_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")


def _cjk(ch: str) -> bool:
    return bool(ch) and bool(_CJK.match(ch))


def is_chinese(text: str) -> bool:
    """Mostly CJK characters: prompts and checks for this text are written in Chinese."""
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(bool(_CJK.match(c)) for c in letters) > 0.3 * len(letters)


# -- chunking ------------------------------------------------------------------------------------
@dataclass
class Chunk:
    file: str
    text: str
    headings: tuple[str, ...]
    pages: tuple[int, ...]
    start: int
    end: int
    tokens: int

    @property
    def id(self) -> str:
        import hashlib

        return hashlib.blake2b(f"{self.file}\x1f{self.start}\x1f{self.text}".encode(), digest_size=8).hexdigest()


def chunk_passages(passages: list[Passage], measure: Callable[[str], int], limit: int = 320,
                   overlap: int = 48) -> list[Chunk]:
    """Chunks of at most ``limit`` tokens (as ``measure`` counts them) that end at a heading, paragraph or
    sentence boundary (。！？ too; a table at a row); a new top- or second-level section starts a new
    chunk; each chunk begins with the last sentences (up to ``overlap`` tokens) of the one before in the
    same section. Deterministic: the same passages give the same chunks."""
    chunks: list[Chunk] = []
    pieces: list[tuple[Passage, str, int]] = []

    def flush(keep_overlap: bool) -> None:
        nonlocal pieces
        carried = []
        while pieces and pieces[-1][0].kind == "heading":  # a heading belongs with the text after it
            carried.insert(0, pieces.pop())
        if any(p.kind != "heading" for p, _, _ in pieces):
            chunks.append(_chunk_of(pieces))
        kept: list = []
        for piece in reversed(pieces if keep_overlap else []):  # the overlap: whole sentences from the end
            if piece[0].kind == "heading" or sum(n for _, _, n in kept) + piece[2] > overlap:
                break
            kept.insert(0, piece)
        pieces = kept + carried

    for p in passages:
        if p.kind == "heading" and p.level <= 2 and pieces:
            flush(keep_overlap=False)
        for text, n in _pieces(p, measure, limit):
            if pieces and sum(k for _, _, k in pieces) + n > limit:
                flush(keep_overlap=True)
                while pieces and sum(k for _, _, k in pieces) + n > limit:
                    pieces.pop(0)  # the overlap gives way to the new text
            pieces.append((p, text, n))
    if pieces:
        flush(keep_overlap=False)
    return chunks


def _pieces(p: Passage, measure, limit: int) -> list[tuple[str, int]]:
    """A passage whole when it fits; else its sentences (a table's rows), each cut further if needed."""
    n = measure(p.text)
    if n <= limit:
        return [(p.text, n)]
    parts = p.text.split("\n") if p.kind == "table" else formats.sentences(p.text)
    return [piece for part in parts for piece in formats.split_to_fit(part, measure, limit)]


def _chunk_of(pieces: list) -> Chunk:
    first = next(p for p, _, _ in pieces if p.kind != "heading")
    pages = tuple(sorted({p.page for p, _, _ in pieces if p.page}))
    text, last = "", None
    for p, piece, _ in pieces:
        # pieces of one passage join back as they were (a table's rows by a line break)
        glue = "" if last is None else ("\n" if p.kind == "table" else "") if p is last else "\n\n"
        text += glue + piece
        last = p
    return Chunk(first.file, text.strip(), first.headings, pages, pieces[0][0].start, pieces[-1][0].end,
                 sum(n for _, _, n in pieces))


def passage_rows(passages: list[Passage]) -> list[dict]:
    """The document as continued-pre-training rows, one per top- or second-level section, pinned to
    the training split (``"split": "train"``: the held-out questions are asked about this text)."""
    sections: list[list[Passage]] = []
    for p in passages:
        if not sections or (p.kind == "heading" and p.level <= 2):
            sections.append([])
        sections[-1].append(p)
    return [{"text": "\n\n".join(p.text for p in s), "source": source_of(s[-1]), "split": "train"}
            for s in sections if any(p.kind != "heading" for p in s)]


def source_of(p: Passage | Chunk) -> str:
    """Where a row comes from, for a person: ``handbook.pdf p. 2 › FAQ › How do I …``."""
    where = os.path.basename(p.file)
    pages = getattr(p, "pages", None) or ((p.page,) if getattr(p, "page", None) else ())
    if pages:
        where += f" p. {pages[0]}" + (f"–{pages[-1]}" if len(pages) > 1 else "")
    return " › ".join((where,) + tuple(p.headings))


__all__ = ["Passage", "Chunk", "DOCUMENTS", "list_documents", "read_document", "document_text", "chunk_passages",
           "passage_rows", "source_of", "is_chinese"]
