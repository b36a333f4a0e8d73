"""What :func:`medsam_gui.models.weights.download` adds to pooch's HTTP transfer: a progress
bar object reporting ``progress(done_bytes, total_or_None)``, a response hook that keeps the
cookies and stops at HTML answers (download hosts' confirmation pages), and the operating
system's words for a failed connection."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import WeightsDownloadError
from .download_pages import is_html

HTML_LIMIT = 2 << 20  # bytes of an HTML answer read to look for a confirmation form
ProgressCallback = Callable[[int, "int | None"], None]


class DownloadProgress:
    """The progress bar pooch's HTTPDownloader drives, reported as ``progress(done, total)``.

    pooch sets ``total`` (0 when the server sends no length), calls ``update(chunk_size)`` per
    chunk (the last chunk may be shorter: ``done`` stops at ``total``), then ``reset()``,
    ``update(total)`` and ``close()``; :meth:`finish` reports the exact size written.
    """

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._total: int | None = None
        self._done = 0
        self._ended = False

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = int(value) or None
        self._done = 0
        self._report()

    def update(self, n: int) -> None:
        if self._ended:
            return
        done = self._done + int(n)
        done = min(done, self._total) if self._total is not None else done
        if done != self._done:
            self._done = done
            self._report()

    def reset(self) -> None:
        """pooch's end of transfer (its final update only fills a bar: not reported)."""
        self._ended = True

    def close(self) -> None:
        self._ended = True

    def finish(self, size: int) -> None:
        """Report the exact number of bytes written, once, if it differs from the last report."""
        if size != self._done:
            self._done = size
            self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self._done, self._total)


def copy_local_file(url: str, dest: Path, progress: "DownloadProgress", chunk_size: int) -> None:
    """Copy the file of a ``file://`` URL (a local or network-drive mirror) to ``dest`` with the
    same progress reports as a download."""
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    if not src.is_file():
        raise WeightsDownloadError(f"the mirror file {src} ({url}) does not exist; check the URL.")
    progress.total = src.stat().st_size
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while block := fin.read(chunk_size):
            fout.write(block)
            progress.update(len(block))
    progress.close()


class WebPage(Exception):
    """A download host answered with an HTML page (``page``: its first bytes, ``url``)."""

    def __init__(self, page: bytes, url: str) -> None:
        super().__init__(url)
        self.page = page
        self.url = url


def page_catcher(jar):
    """A requests response hook for pooch's download: keeps each answer's cookies in ``jar``
    and stops at an HTML page (raises :class:`WebPage` with up to ``HTML_LIMIT`` bytes of it)
    before pooch writes it as the file."""

    def hook(resp, *args, **kwargs):
        jar.update(resp.cookies)
        if resp.is_redirect or resp.status_code >= 400 or not is_html(resp):
            return resp
        with resp:
            page = resp.raw.read(HTML_LIMIT, decode_content=True)
        raise WebPage(page, resp.url)

    return hook


def connection_reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("Connection refused"), found in
    the chain of exceptions requests and urllib3 wrap it in; else the exception's type."""
    seen = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        todo += [getattr(e, "reason", None), e.__cause__, e.__context__]
    return type(exc).__name__
