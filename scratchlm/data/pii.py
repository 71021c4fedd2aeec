"""Mask personally identifiable information: emails, phone numbers, IPv4 addresses.

    mask_emails("write to a.b@example.com")     # ("write to |||EMAIL_ADDRESS|||", 1)

Each function returns the masked text and how many spans it replaced. These are regular
expressions, so they trade recall for precision as noted per pattern; they do not catch names,
postal addresses, or numbers written out in words.
"""

from __future__ import annotations

import re

EMAIL_MASK = "|||EMAIL_ADDRESS|||"
PHONE_MASK = "|||PHONE_NUMBER|||"
IP_MASK = "|||IP_ADDRESS|||"

# local@domain.tld: the common RFC 5322 subset (no quoted local parts, no IP-literal domains).
EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"
)

# US numbers: optional +1 / 1, a 3-digit area code (bare or in parentheses), 3 + 4 digits, separated by
# nothing, one space, a dot or a dash: 2831823829, (283)-182-3829, (283) 182 3829, +1 283.182.3829.
# Not inside a longer run of digits or letters (ids, card numbers).
PHONE_RE = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?![\w])")

# Dotted quads with every octet 0..255, not part of a longer dotted number (versions like 1.2.3.4.5).
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)")


def _mask(pattern: re.Pattern, mask: str, text: str) -> tuple[str, int]:
    return pattern.subn(mask, text)


def mask_emails(text: str) -> tuple[str, int]:
    return _mask(EMAIL_RE, EMAIL_MASK, text)


def mask_phone_numbers(text: str) -> tuple[str, int]:
    return _mask(PHONE_RE, PHONE_MASK, text)


def mask_ips(text: str) -> tuple[str, int]:
    return _mask(IPV4_RE, IP_MASK, text)
