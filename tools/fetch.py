"""Download the Twitter dataset, the paper's split files and the Caffe weights.

    python -m tools.fetch [dataset|splits|weights|finetuned|all ...]
                          [--data-dir data] [--weights-dir weights] [--base-url URL]

``all`` (the default) is dataset + splits + weights. ``finetuned`` (not part of ``all``)
is the two Twitter models released with the paper (twitter_finetuned_test4*.caffemodel),
converted like the weights.

Downloads resume: bytes go to ``<file>.part`` and an interrupted transfer continues from
there with an HTTP Range request (automatically up to --retries times, or on the next
run); a server silent for --timeout seconds counts as an interruption. A finished file is
checked against its known size and SHA-1/SHA-256 and only then renamed into place; a file
that fails the check is deleted. Progress (bytes, %, rate) goes to stderr. Caffemodels are
converted to HDF5 in the weights folder (tools/convert_caffemodel.py).

Every address can be redirected to a mirror with ``--base-url URL`` (or the environment
variable SENTIMENT_FETCH_BASE_URL): the file is then fetched from ``URL/<mirror path>``
(the file's name; ground_truth/<subset>/test<k>/<part>.txt for the splits). The tests use
this with a local server.

Where things go (see nn/twitter.py for the dataset layout)::

    data/downloads/<archive>              the dataset archive, kept
    data/twitter/...                      the unpacked dataset (images, label files)
    data/twitter/splits/<subset>/test<k>/{train,test}.txt
    weights/<name>.caffemodel             downloaded Caffe weights
    weights/<name>.h5                     converted weights (nn.weights layout)
"""
import argparse
import collections
import contextlib
import hashlib
import http.client
import math
import os
import posixpath
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile

from nn.twitter import AGREES, DEFAULT_DATA_DIR, NUM_FOLDS, DatasetError, default_splits_dir, \
    label_file, read_list, split_files

BASE_URL_ENV = "SENTIMENT_FETCH_BASE_URL"
PROG = "python -m tools.fetch"
# Seconds a connection may stay silent (connecting, or between two reads), not a limit on
# a whole download: a slow transfer that keeps sending is never cut. 30 s of silence is a
# dead server, not a slow one, and keeps a dead one to about 2 minutes with the 3 retries.
DEFAULT_TIMEOUT = 30.0

Source = collections.namedtuple(
    "Source", "url mirror_path dest sha1 sha256 size convert_to num_classes")
Source.__doc__ = """One file to download.

url: the public address (None if unknown); mirror_path: path below --base-url;
dest: where it goes, relative to the data dir (group dataset/splits) or the weights dir
(weights/finetuned); sha1, sha256, size: known checks or None; convert_to: for a
caffemodel, the HDF5 file to convert it into; num_classes: expected outputs (None: read).
"""

_SPLITS_REPO = ("https://raw.githubusercontent.com/imatge-upc/sentiment-2017-imavis/"
                "master/ground_truth")
_UPC = "https://imatge.upc.edu/web/sites/default/files/projects/affective/public_html/2017-imavis"

# --data-dir holds the dataset folder that nn/twitter.py reads by default (data/twitter).
DATA_DIR, DATASET_FOLDER = os.path.split(DEFAULT_DATA_DIR)


def _split_sources():
    """The published folds, one Source per file: ground_truth/<subset>/test<k>/<part>.txt
    in the authors' repository, stored where nn/twitter.py's load_fold reads them."""
    sources = []
    for agree in AGREES:
        for fold in range(1, NUM_FOLDS + 1):
            for relative in split_files("", agree, fold):   # <subset>/test<k>/<part>.txt
                name = relative.replace(os.sep, "/")
                sources.append(Source(f"{_SPLITS_REPO}/{name}", f"ground_truth/{name}",
                                      os.path.join(default_splits_dir(DATASET_FOLDER),
                                                   relative),
                                      None, None, None, None, None))
    return sources


