"""User-facing errors.

Every error a user can cause (a bad file, a wrong checkpoint, a full disk) is raised as a
subclass of :class:`MedsamGuiError` whose message is written for the user: it says what is
wrong and, where possible, what to do. The CLI prints it and exits 1; the GUI shows it in a
dialog or the status bar and keeps running.
"""


class MedsamGuiError(Exception):
    """Base class for errors whose message is meant for the user."""


class ScanReadError(MedsamGuiError):
    """A scan could not be read (missing, unreadable, truncated, unsupported)."""


class GeometryMismatchError(MedsamGuiError):
    """A label map does not lie on the scan's grid."""


class ExportError(MedsamGuiError):
    """A label map could not be written (refused target, disk full, read-only folder)."""


class CheckpointError(MedsamGuiError):
    """Model weights are missing, corrupt, unsafe or belong to another model."""


class WeightsDownloadError(MedsamGuiError):
    """Model weights could not be downloaded or failed their checksum."""


class SessionError(MedsamGuiError):
    """A saved session could not be read or restored."""
