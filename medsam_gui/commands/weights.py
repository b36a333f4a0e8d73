"""``medsam-gui weights``: list, import and download model weights.

    medsam-gui weights list [--json]
    medsam-gui weights import NAME FILE [--no-copy]
    medsam-gui weights download NAME [--url URL] [--sha256 HEX]

NAME is a model that ``medsam-gui weights list`` shows (e.g. medsam_vit_b, litemedsam, universeg_v1,
medsam2_latest) or an alias (medsam, sam, universeg, medsam2). MedSAM2's five official checkpoints
(Hugging Face wanglab/MedSAM2): medsam2_latest (recommended), medsam2_ctlesion,
medsam2_mri_liverlesion, medsam2_us_heart, medsam2_2411.
``import`` validates the file by loading it, then copies it into the app's weights folder
(or, with --no-copy, remembers where it is).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("weights", help="list, import or download model weights", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    lp = sub.add_parser("list", help="known models and where their weights are")
    lp.add_argument("--json", action="store_true", help="machine-readable output")
    ip = sub.add_parser("import", help="use a weights file you already have")
    ip.add_argument("name", metavar="NAME")
    ip.add_argument("file", metavar="FILE")
    ip.add_argument("--no-copy", action="store_true", help="remember the file where it is instead of copying it")
    dp = sub.add_parser("download", help="download weights from the official source")
    dp.add_argument("name", metavar="NAME")
    dp.add_argument("--url", help="download from this URL instead (a mirror)")
    dp.add_argument("--sha256", help="expected SHA-256 of the file at --url")
    dp.add_argument("--accept-licence", action="store_true",
                    help="accept the model's licence (printed by a first try without this flag)")
    p.set_defaults(func=run)
    return p


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / (1024 * 1024):.1f} MiB"


class _Progress:
    def __init__(self, stream) -> None:
        self.stream = stream
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and not (total and done >= total):
            return
        self.last = now
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        print(f"\r  {_fmt_bytes(done)} of {_fmt_bytes(total)}{pct}", end="", file=self.stream, flush=True)


def _licence(manager, model, accept: bool) -> None:
    """Accept ``model``'s licence (``accept``), or refuse with its text when not accepted before."""
    from ..errors import MedsamGuiError

    if manager.licence_accepted(model.name):
        return
    if not accept:
        raise MedsamGuiError(
            f"the {model.title} weights come with these terms:\n\n{model.licence}\n"
            f"{model.licence_url}\n\nRun again with --accept-licence to accept them and download.")
    manager.accept_licence(model.name)


def run(args: argparse.Namespace) -> int:
    from ..models import weights as manager

    if args.action == "list":
        models = manager.list_models()
        if args.json:
            print(json.dumps(models, indent=2))
            return 0
        for m in models:
            status = m["path"] if m["path"] else "not installed"
            check = "sha256" if m["sha256"] else ("md5" if m["md5"] else "no checksum published")
            print(f"{m['name']:<14} {m['title']:<24} {m['filename']:<32} {status}")
            print(f"{'':<14} source: {m['url']}  ({check}, ~{m['approx_mib']} MiB)")
            if m.get("sha256_recorded"):
                print(f"{'':<14} sha256 recorded on first install: {m['sha256_recorded']}")
        return 0
    if args.action == "import":
        model = manager.get_model(args.name)
        path = manager.import_weights(model.name, args.file, copy=not args.no_copy)
        print(f"{model.title}: using {path}")
        return 0
    if args.action == "download":
        model = manager.get_model(args.name)
        _licence(manager, model, args.accept_licence)
        url = manager.model_url(model.name, args.url)
        print(f"downloading {model.title} from {url}", file=sys.stderr)
        # A mirror (--url) must still match the official checksums, unless --sha256 is given.
        kwargs = {"sha256": args.sha256, "md5": None} if args.sha256 else {}
        path = manager.download(model.name, url=args.url, progress=_Progress(sys.stderr), **kwargs)
        print("", file=sys.stderr)
        print(f"{model.title}: saved {path}")
        return 0
    return 2  # pragma: no cover - argparse requires an action
