"""A C-CDA section's narrative block -> FHIR xhtml (the div of Composition.section.text), in one pass."""

from __future__ import annotations

import csv
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

from pipelines.convert.ccda.datatypes import NS

XHTML_DIV = '<div xmlns="http://www.w3.org/1999/xhtml">'
# CDA NarrativeBlock element -> its XHTML element (list, caption, footnotes and multimedia are handled apart).
RENAMED = {
    NS + "content": "span",
    NS + "span": "span",
    NS + "p": "p",
    NS + "li": "li",
    NS + "paragraph": "p",
    NS + "item": "li",
    NS + "linkHtml": "a",
    NS + "a": "a",
    NS + "sub": "sub",
    NS + "sup": "sup",
    NS + "br": "br",
    NS + "table": "table",
    NS + "thead": "thead",
    NS + "tbody": "tbody",
    NS + "tfoot": "tfoot",
    NS + "tr": "tr",
    NS + "th": "th",
    NS + "td": "td",
    NS + "colgroup": "colgroup",
    NS + "col": "col",
}
# Formatting elements senders put into narratives although CDA has none of them: FHIR's xhtml allows them
# with the same meaning, so they stay (their attributes are filtered like any other).
XHTML_PASSTHROUGH = frozenset(
    [
        "abbr",
        "acronym",
        "b",
        "big",
        "blockquote",
        "cite",
        "code",
        "dd",
        "dfn",
        "div",
        "dl",
        "dt",
        "em",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "i",
        "li",
        "ol",
        "p",
        "pre",
        "q",
        "samp",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "tt",
        "ul",
        "var",
    ]
)
EMPTY = frozenset({"br", "col", "hr"})
# Attributes FHIR's xhtml allows that carry over unchanged (table layout and cell structure).
KEPT = frozenset(
    [
        "abbr",
        "align",
        "axis",
        "border",
        "cellpadding",
        "cellspacing",
        "char",
        "charoff",
        "colspan",
        "frame",
        "headers",
        "rowspan",
        "rules",
        "scope",
        "span",
        "summary",
        "title",
        "valign",
        "width",
    ]
)
FAST_ATTRIBUTES = KEPT | {"ID", "styleCode", "href", "name"}
# Read backwards, an attribute is `"=` then its reversed name then a space: one scan from a literal finds
# any attribute outside the allowed set (or a `name="` in the text, which then takes the walk).
_OTHER_ATTRIBUTE = re.compile(
    rb'"=(?!(?:' + b"|".join(re.escape(a[::-1].encode()) for a in sorted(FAST_ATTRIBUTES)) + rb") )"
)
SAFE_HREF = re.compile(r"(?i)(https?:|mailto:|ftp:|tel:|#)")
NCNAME = re.compile(r"[A-Za-z_][\w.\-]*")
DATA_IMAGE = re.compile(r"image/(png|jpeg|gif)")
PLAIN = ("text/plain",)
# The fast path (nearly every section): tables, lists, paragraphs and content with layout attributes only.
# Lists, captions and links are renamed in the tree (a tag-filtered walk touches only those), lxml
# serializes the narrative, content, paragraph and item are renamed in its bytes, and a few byte-level
# checks confirm nothing else is in it; anything else takes the walk below.
_FAST_TAGS = re.compile(
    rb"<(?!/?(?:td|tr|th|tbody|thead|tfoot|table|br|sub|sup|col|colgroup|span|p|li|ul|ol|a|caption)[\s/>])"
)
_ID_VALUE = re.compile(rb' ID="([^"]*)"')
_TABLE_CAPTION = re.compile(rb"<table[^>]*>\s*<caption")
_PREFIXES = re.compile(rb"xmlns:([\w.-]+)=")
_SPAN, _P, _LI, _UL, _OL, _A = NS + "span", NS + "p", NS + "li", NS + "ul", NS + "ol", NS + "a"
# content, paragraph and item are renamed in the serialized bytes, where a `<` is markup (text and attribute
# values escape theirs) and a tag name ends at a space, `>` or `/>`: setting an lxml tag costs far more.
_BYTE_RENAMES = [
    (
        b"<" + cda,
        [(b"<" + cda + end, b"<" + xhtml + end) for end in (b" ", b">", b"/>")]
        + [(b"</" + cda + b">", b"</" + xhtml + b">")],
    )
    for cda, xhtml in ((b"content", b"span"), (b"paragraph", b"p"), (b"item", b"li"))
]
_INLINE_PARENTS = frozenset({NS + "paragraph", NS + "item", _P, _LI})
_LISTS = frozenset({NS + "list", _UL, _OL})
_ESCAPE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ESCAPE_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