# --------------------------------------------------------------------------------------
# The addresses (all public). Checksums are those published with the files; None = none
# published. The Twitter dataset is distributed from its project page
# (https://www.cs.rochester.edu/u/qyou/DeepSent/deepsentiment.html); the direct archive
# address could not be confirmed, so it is None here: download the archive by hand and
# pass --dataset-archive FILE, or give --dataset-url URL.
# --------------------------------------------------------------------------------------
SOURCES = {
    "dataset": [
        Source(None, "twitter_dataset.zip", "downloads/twitter_dataset.zip",
               None, None, None, None, None),
    ],
    "splits": _split_sources(),
    "weights": [   # BVLC reference CaffeNet (ImageNet); SHA-1 from Caffe's model zoo readme
        Source("http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",
               "bvlc_reference_caffenet.caffemodel", "bvlc_reference_caffenet.caffemodel",
               "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46", None, None,
               "caffenet_imagenet.h5", 1000),
    ],
    "finetuned": [  # the paper's released models (README of imatge-upc/sentiment-2017-imavis)
        Source(f"{_UPC}/twitter_finetuned_test4_iter_180.caffemodel",
               "twitter_finetuned_test4_iter_180.caffemodel",
               "twitter_finetuned_test4_iter_180.caffemodel", None, None, None,
               "twitter_finetuned_test4.h5", 2),
        Source(f"{_UPC}/twitter_finetuned_test4_iter_180_conv.caffemodel",
               "twitter_finetuned_test4_iter_180_conv.caffemodel",
               "twitter_finetuned_test4_iter_180_conv.caffemodel", None, None, None,
               "twitter_finetuned_test4_conv.h5", 2),
    ],
}
TARGETS = ("dataset", "splits", "weights", "finetuned", "all")
ALL = ("dataset", "splits", "weights")


class DownloadError(RuntimeError):
    """A download or unpack failed; the message names the address or file."""


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is in the .part file."""


# --- progress -------------------------------------------------------------------------------

def human(n):
    """Byte count -> '512 B', '3.4 KiB', '12.0 MiB', '1.2 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class Progress:
    """One updating stderr line: 'name: 1.2 MiB / 4.0 MiB (30%) 2.1 MiB/s'."""

    def __init__(self, label, have, total, stream, every=0.25):
        self.label, self.have, self.total, self.stream = label, have, total, stream
        self.start, self.start_bytes, self.every, self.last = time.monotonic(), have, every, 0.0

    def line(self):
        rate = (self.have - self.start_bytes) / max(time.monotonic() - self.start, 1e-6)
        if self.total:
            done = f"{human(self.have)} / {human(self.total)} " \
                   f"({100.0 * self.have / self.total:.0f}%)"
        else:
            done = human(self.have)
        return f"{self.label}: {done} {human(rate)}/s"

    def update(self, n):
        self.have += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def finish(self):
        self.stream.write("\r" + self.line() + "\n")
        self.stream.flush()


# --- downloading ----------------------------------------------------------------------------

def _hash(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path, sha1=None, sha256=None, size=None):
    """None if `path` passes the given checks, else a sentence saying what is wrong."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return f"size is {actual} bytes, expected {size}"
    for algorithm, expected in (("sha1", sha1), ("sha256", sha256)):
        if expected is not None:
            got = _hash(path, algorithm)
            if got != expected.lower():
                return f"{algorithm.upper()} is {got}, expected {expected}"
    return None


def _content_range_total(value):
    """'bytes 10-99/100' or 'bytes */100' -> (start or None, total or None)."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        start = None if span == "*" else int(span.split("-", 1)[0])
        return start, None if total == "*" else int(total)
    except (ValueError, AttributeError):
        return None, None


