"""Web pages a download host may send instead of the file: Google Drive's "can't scan this file
for viruses" confirmation (forms, links and cookies that lead to the file), and a readable name
for any other HTML answer (used by :mod:`medsam_gui.models.weights`)."""

from __future__ import annotations

import html.parser
import re
import urllib.parse
from collections.abc import Mapping


def is_html(resp) -> bool:
    ctype = (resp.headers.get("Content-Type") or "").lower()
    return ctype.startswith("text/html")


def page_title(page: bytes) -> str:
    m = re.search(rb"<title>(.*?)</title>", page, re.I | re.S)
    title = m.group(1).decode("utf-8", errors="replace").strip() if m else ""
    return f"page title {title[:80]!r}" if title else "an HTML page"


def cookie_tokens(jar) -> dict[str, str]:
    """``download_warning*`` cookie values (the older Google Drive confirmation tokens) of a
    cookie jar (``http.cookiejar.CookieJar``, e.g. a ``requests.Session``'s ``cookies``)."""
    return {c.name: c.value for c in jar if c.name.startswith("download_warning") and c.value}


class _FormParser(html.parser.HTMLParser):
    """Collects forms (action, method, hidden/ordinary inputs) and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self.links: list[str] = []
        self._form: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "method": a.get("method", "get").lower(),
                          "id": a.get("id", ""), "fields": []}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            if a.get("type", "text").lower() not in ("submit", "button", "image", "reset"):
                self._form["fields"].append((a["name"], a.get("value", "")))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def confirmation_url(page: str, page_url: str, cookies: Mapping[str, str] | None = None) -> str | None:
    """The URL that confirms a Google Drive "can't scan this file for viruses" page, or None.

    Current pages hold a GET form (``id="download-form"``, action
    ``https://drive.usercontent.google.com/download``) with hidden ``id``, ``export``,
    ``confirm`` and ``uuid`` fields: the URL is the action with those fields. Older pages link
    to ``/uc?export=download&confirm=TOKEN&id=...``, or set a ``download_warning_*`` cookie whose
    value is the token to add as ``confirm=``."""
    parser = _FormParser()
    try:
        parser.feed(page)
    except Exception:  # noqa: BLE001 - a malformed page is simply not a confirmation page
        return None
    forms = [f for f in parser.forms if f["method"] == "get" and f["fields"]]
    forms.sort(key=lambda f: (f["id"] != "download-form", "download" not in f["action"]))
    for f in forms:
        names = {k for k, _ in f["fields"]}
        if "id" in names and ("confirm" in names or "uuid" in names):
            action = urllib.parse.urljoin(page_url, f["action"] or page_url)
            sep = "&" if urllib.parse.urlsplit(action).query else "?"
            return action + sep + urllib.parse.urlencode(f["fields"])
    for href in parser.links:
        if "confirm=" in href and ("export=download" in href or "/download" in href):
            return urllib.parse.urljoin(page_url, href)
    token = next(iter((cookies or {}).values()), None)
    if token:
        parts = urllib.parse.urlsplit(page_url)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "confirm"] + [("confirm", token)]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return None