@cache
def style_classes() -> dict[str, str]:
    """CDA styleCode -> the FHIR narrative class of the same rendering (maps/narrative_styles.csv)."""
    path = Path(__file__).parent / "maps" / "narrative_styles.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["style_code"]: r["fhir_class"] for r in csv.DictReader(fh)}


@cache
def _styled() -> re.Pattern[str]:
    """A class attribute holding a CDA style code FHIR has a class for (the rest stay as written)."""
    codes = "|".join(map(re.escape, style_classes()))
    return re.compile(r' class="([^"]*\b(?:' + codes + r')\b[^"]*)"')


def _classes(value: str) -> str:
    """A styleCode's tokens with the CDA style codes FHIR names a class for replaced by that class."""
    styles = style_classes()
    if not any(code in styles for code in value.split()):
        return value
    return " ".join(styles.get(code, code) for code in value.split())


def _esc(text: str) -> str:
    return text.translate(_ESCAPE) if ("&" in text or "<" in text or ">" in text) else text


class Narrative:
    """Renders every section narrative of one document; ids stay unique across the document's sections."""

    def __init__(self, root: Any, notes: Counter[str]) -> None:
        self.root = root
        self.notes = notes
        self.ids: set[str] = set()
        self._media: dict[str, Any] | None = None

    def section_div(self, text: Any) -> str | None:
        """The xhtml div for a section's <text>, or None when it holds nothing to show (FHIR txt-2)."""
        if text is None:
            return None
        if text.get("representation") == "B64":
            self.notes["section narrative: base64 text (not rendered)"] += 1
            return None
        has_text = any(t.strip() for t in text.itertext())
        if text.get("mediaType") in PLAIN or not len(text):
            return f"{XHTML_DIV}{_esc(text.text)}</div>" if has_text else None
        fast = self._fast(text)
        if fast is not None:
            return fast if has_text else None
        return self.walk(text, has_text)

    def walk(self, text: Any, has_text: bool = True) -> str | None:
        """Any narrative, element by element: footnotes, multimedia, links and unknown markup included."""
        self.has_image = False
        self.footnotes: list[Any] = []
        self.numbers: dict[str, int] = {}  # footnote ID -> its number (footnoteRefs point at it)
        self.order: dict[Any, int] = {}
        if text.find(".//" + NS + "footnote") is not None:
            for n, fn in enumerate(text.iter(NS + "footnote"), 1):
                self.order[fn] = n
                if fn.get("ID"):
                    self.numbers.setdefault(fn.get("ID"), n)
        out = [XHTML_DIV]
        if text.text:
            out.append(_esc(text.text))
        for el in text:
            self._node(el, out)
        if self.footnotes:
            self._footnote_bodies(out)
        out.append("</div>")
        return "".join(out) if has_text or self.has_image else None

    def _fast(self, text: Any) -> str | None:
        """The serialized narrative with tags and attributes renamed, or None when it needs the walk.

        It renames lists, captions and links in the source tree (the document's entries are converted by
        then, and the walk reads the renamed elements as their XHTML selves), and content, paragraph and
        item in the serialized bytes.
        """
        links = 0  # attributes of links: href and name may stand on no other element
        list_captions = []
        for el in text.iter(NS + "list", NS + "caption", NS + "linkHtml"):
            tag = el.tag
            if tag == NS + "linkHtml":
                el.tag = _A
                links += ("name" in el.attrib) + ("href" in el.attrib)
                href = el.get("href")
                if href is not None and not SAFE_HREF.match(href.strip()):
                    del el.attrib["href"]
                    links -= 1
                    self.notes["section narrative: link with an unsafe or relative href (kept as text)"] += 1
            elif tag == NS + "list":
                el.tag = _OL if el.get("listType") == "ordered" else _UL
                el.attrib.pop("listType", None)
            elif el.getparent().tag in _INLINE_PARENTS:  # a paragraph's or item's caption: a labelled span
                el.tag = _SPAN
                el.set("styleCode", f"{el.get('styleCode', '')} caption".strip())
            elif el.getparent().tag in _LISTS:
                list_captions.append(el)
        for el in list_captions:  # a list's caption heads it as a paragraph (XHTML lists hold items only)
            el.tag = _P
            el.set("styleCode", f"{el.get('styleCode', '')} caption".strip())
            el.getparent().addprevious(el)
        s = etree.tostring(text, encoding="utf-8", with_tail=False)
        end = s.find(b">")
        if not s.startswith(b"<text") or s[end - 1] == 47 or not s.endswith(b"</text>"):
            return None
        body = s[end + 1 : -7]
        for start, renames in _BYTE_RENAMES:
            if start in body:
                for old, new in renames:
                    body = body.replace(old, new)
        if b"xmlns" in body or _FAST_TAGS.search(body):
            return None  # markup beyond tables, lists and spans, or elements of another namespace
        for prefix in _PREFIXES.findall(s[:end]):
            if b"<" + prefix + b":" in body or b" " + prefix + b":" in body:
                return None
        if b"<caption" in body and body.count(b"<caption") != len(_TABLE_CAPTION.findall(body)):
            return None  # a caption outside a table
        if b'="' in body:
            if _OTHER_ATTRIBUTE.search(body[::-1]):
                return None
            if body.count(b' href="') + body.count(b' name="') != links:
                return None  # a link attribute on something other than a link
            if b' ID="' in body:
                ids = [i.decode() for i in _ID_VALUE.findall(body)]
                if len(set(ids)) != len(ids) or any(i in self.ids or not NCNAME.fullmatch(i) for i in ids):
                    return None  # a repeated or malformed ID: the walk drops the ones XHTML cannot keep
                self.ids.update(ids)
                # Byte-level: a text reading ` ID="` literally would be lower-cased too (none in the corpus).
                body = body.replace(b' ID="', b' id="')
        html = body.decode()
        if ' styleCode="' in html:
            html = html.replace(' styleCode="', ' class="')
            html = _styled().sub(lambda m: f' class="{_classes(m.group(1))}"', html)
        return f"{XHTML_DIV}{html}</div>"

    # --- elements -----------------------------------------------------------------------------------

    def _node(self, el: Any, out: list[str]) -> None:
        tag = el.tag
        name = RENAMED.get(tag)
        if name is not None:
            self._element(el, name, out)
        elif tag in (NS + "list", _UL, _OL):
            self._list(el, out)
        elif tag == NS + "caption":
            parent = el.getparent()
            if parent is not None and parent.tag == NS + "table":
                self._element(el, "caption", out)
            else:  # XHTML allows a caption only in a table: elsewhere it is a labelled span
                self._element(el, "span", out, extra_class="caption")
        elif tag == NS + "footnote":
            self._footnote(el, out)
        elif tag == NS + "footnoteRef":
            ref = el.get("IDREF") or ""
            n = self.numbers.get(ref)
            if n and NCNAME.fullmatch(ref):
                out.append(f'<sup><a href="#{ref}">[{n}]</a></sup>')
            elif n:
                out.append(f"<sup>[{n}]</sup>")
        elif tag == NS + "renderMultiMedia":
            self._media_ref(el, out)
        elif isinstance(tag, str):
            local = tag.rsplit("}", 1)[-1]
            if local in XHTML_PASSTHROUGH:
                self._element(el, local, out)
            else:
                # Not narrative markup (a vendor element or a stray structured element): its text stays,
                # its markup does not; counted so the loss is visible.
                self.notes[f"section narrative: <{local}> unwrapped"] += 1
                self._children(el, out)
        if el.tail:
            out.append(_esc(el.tail))

    def _children(self, el: Any, out: list[str], skip: Any = None) -> None:
        if el.text:
            out.append(_esc(el.text))
        for c in el:
            if c is not skip:
                self._node(c, out)

    def _element(self, el: Any, name: str, out: list[str], extra_class: str | None = None) -> None:
        attrs = self._attrs(el, name, extra_class) if el.attrib or extra_class else ""
        if name in EMPTY or (not len(el) and not el.text):
            out.append(f"<{name}{attrs}/>")
            return
        out.append(f"<{name}{attrs}>")
        self._children(el, out)
        out.append(f"</{name}>")

    def _attrs(self, el: Any, name: str, extra_class: str | None = None) -> str:
        parts = []
        classes = []
        for key, val in el.attrib.items():
            if key in KEPT:
                parts.append(f' {key}="{val.translate(_ESCAPE_ATTR)}"')
            elif key == "ID":
                if NCNAME.fullmatch(val) and val not in self.ids:
                    self.ids.add(val)
                    parts.append(f' id="{val}"')
            elif key == "styleCode":
                classes.append(_classes(val))
            elif key == "language" and NCNAME.fullmatch(val.replace("-", "_")):
                parts.append(f' lang="{val}"')
            elif key == "revised" and val == "delete":
                classes.append("strikethrough")
            elif name == "a" and key == "href":
                if SAFE_HREF.match(val.strip()):
                    parts.append(f' href="{val.strip().translate(_ESCAPE_ATTR)}"')
                else:
                    self.notes["section narrative: link with an unsafe or relative href (kept as text)"] += 1
            elif name == "a" and key == "name":
                parts.append(f' {key}="{val.translate(_ESCAPE_ATTR)}"')
        if extra_class:
            classes.append(extra_class)
        if classes:
            parts.append(f' class="{" ".join(classes).translate(_ESCAPE_ATTR)}"')
        return "".join(parts)

    def _list(self, el: Any, out: list[str]) -> None:
        name = "ol" if el.get("listType") == "ordered" or el.tag == _OL else "ul"
        caption = next(el.iterchildren(NS + "caption"), None)
        if caption is not None:  # a list's caption heads it (XHTML has no caption inside a list)
            self._element(caption, "p", out, extra_class="caption")
            if caption.tail:
                out.append(_esc(caption.tail))
        attrs = self._attrs(el, name) if el.attrib else ""
        out.append(f"<{name}{attrs}>")
        self._children(el, out, skip=caption)
        out.append(f"</{name}>")

    def _footnote(self, el: Any, out: list[str]) -> None:
        """A footnote leaves a numbered mark where it stands; its body is rendered after the narrative."""
        n = self.order.get(el, 0)
        self.footnotes.append(el)
        fid = el.get("ID")
        if fid and NCNAME.fullmatch(fid) and fid not in self.ids and self.numbers.get(fid) == n:
            out.append(f'<sup><a href="#{fid}">[{n}]</a></sup>')
        else:
            out.append(f"<sup>[{n}]</sup>")

    def _footnote_bodies(self, out: list[str]) -> None:
        out.append('<div class="footnotes">')
        i = 0
        while i < len(self.footnotes):  # a footnote inside a footnote joins the queue as it is met
            el = self.footnotes[i]
            i += 1
            n = self.order.get(el, 0)
            fid = el.get("ID")
            ident = ""
            if fid and NCNAME.fullmatch(fid) and fid not in self.ids and self.numbers.get(fid) == n:
                self.ids.add(fid)
                ident = f' id="{fid}"'
            out.append(f"<div{ident}><sup>[{n}]</sup> ")
            self._children(el, out)
            out.append("</div>")
        out.append("</div>")

    def _media_ref(self, el: Any, out: list[str]) -> None:
        """renderMultiMedia -> an inline image when the observationMedia holds one (base64 PNG/JPEG/GIF);
        otherwise its caption, and the object it could not show is counted."""
        caption = next(el.iterchildren(NS + "caption"), None)
        label = " ".join("".join(caption.itertext()).split()) if caption is not None else ""
        for ref in (el.get("referencedObject") or "").split():
            media = self._media_by_id().get(ref)
            value = media.find(NS + "value") if media is not None else None
            kind = (value.get("mediaType") or "") if value is not None else ""
            if value is not None and value.get("representation") == "B64" and DATA_IMAGE.fullmatch(kind):
                data = "".join("".join(value.itertext()).split())
                if re.fullmatch(r"[A-Za-z0-9+/=]+", data):
                    alt = f' alt="{label.translate(_ESCAPE_ATTR)}"' if label else ""
                    out.append(f'<img src="data:{kind};base64,{data}"{alt}/>')
                    self.has_image = True
                    continue
            self.notes["section narrative: multimedia not embeddable (caption kept)"] += 1
        if label:
            out.append(f'<span class="caption">{_esc(label)}</span>')

    def _media_by_id(self) -> dict[str, Any]:
        if self._media is None:
            self._media = {m.get("ID"): m for m in self.root.iter(NS + "observationMedia") if m.get("ID")}
        return self._media
