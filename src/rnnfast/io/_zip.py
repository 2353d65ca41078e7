"""Zip archives (``.keras`` files and ``torch.save`` files are both zips): the errors a
damaged one raises, the guard against impossible or bomb-like members, and the one
look inside that tells a Keras archive from a PyTorch one."""

import lzma
import struct
import zipfile
import zlib

from ..errors import FormatError

__all__ = ["ZIP_ERRORS", "MAX_INFLATE_RATIO", "SMALL_MEMBER", "check_zip_member", "read_member", "zip_kind"]

#: What ``zipfile`` raises on a damaged or hostile archive (an unknown format version
#: is a NotImplementedError, a short record a struct.error, a damaged deflate stream a
#: zlib.error, a damaged bzip2 one an OSError): every reader turns these
#: into :class:`~rnnfast.FormatError`.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
)

#: A compressed zip member larger than SMALL_MEMBER may inflate at most this many
#: times its compressed size. torch.save and Keras store members uncompressed, and
#: weights hardly compress; deflate reaches ~1000:1 only on constant data, which is
#: what a zip bomb holds.
MAX_INFLATE_RATIO = 100
SMALL_MEMBER = 1 << 20


def check_zip_member(info, archive_size):
    """Refuse a zip member whose sizes are impossible in a file of ``archive_size``
    bytes, or bomb-like, before anything is read or allocated for it.

    ``zipfile`` never inflates a member past its declared ``file_size``, so bounding
    the declared size bounds what reading it allocates.
    """
    if info.compress_size > archive_size:
        raise FormatError(
            "record %s claims %d bytes in a file of %d bytes" % (info.filename, info.compress_size, archive_size)
        )
    if info.compress_type == zipfile.ZIP_STORED:
        if info.file_size != info.compress_size:
            raise FormatError("record %s: stored sizes disagree" % info.filename)
    elif info.file_size > max(SMALL_MEMBER, MAX_INFLATE_RATIO * info.compress_size):
        raise FormatError(
            "record %s would inflate %d compressed bytes to %d (more than %d times: a zip "
            "bomb?); torch.save and Keras store records uncompressed"
            % (info.filename, info.compress_size, info.file_size, MAX_INFLATE_RATIO)
        )


def read_member(z, info, what):
    """A member's bytes, read in chunks into one buffer of its declared size
    (``ZipFile.read`` joins the inflated pieces, holding about three times the member
    at its peak); the CRC is checked by the reader at the end of the member. ``what``
    names the member in the FormatError raised when it holds more or fewer bytes than
    it declares."""
    out = bytearray(info.file_size)
    view = memoryview(out)
    pos = 0
    with z.open(info) as f:
        while True:
            chunk = f.read(min(1 << 20, info.file_size - pos) or 1)
            if not chunk:
                break
            if pos + len(chunk) > info.file_size:
                raise FormatError("%s holds more than the %d bytes it declares" % (what, info.file_size))
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
    if pos != info.file_size:
        raise FormatError("%s holds %d bytes, not the %d it declares" % (what, pos, info.file_size))
    return out


def zip_kind(path):
    """What the zip archive at ``path`` holds, from its member names: ``"keras"`` (a
    ``config.json``), ``"torch"`` (a ``data.pkl``) or None (neither).

    Raises
    ------
    FormatError
        The archive is damaged (its directory cannot be read).
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except ZIP_ERRORS as e:
        raise FormatError("%s: corrupt zip archive (%s)" % (path, e)) from None
    if "config.json" in names:
        return "keras"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    return None
