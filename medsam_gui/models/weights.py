"""Model manager: which weight files the app knows, where they are, download and import.

Known models (official sources):

- ``medsam_vit_b``: MedSAM ViT-B, ``medsam_vit_b.pth`` (~358 MiB), Zenodo record 10689643
  (doi:10.5281/zenodo.10689643, the file the MedSAM repository links besides its Google Drive
  folder). Zenodo publishes an MD5 checksum (``3bb6db55bd0c9ca30b61248bca72f8d6``), no SHA-256:
  downloads are verified with that MD5 (SHA-256 is None).
- ``sam_vit_b``: Segment Anything ViT-B, ``sam_vit_b_01ec64.pth``, from dl.fbaipublicfiles.com;
  SHA-256 ``ec2df627...c912`` (widely published; the name's ``01ec64`` is Meta's own tag).
- ``universeg_v1``: UniverSeg v1, ``universeg_v1_nf64_ss64_STA.pt``, GitHub release of
  JJGO/UniverSeg; no checksum is published (None): the file is validated by loading it.
- ``litemedsam``: LiteMedSAM, ``lite_medsam.pth`` (~38 MiB, a plain state dict), on Google Drive
  (file id ``18Zed-TUTsmr2zc5CHUWd5Tu13nb6vq6z``, linked from the README of the MedSAM
  repository's LiteMedSAM branch). No checksum is published: the SHA-256 of the first file
  installed (downloaded or imported) is recorded (settings key ``"weights_sha256"``), later
  downloads must match it, and ``resolve(..., verify=True)`` refuses the file if it changed since
  (:func:`import_weights` of a file the user chose records its checksum anew). Google Drive
  answers large files with a "can't scan this file for viruses" page: the download follows its
  confirmation form (``drive.usercontent.google.com/download`` with ``confirm`` / ``uuid``
  fields) or, on the older pages, the ``confirm=`` link / ``download_warning`` cookie.
- MedSAM2 (SAM2.1 Hiera-tiny, 512 px; the five official checkpoints of the Hugging Face
  repository wanglab/MedSAM2, ``https://huggingface.co/wanglab/MedSAM2/resolve/main/<file>``):
  ``medsam2_latest`` (``MedSAM2_latest.pt``, recommended; alias ``medsam2``),
  ``medsam2_ctlesion``, ``medsam2_mri_liverlesion``, ``medsam2_us_heart``, ``medsam2_2411``.
  No checksum is published outside the Hub's own pages, so none is pinned: like LiteMedSAM,
  the SHA-256 of the first file installed is recorded (``record_checksum``) and every file is
  validated by its structure (471 keys, the Hiera-tiny shapes;
  ``models.medsam2.engine.load_medsam2_state_dict``).

- Automatic models (issue 15): ``hermes_r`` (alias ``hermes``), Hermes-R, the Google Drive file
  ``1s3Rc5zpgNz9FA2eqKBExaXQ_nsbAPMT8`` linked from the README of
  yhygao/universal-medical-image-segmentation (no checksum published: recorded on first install;
  the repository states no licence); ``universal_model`` (alias ``universal``), the CLIP-Driven
  Universal Model's ``clip_driven_universal_swin_unetr.pth`` on Hugging Face
  (ljwztc/CLIP-Driven-Universal-Model; checksum recorded on first install) and
  ``universal_text_embedding``, its ``pretrained_weights/txt_encoding.pth`` from the GitHub
  repository (SHA-256 ``9de46b0b...7145``); both CC BY-NC-ND 4.0. Their files are checked by
  structure (:mod:`.auto_weights`: the exact keys and shapes of the official layouts).
  ``KnownModel.licence`` is shown by the weights dialog, which asks the user to accept it before
  the first download (:func:`licence_accepted` / :func:`accept_licence`, settings key
  ``"weights_licences_accepted"``).

Downloads stream to ``<file>.part`` in ``config.weights_dir()``, are checked (length,
checksum, and by loading the weights), and only then renamed into place; a failed or partial
download never leaves a usable file. The URL of a model can be overridden with the
environment variable ``MEDSAM_GUI_URL_<NAME>`` (e.g. ``MEDSAM_GUI_URL_MEDSAM_VIT_B``) or the
``url=`` argument. Chosen files are remembered in the settings store (key ``"weights"``).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .. import config
from ..errors import CheckpointError, MedsamGuiError, WeightsDownloadError
from .download_pages import confirmation_url, cookie_tokens, page_title
from .downloads import DownloadProgress, WebPage, connection_reason, copy_local_file, page_catcher

SETTINGS_KEY = "weights"
LICENCE_KEY = "weights_licences_accepted"  # name -> the licence text the user accepted
CHECKSUM_KEY = "weights_sha256"  # name -> sha256 recorded at first install (models with record_checksum)
USER_AGENT = "medsam-gui (model download)"
_USE_KNOWN: Any = object()


@dataclass(frozen=True)
class KnownModel:
    name: str
    title: str
    filename: str
    url: str
    source: str  # human-readable page of the official source
    sha256: str | None
    md5: str | None
    size_bytes: int | None  # exact size when published (verified), else None
    approx_mib: int
    kind: str  # "sam", "universeg", "litemedsam", "medsam2", "hermes", "universal" or "universal_text"
    note: str = ""
    record_checksum: bool = False  # no published checksum: record the first file's SHA-256, verify later
    licence: str | None = None  # terms the user accepts before the first download (None: nothing to accept)
    licence_url: str = ""


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="medsam_vit_b",
            title="MedSAM ViT-B",
            filename="medsam_vit_b.pth",
            url="https://zenodo.org/records/10689643/files/medsam_vit_b.pth?download=1",
            source="https://github.com/bowang-lab/MedSAM (weights: doi:10.5281/zenodo.10689643)",
            sha256=None,
            md5="3bb6db55bd0c9ca30b61248bca72f8d6",
            size_bytes=None,
            approx_mib=358,
            kind="sam",
            note="Zenodo publishes MD5 only; no SHA-256 is published.",
        ),
        KnownModel(
            name="sam_vit_b",
            title="Segment Anything ViT-B",
            filename="sam_vit_b_01ec64.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            source="https://github.com/facebookresearch/segment-anything#model-checkpoints",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            md5=None,
            size_bytes=None,
            approx_mib=358,
            kind="sam",
        ),
        KnownModel(
            name="universeg_v1",
            title="UniverSeg v1",
            filename="universeg_v1_nf64_ss64_STA.pt",
            url="https://github.com/JJGO/UniverSeg/releases/download/weights/universeg_v1_nf64_ss64_STA.pt",
            source="https://github.com/JJGO/UniverSeg",
            sha256=None,
            md5=None,
            size_bytes=None,
            approx_mib=5,
            kind="universeg",
            note="No checksum is published; the file is validated by loading it.",
        ),
        KnownModel(
            name="litemedsam",
            title="LiteMedSAM",
            filename="lite_medsam.pth",
            url="https://drive.usercontent.google.com/download?id=18Zed-TUTsmr2zc5CHUWd5Tu13nb6vq6z&export=download",
            source="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM (Google Drive file linked from its README)",
            sha256=None,
            md5=None,
            size_bytes=None,
            approx_mib=38,
            kind="litemedsam",
            note="No checksum is published; the SHA-256 of the first file installed is recorded and verified after.",
            record_checksum=True,
        ),
    )
}
ALIASES = {"medsam": "medsam_vit_b", "sam": "sam_vit_b", "universeg": "universeg_v1", "lite_medsam": "litemedsam",
           "litemedsam_v1": "litemedsam"}

# ------------------------------------------------------------------ MedSAM2 (issue 14)
MEDSAM2_REPO = "https://huggingface.co/wanglab/MedSAM2"
MEDSAM2_FILES = {  # name -> (file, title, note)
    "medsam2_latest": ("MedSAM2_latest.pt", "MedSAM2 (latest)",
                       "Recommended: the latest general MedSAM2 (CT, MRI, PET, ultrasound, video)."),
    "medsam2_ctlesion": ("MedSAM2_CTLesion.pt", "MedSAM2 CT lesion", "Fine-tuned for CT lesions."),
    "medsam2_mri_liverlesion": ("MedSAM2_MRI_LiverLesion.pt", "MedSAM2 MRI liver lesion",
                                "Fine-tuned for liver lesions on MRI."),
    "medsam2_us_heart": ("MedSAM2_US_Heart.pt", "MedSAM2 ultrasound heart",
                         "Fine-tuned for echocardiography (heart ultrasound)."),
    "medsam2_2411": ("MedSAM2_2411.pt", "MedSAM2 (2024-11)", "The first MedSAM2 release (November 2024)."),
}
MEDSAM2_NAMES = tuple(MEDSAM2_FILES)
for _name, (_file, _title, _note) in MEDSAM2_FILES.items():
    KNOWN_MODELS[_name] = KnownModel(
        name=_name, title=_title, filename=_file, url=f"{MEDSAM2_REPO}/resolve/main/{_file}",
        source=f"{MEDSAM2_REPO} (code: https://github.com/bowang-lab/MedSAM2)", sha256=None, md5=None,
        size_bytes=None, approx_mib=149, kind="medsam2",
        note=_note + " No checksum is published; the SHA-256 is recorded on first install and the file "
                     "is validated by its structure (471 keys, SAM2.1 Hiera-tiny shapes).",
        record_checksum=True)
ALIASES["medsam2"] = "medsam2_latest"

# ------------------------------------------------------------------ automatic models (issue 15)
HERMES_REPO = "https://github.com/yhygao/universal-medical-image-segmentation"
UNIVERSAL_REPO = "https://github.com/ljwztc/CLIP-Driven-Universal-Model"
CC_BY_NC_ND = ("CC BY-NC-ND 4.0 (Creative Commons Attribution-NonCommercial-NoDerivatives 4.0, "
               "\u00a9 The Johns Hopkins University): non-commercial use only, with attribution; modified "
               "weights may not be shared.")
for _model in (
    KnownModel(
        name="hermes_r", title="Hermes-R", filename="hermes_r.pth",
        url="https://drive.usercontent.google.com/download?id=1s3Rc5zpgNz9FA2eqKBExaXQ_nsbAPMT8&export=download",
        source=f"{HERMES_REPO} (Google Drive file linked from its README)", sha256=None, md5=None,
        size_bytes=None, approx_mib=930, kind="hermes",
        note="No checksum is published; the SHA-256 of the first file installed is recorded and verified after. "
             "The file holds the model, EMA and optimizer states (size estimated from 60.9 M parameters).",
        record_checksum=True,
        licence="The Hermes repository and its README state no licence for the code or the Hermes-R weights, so "
                "no rights are granted beyond what the law allows: use them for research, cite the paper "
                "(Gao et al., CVPR 2024), and ask the authors before any other use.",
        licence_url=HERMES_REPO),
    KnownModel(
        name="universal_model", title="CLIP-Driven Universal Model (Swin UNETR)",
        filename="clip_driven_universal_swin_unetr.pth",
        url="https://huggingface.co/ljwztc/CLIP-Driven-Universal-Model/resolve/main/clip_driven_universal_swin_unetr.pth",
        source=f"https://huggingface.co/ljwztc/CLIP-Driven-Universal-Model (code: {UNIVERSAL_REPO})",
        sha256=None, md5=None, size_bytes=None, approx_mib=240, kind="universal",
        note="No checksum is published; the SHA-256 of the first file installed is recorded and verified after. "
             "Needs the text embedding universal_text_embedding (txt_encoding.pth).",
        record_checksum=True, licence=CC_BY_NC_ND, licence_url="https://creativecommons.org/licenses/by-nc-nd/4.0/"),
    KnownModel(
        name="universal_text_embedding", title="Universal Model text embedding", filename="txt_encoding.pth",
        url="https://raw.githubusercontent.com/ljwztc/CLIP-Driven-Universal-Model/main/pretrained_weights/txt_encoding.pth",
        source=f"{UNIVERSAL_REPO} (pretrained_weights/txt_encoding.pth: CLIP text embeddings of the 32 organs)",
        sha256="9de46b0be0fdfedc82852045d15efdbb3a04e48a954df27d1290af2f63997145", md5=None, size_bytes=None,
        approx_mib=1, kind="universal_text", licence=CC_BY_NC_ND,
        licence_url="https://creativecommons.org/licenses/by-nc-nd/4.0/"),
):
    KNOWN_MODELS[_model.name] = _model
ALIASES.update({"hermes": "hermes_r", "universal": "universal_model"})


def resolve_medsam2() -> Path | None:
    """The MedSAM2 weights to use: the first installed of ``MEDSAM2_NAMES`` (latest first)."""
    for name in MEDSAM2_NAMES:
        found = resolve(name)
        if found is not None:
            return found
    return None


ProgressCallback = Callable[[int, "int | None"], None]


def get_model(name: str) -> KnownModel:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    try:
        return KNOWN_MODELS[key]
    except KeyError:
        raise MedsamGuiError(
            f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}"
        ) from None


def env_var_for(name: str) -> str:
    return "MEDSAM_GUI_URL_" + get_model(name).name.upper()


def model_url(name: str, url: str | None = None) -> str:
    """The download URL: ``url`` if given, else $MEDSAM_GUI_URL_<NAME>, else the official one."""
    if url:
        return url
    return os.environ.get(env_var_for(name)) or get_model(name).url


# ------------------------------------------------------------------ remembered files

def _recorded() -> dict[str, str]:
    data = config.get_setting(SETTINGS_KEY, {})
    return dict(data) if isinstance(data, dict) else {}


def _record(name: str, path: Path) -> None:
    data = _recorded()
    data[name] = str(Path(path).resolve())
    config.set_setting(SETTINGS_KEY, data)


def recorded_sha256(name: str) -> str | None:
    """The SHA-256 recorded when the weights of ``name`` were first installed (None if none)."""
    data = config.get_setting(CHECKSUM_KEY, {})
    value = data.get(get_model(name).name) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _record_sha256(name: str, digest: str) -> None:
    data = config.get_setting(CHECKSUM_KEY, {})
    data = dict(data) if isinstance(data, dict) else {}
    data[get_model(name).name] = digest
    config.set_setting(CHECKSUM_KEY, data)


def _sha256_of(path: Path) -> str:
    from .checkpoints import file_sha256

    return file_sha256(path)


def resolve(name: str, *, verify: bool = False) -> Path | None:
    """Where the weights of ``name`` are: the remembered file if it still exists, else the
    standard file in ``config.weights_dir()``, else None. ``verify``: for a model whose checksum
    was recorded at install (``record_checksum``), raise CheckpointError when the file changed
    since (the SHA-256 is computed once per path, size and mtime; ``api.resolve_checkpoint``,
    i.e. the CLI and the API, verify before loading)."""
    model = get_model(name)
    recorded = _recorded().get(model.name)
    if recorded and Path(recorded).is_file():
        found: Path | None = Path(recorded)
    else:
        default = config.weights_dir() / model.filename
        found = default if default.is_file() else None
    if verify and found is not None and model.record_checksum:
        want = recorded_sha256(model.name)
        if want is not None:
            got = _sha256_of(found)
            if got != want:
                raise CheckpointError(
                    f"the {model.title} weights {found} changed since they were installed (SHA-256 {got[:12]}..., "
                    f"installed {want[:12]}...): the file may be damaged. Download them again with "
                    f"`medsam-gui weights download {model.name}`, or import the file you trust with "
                    f"`medsam-gui weights import {model.name} FILE`.")
    return found


def list_models() -> list[dict]:
    """One dict per known model: its KnownModel fields plus ``path`` (str or None)."""
    out = []
    for m in KNOWN_MODELS.values():
        d = asdict(m)
        p = resolve(m.name)
        d["path"] = str(p) if p else None
        d["sha256_recorded"] = recorded_sha256(m.name) if m.record_checksum else None
        out.append(d)
    return out


# ------------------------------------------------------------------ licences

def licence_accepted(name: str) -> bool:
    """Whether the user accepted the current licence of ``name`` (True when it has none)."""
    model = get_model(name)
    if model.licence is None:
        return True
    data = config.get_setting(LICENCE_KEY, {})
    return isinstance(data, dict) and data.get(model.name) == model.licence


def accept_licence(name: str) -> None:
    """Remember that the user accepted the licence of ``name`` (as it reads now)."""
    model = get_model(name)
    data = config.get_setting(LICENCE_KEY, {})
    data = dict(data) if isinstance(data, dict) else {}
    data[model.name] = model.licence
    config.set_setting(LICENCE_KEY, data)


# ------------------------------------------------------------------ validation

def validate_file(name: str, path: str | os.PathLike) -> None:
    """Load ``path`` as weights of ``name`` (strictly); raises CheckpointError if unusable."""
    model = get_model(name)
    if model.kind in ("hermes", "universal", "universal_text"):
        from .auto_weights import validate_auto_file

        validate_auto_file(model.kind, model.title, path)
        return
    if model.kind == "medsam2":
        from .medsam2.engine import load_medsam2_state_dict

        load_medsam2_state_dict(path)
        return
    if model.kind == "sam":
        from .medsam import load_medsam_state_dict

        load_medsam_state_dict(path)
        return
    if model.kind == "litemedsam":
        from .litemedsam import load_litemedsam_state_dict

        load_litemedsam_state_dict(path)  # exact keys and shapes of lite_medsam.pth
        return
    # universeg: read the file safely here (file-level errors), then let the real network's
    # strict loader judge the keys when that module exists
    from .checkpoints import load_checkpoint_object

    obj = load_checkpoint_object(path, model_name="UniverSeg v1")
    try:
        from .universeg import universeg_v1  # type: ignore[attr-defined]
    except ImportError:
        universeg_v1 = None
    if universeg_v1 is not None:
        try:
            universeg_v1(weights=obj)
        except MedsamGuiError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path} does not hold UniverSeg v1 weights: {str(exc)[:300]}") from None
        return
    from .checkpoints import extract_state_dict

    sd = extract_state_dict(obj, source=str(path), model_name="UniverSeg v1")
    if not any(k.startswith("enc_blocks.") for k in sd):
        raise CheckpointError(
            f"{path} does not hold UniverSeg v1 weights (no enc_blocks.* keys; first keys: "
            f"{', '.join(list(sd)[:4])})."
        )


# ------------------------------------------------------------------ import

def import_weights(name: str, file: str | os.PathLike, *, copy: bool = True) -> Path:
    """Use a weights file the user already has: validate it by loading it, then copy it into
    ``config.weights_dir()`` (``copy=True``) or just remember its path. Returns the path used."""
    model = get_model(name)
    src = Path(file).expanduser()
    validate_file(model.name, src)
    if copy:
        dest = config.weights_dir() / model.filename
        if not (dest.exists() and dest.resolve() == src.resolve()):
            part = dest.with_name(dest.name + ".part")
            try:
                shutil.copyfile(src, part)
                os.replace(part, dest)
            except OSError as exc:
                _unlink(part)
                raise MedsamGuiError(
                    f"could not copy {src} to {dest}: {exc.strerror or exc}. Free some disk space "
                    f"or import without copying."
                ) from None
        used = dest
    else:
        used = src.resolve()
    if model.record_checksum:  # the user chose this file: its checksum becomes the reference
        _record_sha256(model.name, _sha256_of(used))
    _record(model.name, used)
    return used


# ------------------------------------------------------------------ download

def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def _offline_message(host: str, url: str, model: KnownModel, detail: str) -> str:
    return (
        f"could not reach {host}: you seem to be offline ({detail}); download {url} in a browser "
        f"and import it with `medsam-gui weights import {model.name} FILE` or in the app from the Models menu"
    )


def download(
    name: str,
    *,
    url: str | None = None,
    progress: ProgressCallback | None = None,
    sha256: str | None = _USE_KNOWN,
    md5: str | None = _USE_KNOWN,
    validate: bool = True,
    dest_dir: str | os.PathLike | None = None,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download the weights of ``name`` and return the final path.

    ``progress(done_bytes, total_bytes_or_None)`` is called as data arrives. ``sha256`` /
    ``md5`` default to the known checksums (pass None to skip, or a hex digest for a custom
    URL). ``validate`` also loads the file as weights before accepting it. The file is
    written as ``<name>.part`` and renamed only when everything checks out; on any failure no
    file is left. Raises WeightsDownloadError (or CheckpointError for a file that is not
    the model's weights).

    pooch transfers the file and computes its checksums. pooch would save a download host's
    confirmation page (Google Drive) as the file and keeps no cookies, so a response hook on
    its request (:func:`~.downloads.page_catcher`) keeps the cookies and stops at HTML answers, and the
    confirmation is followed here (``download_pages``).
    """
    import pooch
    import requests

    model = get_model(name)
    src = model_url(model.name, url)
    want_sha = model.sha256 if sha256 is _USE_KNOWN else sha256
    want_md5 = model.md5 if md5 is _USE_KNOWN else md5
    host = urllib.parse.urlsplit(src).hostname or src
    folder = Path(dest_dir) if dest_dir is not None else config.weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / model.filename
    part = folder / (model.filename + ".part")
    _unlink(part)
    how_to = (f"download {src} in a browser and import it with `medsam-gui weights import "
              f"{model.name} FILE` or in the app from the Models menu")
    jar = requests.cookies.RequestsCookieJar()
    meter = DownloadProgress(progress)
    file_url = src
    try:
        for _ in range(3):  # a "confirm the download" page (Google Drive) -> the file
            downloader = pooch.HTTPDownloader(
                progressbar=meter, chunk_size=chunk_size, timeout=timeout, headers={"User-Agent": USER_AGENT},
                cookies=jar, hooks={"response": page_catcher(jar)})
            try:
                if urllib.parse.urlsplit(file_url).scheme == "file":  # a local mirror: pooch has no file:// downloader
                    copy_local_file(file_url, part, meter, chunk_size)
                else:
                    downloader(file_url, str(part), None)
                break
            except WebPage as answer:
                nxt = confirmation_url(answer.page.decode("utf-8", errors="replace"), answer.url, cookie_tokens(jar))
                if nxt is None:
                    raise WeightsDownloadError(
                        f"{host} sent a web page instead of {model.filename} ({page_title(answer.page)}): the file "
                        f"may be over its download quota or no longer shared; nothing was kept. Try again later, "
                        f"or {how_to}") from None
                file_url = nxt
            except requests.HTTPError as exc:
                raise WeightsDownloadError(_http_message(exc.response, host, file_url, how_to)) from None
            except requests.RequestException as exc:
                got = part.stat().st_size if part.exists() else 0
                if got == 0 and not isinstance(exc, requests.exceptions.ChunkedEncodingError):
                    raise WeightsDownloadError(_offline_message(host, file_url, model, connection_reason(exc))) from None
                raise WeightsDownloadError(
                    f"the download of {model.filename} from {host} was interrupted after "
                    f"{got} bytes ({type(exc).__name__}); nothing was kept. Try again, or {how_to}"
                ) from None
        else:
            raise WeightsDownloadError(f"{host} kept answering with web pages instead of {model.filename}; {how_to}")
        done = part.stat().st_size
        total = meter.total
        meter.finish(done)
        if total is not None and done != total:
            raise WeightsDownloadError(
                f"the download of {model.filename} from {host} was interrupted after {done} of "
                f"{total} bytes; nothing was kept. Try again, or {how_to}"
            )
        if done == 0:
            raise WeightsDownloadError(f"the server {host} sent an empty file for {src}; nothing was kept. {how_to}")
        if model.size_bytes is not None and url is None and done != model.size_bytes:
            raise WeightsDownloadError(
                f"{model.filename} has {done} bytes, expected {model.size_bytes}; it was deleted. {how_to}"
            )
        got_sha = pooch.file_hash(str(part), alg="sha256")
        if want_sha and got_sha.lower() != want_sha.lower():
            raise WeightsDownloadError(
                f"{model.filename} failed its SHA-256 check (expected {want_sha}, got {got_sha}); "
                f"the file was deleted. Try again, or {how_to}"
            )
        got_md5 = pooch.file_hash(str(part), alg="md5") if want_md5 else None
        if want_md5 and got_md5.lower() != want_md5.lower():
            raise WeightsDownloadError(
                f"{model.filename} failed its MD5 check (expected {want_md5}, got {got_md5}); "
                f"the file was deleted. Try again, or {how_to}"
            )
        recorded = recorded_sha256(model.name) if model.record_checksum else None
        if recorded and not want_sha and got_sha != recorded:
            raise WeightsDownloadError(
                f"{model.filename} differs from the file installed first (SHA-256 {got_sha[:12]}..., "
                f"recorded {recorded[:12]}...); it was deleted. If the file was updated on purpose, download it "
                f"in a browser and import it with `medsam-gui weights import {model.name} FILE`."
            )
        if validate:
            validate_file(model.name, part)
        os.replace(part, dest)
    except BaseException:
        _unlink(part)
        raise
    if model.record_checksum and (recorded_sha256(model.name) is None or want_sha):
        _record_sha256(model.name, got_sha)
    _record(model.name, dest)
    return dest


# ------------------------------------------------------------------ download helpers

def _http_message(resp, host: str, url: str, how_to: str) -> str:
    return (f"the server {host} answered HTTP {resp.status_code} ({resp.reason}) for {url}; the file may "
            f"have moved. {how_to[0].upper() + how_to[1:]}")
