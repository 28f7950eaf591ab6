"""Safe extraction of one layer tar into a directory that overlayfs can use as a lowerdir.

Called by the image store's staging code (agent/images/layout.py) for every layer it has not
unpacked yet. Members are extracted one by one with tarfile's stream reader and our own checks,
never with `TarFile.extract`: the stock `data`/`tar` filters would reject the absolute symlinks
and strip the setuid bits that real images need, and the `fully_trusted` one lets an archive
write anywhere. Refused: paths that are absolute or escape with `..`, writes through a symlink or
a non-directory in any parent component, hard links whose target escapes, relative symlinks whose
target escapes the root lexically, and device nodes. OCI whiteouts become overlay whiteouts.

The caller gives a fresh, private directory and deletes it on any error, so a refused archive
leaves nothing behind; checks with lstat are therefore not racing anyone.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from pathlib import Path
from typing import IO, NamedTuple, cast

from shoal.api.errors import InvalidArgument, ShoalError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_COPY_CHUNK = 1 << 20
# xattrs a layer may carry over: file capabilities (ping's cap_net_raw) and user data. Others
# (trusted.overlay.* above all) could fake whiteouts or opaque dirs, so they are dropped.
_KEPT_XATTR_PREFIXES = ("security.capability", "user.")


class LayerStats(NamedTuple):
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    size: int  # bytes of regular file content


class _HashingReader:
    """A file-like wrapper hashing every byte tarfile reads, so the diff ID costs no second pass."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        """Hash what follows tarfile's end marker: the diff ID covers the padding too."""
        while self.read(_COPY_CHUNK):
            pass


def open_decompressed(raw: IO[bytes]) -> IO[bytes]:
    """`raw` (a seekable file) as an uncompressed stream: plain tar or gzip, sniffed by magic."""
    magic = raw.read(4)
    raw.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic == b"\x28\xb5\x2f\xfd":
        raise InvalidArgument("zstd-compressed layers are not supported")
    return raw


def unpack_layer(raw: IO[bytes], dest: Path, *, label: str,
                 expected_diff_id: str | None = None) -> LayerStats:
    """Extract the (possibly gzip) layer tar `raw` into the empty directory `dest`.

    InvalidArgument names the offending member, or says the archive is not a readable tar, or
    that its content does not match `expected_diff_id`.
    """
    reader = _HashingReader(open_decompressed(raw))
    unpacker = _Unpacker(dest, label)
    try:
        with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
            for member in tar:
                unpacker.add(tar, member)
        reader.drain()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InvalidArgument(f"{label}: not a valid tar archive: {e}") from e
    unpacker.finish()
    diff_id = "sha256:" + reader.hash.hexdigest()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise InvalidArgument(
            f"{label}: content digest {diff_id} does not match the image's diff ID {expected_diff_id}"
        )
    return LayerStats(diff_id, unpacker.size)


def clean_parts(name: str) -> tuple[str, ...] | None:
    """Lexically cleaned components of an archive path, or None if it is absolute or escapes."""
    if name.startswith("/"):
        return None
    return join_parts((), name)


def join_parts(base: tuple[str, ...], relative: str) -> tuple[str, ...] | None:
    """`relative` resolved lexically from the directory `base`; None when it climbs out."""
    stack = list(base)
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(part)
    return tuple(stack)