def _transfer(url, part, timeout, stream, label, chunk_size=1 << 16):
    """Fetch `url` into `part`, continuing after the bytes already there.

    Returns the full size when the server said it (else None). Raises _Interrupted when
    the connection breaks or closes early, DownloadError on an HTTP error.
    """
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "sentiment-fetch/1.0"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # nothing left to send: complete, or a stale .part
            _, total = _content_range_total(e.headers.get("Content-Range"))
            if total == have:
                return total
            os.remove(part)
            raise _Interrupted("the server refused to resume; starting again") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except TimeoutError:   # connected, but the server never answered
        raise _Interrupted(f"no answer within {timeout:g} s") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Interrupted(f"cannot connect: {getattr(e, 'reason', e)}") from None
    with response:
        total = None
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        if have and response.status == 206:
            start, total = _content_range_total(response.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(f"{url}: server resumed at byte {start}, asked {have}")
            mode = "ab"
        else:   # a full response (the server ignored the Range header): start over
            have, mode, total = 0, "wb", length
        progress = Progress(label, have, total, stream)
        received = 0
        try:
            with open(part, mode) as f:
                while True:
                    chunk = response.read(chunk_size)
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            progress.finish()
            raise _Interrupted(f"connection lost after {human(progress.have)}: {e}") from None
        progress.finish()
        if length is not None and received < length:
            raise _Interrupted(f"connection closed after {human(progress.have)}")
    return total


def _makedirs(folder):
    """Create `folder` and its missing parents; returns those created, deepest first."""
    created = []
    while folder and not os.path.isdir(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    if created:
        os.makedirs(created[0])
    return created


@contextlib.contextmanager
def _folder_for_failure(folder):
    """Create `folder` for the block; if the block fails, remove again the folders it
    created that are still empty (a failed run leaves no empty tree behind)."""
    created = _makedirs(folder)
    try:
        yield
    except BaseException:
        for path in created:
            try:
                os.rmdir(path)
            except OSError:   # not empty: its parents are not either
                break
        raise


def download(url, dest, sha1=None, sha256=None, size=None, retries=3,
             timeout=DEFAULT_TIMEOUT, retry_wait=2.0, stream=None, label=None):
    """Download `url` to `dest` with resume, checks and progress; returns `dest`.

    An existing `dest` that passes the checks is kept (nothing is fetched). Bytes go to
    dest + '.part'; after an interruption the transfer resumes with a Range request, up to
    `retries` times (waiting retry_wait * attempt seconds), and a later call resumes too.
    `timeout`: seconds the server may stay silent before that counts as an interruption.
    The finished file must match `size` (or the size the server announced), `sha1` and
    `sha256` when given; otherwise it is deleted and DownloadError raised. Folders created
    for `dest` are removed again if the download fails and they are empty. `label` names
    the file in the progress lines (default: its file name).
    """
    stream = sys.stderr if stream is None else stream
    dest = os.fspath(dest)
    label = label or os.path.basename(dest)
    if os.path.exists(dest) and verify(dest, sha1, sha256, size) is None:
        stream.write(f"{label}: already there\n")
        return dest
    part = dest + ".part"
    with _folder_for_failure(os.path.dirname(dest)):
        attempt = 0
        while True:
            try:
                total = _transfer(url, part, timeout, stream, label)
                break
            except _Interrupted as e:
                have = os.path.getsize(part) if os.path.exists(part) else 0
                attempt += 1
                if attempt > retries:
                    if not have and os.path.exists(part):
                        os.remove(part)   # nothing to resume; would keep the folder
                    again = f"run again to resume from {part}" if have else "run again"
                    raise DownloadError(f"{url}: {e}; check the network or give a mirror "
                                        f"with --base-url URL, then {again}") from None
                # attempts count the first try too: 'attempt 2 of 4' is the first retry
                how = f"resuming at {have} bytes" if have else "retrying"
                stream.write(f"{label}: {e}; {how} (attempt {attempt + 1} of {retries + 1})\n")
                time.sleep(retry_wait * attempt)
        problem = verify(part, sha1, sha256, size if size is not None else total)
        if problem:
            os.remove(part)
            raise DownloadError(f"{url}: {problem}; the download was deleted")
        os.replace(part, dest)
    return dest


# --- unpacking ------------------------------------------------------------------------------

def _safe_member(name, archive):
    """Refuse absolute paths and '..' (an archive must not write outside its folder)."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DownloadError(f"{archive}: unsafe member path {name!r}")


def unpack(archive, dest_dir, check=None):
    """Extract a zip or tar (plain, gz, bz2, xz) archive into dest_dir; returns dest_dir.

    Everything is extracted to a temporary folder first; if the archive holds a single
    top-level folder (_single_top_folder), its contents are used. Entries then replace
    same-named entries in dest_dir (other entries, e.g. splits/, stay). Links and unsafe
    paths are refused.
    check(names): called with the member names (folders end in '/') before anything is
    extracted; a sentence it returns refuses the archive (DownloadError).
    """
    archive, dest_dir = os.fspath(archive), os.fspath(dest_dir)
    tmp = dest_dir.rstrip("/\\") + ".unpacking"
    try:
        if zipfile.is_zipfile(archive):
            opened = zipfile.ZipFile(archive)
        elif tarfile.is_tarfile(archive):
            opened = tarfile.open(archive)
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
        with opened:
            is_tar = isinstance(opened, tarfile.TarFile)
            names = [] if is_tar else opened.namelist()
            for member in opened.getmembers() if is_tar else ():
                if not (member.isfile() or member.isdir()):
                    raise DownloadError(f"{archive}: member {member.name!r} is a link "
                                        "or device; refusing to unpack")
                names.append(member.name + "/" if member.isdir() else member.name)
            for name in names:
                _safe_member(name, archive)
            problem = check(names) if check else None
            if problem:
                raise DownloadError(f"{archive}: {problem}; nothing was extracted")
            top = _single_top_folder(_member_paths(names))
            with _folder_for_failure(os.path.dirname(tmp)):
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp)
                try:
                    if is_tar and hasattr(tarfile, "data_filter"):   # Python >= 3.11.4:
                        opened.extractall(tmp, filter="data")         # belt and braces
                    else:
                        opened.extractall(tmp)
                    root = os.path.join(tmp, top) if top else tmp
                    os.makedirs(dest_dir, exist_ok=True)
                    for entry in os.listdir(root):
                        target = os.path.join(dest_dir, entry)
                        if os.path.isdir(target) and not os.path.islink(target):
                            shutil.rmtree(target)
                        elif os.path.lexists(target):
                            os.remove(target)
                        os.replace(os.path.join(root, entry), target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DownloadError(f"{archive}: broken archive: {e}") from None
    return dest_dir


def _member_paths(names):
    """(path, is_dir) for each archive member name, as extracting it lays it out here:
    '/'-separated, without '.' parts or a trailing '/'. A backslash separates folders only
    where the system's separator is one: on Linux, zipfile and tarfile extract
    'top\\a.txt' as one file of that name at the top."""
    entries = []
    for name in names:
        name = name.replace(os.sep, "/")
        path = posixpath.normpath(name)
        if path != ".":   # ('./' in a tar: the archive's own top)
            entries.append((path, name.endswith("/")))
    return entries


def _single_top_folder(entries):
    """The folder whose contents unpack uses instead of the archive's top: the name of the
    one top-level entry of `entries` (from _member_paths) when it is a folder, else None.
    Decided from the member names alone, so that _dataset_layout_problem, which sees
    nothing extracted, strips exactly what unpack strips."""
    tops = {path.split("/")[0] for path, _ in entries}
    if len(tops) == 1 and any(is_dir or "/" in path for path, is_dir in entries):
        return tops.pop()
    return None


def _dataset_layout_problem(names):
    """None if archive member `names` hold the layout nn/twitter.py reads (the label files
    and images, at the top or in one top folder, as unpack strips it), else what is missing."""
    entries = _member_paths(names)
    top = _single_top_folder(entries)
    if top:
        entries = [(path[len(top) + 1:], is_dir) for path, is_dir in entries
                   if path.startswith(top + "/")]
    files = {path for path, is_dir in entries if not is_dir}
    missing = [name for name in (os.path.basename(label_file("", a)) for a in AGREES)
               if name not in files]
    from PIL import Image   # (only an archive being checked needs it)
    image_types = Image.registered_extensions()
    if not any(os.path.splitext(path)[1].lower() in image_types
               and (path.startswith("images/") or "/" not in path) for path in files):
        missing.append("images (images/<image file> or next to the label files)")
    if not missing:
        return None
    return (f"not the Twitter dataset: no {', '.join(missing)} at its top or in a single top "
            "folder (see nn/twitter.py)")


# --- targets --------------------------------------------------------------------------------

def _url(source, base_url):
    if base_url:
        return f"{base_url.rstrip('/')}/{source.mirror_path}"
    return source.url


def fetch_dataset(data_dir, base_url=None, dataset_url=None, archive=None, **kw):
    """Download (or take `archive`) and unpack the Twitter dataset into data_dir/twitter
    (DATASET_FOLDER)."""
    source = SOURCES["dataset"][0]
    if archive is None:
        url = dataset_url or _url(source, base_url)
        if url is None:
            raise DownloadError(
                "the Twitter dataset has no confirmed direct address: download it from "
                "https://www.cs.rochester.edu/u/qyou/DeepSent/deepsentiment.html and run "
                "`python -m tools.fetch dataset --dataset-archive FILE` (or give "
                "--dataset-url URL)")
        archive = download(url, os.path.join(data_dir, source.dest), source.sha1,
                           source.sha256, source.size, **kw)
    elif os.path.isdir(archive):
        raise DownloadError(f"--dataset-archive {archive}: is a folder, not an archive file")
    elif not os.path.isfile(archive):
        raise DownloadError(f"--dataset-archive {archive}: no such file")
    return unpack(archive, os.path.join(data_dir, DATASET_FOLDER),
                  check=_dataset_layout_problem)


def fetch_splits(data_dir, base_url=None, **kw):
    """Download the 30 published split files into data_dir/twitter/splits and check them."""
    for source in SOURCES["splits"]:
        path = os.path.join(data_dir, source.dest)
        with _folder_for_failure(os.path.dirname(path)):   # also when the list is bad
            download(_url(source, base_url), path, source.sha1, source.sha256, source.size,
                     label=source.dest, **kw)   # (30 files called train.txt or test.txt)
            try:
                read_list(path)
            except DatasetError as e:
                os.remove(path)
                raise DownloadError(
                    f"{e} (downloaded from {_url(source, base_url)}; deleted)")


def fetch_weights(weights_dir, group="weights", base_url=None, **kw):
    """Download the caffemodels of `group` and convert each to HDF5 in weights_dir."""
    from tools.convert_caffemodel import CaffemodelError, convert
    for source in SOURCES[group]:
        url = _url(source, base_url)
        model = download(url, os.path.join(weights_dir, source.dest), source.sha1,
                         source.sha256, source.size, **kw)
        out = os.path.join(weights_dir, source.convert_to)
        try:
            convert(model, out, num_classes=source.num_classes)
        except CaffemodelError as e:
            raise DownloadError(f"converting {model}: {e}") from None
        print(f"converted {model} -> {out}", file=sys.stderr)


def _number(kind, minimum, strict):
    """argparse type: a `kind` number >= minimum (> minimum when strict)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if math.isnan(value) or math.isinf(value):
            kind_name = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind_name}, got {text!r}")
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be {'more than' if strict else 'at least'} {minimum}, got {text}")
        return value
    return parse


def main(argv=None):
    # the help shows the docstring without its synopsis (argparse prints the usage)
    title, _synopsis, *rest = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog=PROG, description="\n\n".join([title] + rest),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=["all"], choices=TARGETS,
                        help="what to fetch (default: all = dataset splits weights; "
                             "finetuned = the paper's released Twitter models)")
    parser.add_argument("--data-dir", default=DATA_DIR,
                        help="folder for the dataset, its archive and the splits "
                             "(default: %(default)s)")
    parser.add_argument("--weights-dir", default="weights",
                        help="folder for the caffemodels and their .h5 conversions "
                             "(default: %(default)s)")
    parser.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV),
                        help=f"mirror replacing every address (default: ${BASE_URL_ENV} "
                             "if set, else the public addresses)")
    parser.add_argument("--dataset-url", help="address of the Twitter dataset archive "
                                              "(default: none known; see --dataset-archive)")
    parser.add_argument("--dataset-archive", help="a local copy of the dataset archive (zip "
                                                  "or tar), unpacked instead of downloading")
    parser.add_argument("--retries", type=_number(int, 0, strict=False), default=3,
                        help="automatic retries per file after a failed or broken "
                             "connection (default: %(default)s)")
    parser.add_argument("--timeout", type=_number(float, 0, strict=True),
                        default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="seconds a server may stay silent before the connection "
                             "counts as broken (default: %(default)g)")
    args = parser.parse_args(argv)
    targets = []
    for target in args.targets:
        for t in (ALL if target == "all" else (target,)):
            if t not in targets:
                targets.append(t)
    kw = {"retries": args.retries, "timeout": args.timeout}
    failed = 0
    for target in targets:   # one failing target does not stop the others
        try:
            if target == "dataset":
                fetch_dataset(args.data_dir, args.base_url, args.dataset_url,
                              args.dataset_archive, **kw)
            elif target == "splits":
                fetch_splits(args.data_dir, args.base_url, **kw)
            else:
                fetch_weights(args.weights_dir, target, args.base_url, **kw)
        except DownloadError as e:
            print(f"{PROG}: error: {target}: {e}", file=sys.stderr)
            failed += 1
        except OSError as e:   # e.g. a folder that cannot be created or written, disk full
            where = f"{e.filename}: " if e.filename else ""
            print(f"{PROG}: error: {target}: {where}{e.strerror or e}", file=sys.stderr)
            failed += 1
        except KeyboardInterrupt:   # what arrived stays in <file>.part
            print(f"{PROG}: interrupted during {target}; run the same command again to "
                  "resume", file=sys.stderr)
            return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
