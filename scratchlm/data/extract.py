"""HTML bytes -> plain text with Resiliparse, decoding whatever encoding the page is in.

    text = extract_text(html_bytes)                      # all visible text, block structure kept as newlines
    text = extract_text(html_bytes, main_content=True)   # Resiliparse's boilerplate heuristics (drop nav, footers)

Decoding: strict UTF-8 first (most of the web, and the cheapest check), else the encoding uchardet
detects, with Resiliparse's fallbacks (UTF-8, then Windows-1252, then replacement characters), so
undecodable bytes give U+FFFD or dropped characters, never an exception.
"""

from __future__ import annotations


def decode_html(html: bytes) -> str:
    try:
        return html.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(html, detect_encoding(html), errors="replace")


def extract_text(html: bytes | str, main_content: bool = False, preserve_formatting: bool = True) -> str:
    """Visible text of an HTML page; "" for empty or text-free input."""
    from resiliparse.extract.html2text import extract_plain_text

    if isinstance(html, bytes):
        html = decode_html(html)
    if not html.strip():
        return ""
    text = extract_plain_text(html, main_content=main_content, preserve_formatting=preserve_formatting)
    return text.strip()