class _Unpacker:
    """Extraction state of one layer: the root, deferred directory metadata and the size."""

    def __init__(self, dest: Path, label: str) -> None:
        self.dest = dest
        self.label = label
        self.size = 0
        self._is_root = os.geteuid() == 0
        self._dirs: list[tuple[Path, tarfile.TarInfo]] = []

    def refuse(self, member: tarfile.TarInfo, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.label}: refusing archive member {member.name!r}: {why}")

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = clean_parts(member.name)
        if parts is None:
            raise self.refuse(member, "path is absolute or escapes the layer root")
        if not parts:
            if not member.isdir():
                raise self.refuse(member, "the layer root must be a directory")
            self._dirs.append((self.dest, member))
            return
        if parts[-1].startswith(WHITEOUT_PREFIX):
            self._whiteout(member, parts)
            return
        target = self._parent(member, parts[:-1], create=True) / parts[-1]
        self._add_entry(tar, member, parts, target)

    def _add_entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...],
                   target: Path) -> None:
        if member.ischr() or member.isblk():
            raise self.refuse(member, "device nodes are not allowed in layers")
        if member.isdir():
            if not self._clear(target, keep_dir=True):
                os.mkdir(target, 0o700)
            self._dirs.append((target, member))
        elif member.isreg():
            self._clear(target, keep_dir=False)
            self._write_file(tar, member, target)
        elif member.issym():
            if not member.linkname.startswith("/") and join_parts(parts[:-1], member.linkname) is None:
                raise self.refuse(member, f"symlink target {member.linkname!r} escapes the layer root")
            self._clear(target, keep_dir=False)
            os.symlink(member.linkname, target)
            self._finish_entry(member, target)
        elif member.islnk():
            source = self._link_source(member)
            self._clear(target, keep_dir=False)
            os.link(source, target, follow_symlinks=False)
        elif member.isfifo():
            self._clear(target, keep_dir=False)
            os.mkfifo(target, 0o600)
            self._finish_entry(member, target)
        else:
            raise self.refuse(member, f"unsupported member type {member.type!r}")

    def _parent(self, member: tarfile.TarInfo, parts: tuple[str, ...], *, create: bool) -> Path:
        """The directory `parts` under the root, every component checked to be a real directory
        (never a symlink, so nothing is written outside the root); missing ones are made."""
        path = self.dest
        for i, part in enumerate(parts):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                if not create:
                    raise self.refuse(member, f"{'/'.join(parts[:i + 1])!r} does not exist") from None
                os.mkdir(path, 0o755)
                continue
            if not stat.S_ISDIR(mode):
                what = "a symlink" if stat.S_ISLNK(mode) else "a non-directory"
                raise self.refuse(member, f"would write through {what} at {'/'.join(parts[:i + 1])!r}")
        return path

    def _clear(self, target: Path, *, keep_dir: bool) -> bool:
        """Make room for a new entry (a later member replaces an earlier one, as in Docker);
        True when an existing directory is kept for a directory member."""
        try:
            mode = os.lstat(target).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if keep_dir:
                return True
            shutil.rmtree(target)
        else:
            os.unlink(target)
        return False

    def _link_source(self, member: tarfile.TarInfo) -> Path:
        parts = clean_parts(member.linkname)
        if not parts:
            raise self.refuse(member, f"hard link target {member.linkname!r} escapes the layer root")
        source = self._parent(member, parts[:-1], create=False) / parts[-1]
        try:
            mode = os.lstat(source).st_mode
        except FileNotFoundError:
            raise self.refuse(member, f"hard link target {member.linkname!r} does not exist") from None
        if stat.S_ISDIR(mode):
            raise self.refuse(member, "hard link to a directory")
        return source

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        source = tar.extractfile(member)
        if source is None:
            raise self.refuse(member, "no file data")
        with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
            shutil.copyfileobj(source, out, _COPY_CHUNK)
            out.flush()
        self.size += member.size
        self._finish_entry(member, target)

    def _finish_entry(self, member: tarfile.TarInfo, target: Path) -> None:
        """Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities),
        then times; never following a symlink."""
        is_link = member.issym()
        if self._is_root:
            os.lchown(target, member.uid, member.gid)
        if not is_link:
            os.chmod(target, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            name = key.removeprefix("SCHILY.xattr.")
            if name != key and name.startswith(_KEPT_XATTR_PREFIXES):
                # The store's filesystem may not hold it; Docker ignores that too.
                with contextlib.suppress(OSError):
                    os.setxattr(target, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
        mtime_ns = int(member.mtime * 1_000_000_000)
        os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def _whiteout(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """`.wh..wh..opq` marks its directory opaque; `.wh.name` hides `name` of lower layers."""
        parent = self._parent(member, parts[:-1], create=True)
        base = parts[-1]
        if base == OPAQUE_MARKER:
            os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT_PREFIX * 2):
            return  # aufs bookkeeping (.wh..wh.plnk and friends): meaningless for overlay
        hidden = parent / base[len(WHITEOUT_PREFIX):]
        self._clear(hidden, keep_dir=False)
        try:
            os.mknod(hidden, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        except PermissionError as e:
            raise ShoalError(f"{self.label}: cannot create an overlay whiteout (needs CAP_MKNOD): {e}") from e
        if self._is_root:
            os.lchown(hidden, member.uid, member.gid)

    def finish(self) -> None:
        """Directory modes and times last, deepest first: writing children changes a dir's mtime,
        and a read-only mode must not stop its own extraction."""
        for path, member in sorted(self._dirs, key=lambda item: len(item[0].parts), reverse=True):
            self._finish_entry(member, path)
