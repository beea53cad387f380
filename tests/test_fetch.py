"""tools/fetch.py against a local HTTP server (127.0.0.1, in a thread): progress, resume,
checksums, unpacking, conversion. Nothing here reaches the internet."""
import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
import zipfile

import numpy as np
import pytest

from nn import twitter
from tools import fetch


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files {path: bytes}; honours Range unless server.ignore_range (and
    resumes server.shift bytes off the asked start, saying so in Content-Range); for paths
    in server.drop_once, the first response stops after half the body; server.no_length
    leaves out Content-Length (the body ends when the connection closes)."""

    def log_message(self, *args):      # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and not server.ignore_range:
            start = int(wanted.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, status = start + server.shift, 206
        self.send_response(status)
        if not server.no_length:
            self.send_header("Content-Length", str(len(body) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        if self.path in server.drop_once:
            server.drop_once.discard(self.path)
            self.wfile.write(payload[:len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True   # the client sees the body end early
            return
        self.wfile.write(payload)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv(fetch.BASE_URL_ENV, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.drop_once, httpd.ignore_range = {}, [], set(), False
    httpd.shift, httpd.no_length = 0, False
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _payload(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()


def test_download_with_progress_and_checks(server, tmp_path, capsys):
    body = _payload(300_001)
    server.files["/f.bin"] = body
    dest = tmp_path / "sub" / "f.bin"
    fetch.download(server.url + "/f.bin", dest, sha1=hashlib.sha1(body).hexdigest(),
                   sha256=hashlib.sha256(body).hexdigest(), size=len(body))
    assert dest.read_bytes() == body
    assert os.listdir(tmp_path / "sub") == ["f.bin"]          # no .part left
    err = capsys.readouterr().err
    assert "f.bin: 293.0 KiB / 293.0 KiB (100%)" in err and "/s" in err
    # a second call finds the verified file and fetches nothing
    fetch.download(server.url + "/f.bin", dest, sha1=hashlib.sha1(body).hexdigest())
    assert len(server.requests) == 1 and "already there" in capsys.readouterr().err


def test_broken_connection_is_resumed_with_range(server, tmp_path, capsys):
    body = _payload(200_003, seed=1)
    server.files["/big.bin"] = body
    server.drop_once.add("/big.bin")
    dest = tmp_path / "big.bin"
    fetch.download(server.url + "/big.bin", dest, retry_wait=0,
                   sha256=hashlib.sha256(body).hexdigest())
    assert dest.read_bytes() == body
    half = len(body) // 2
    assert server.requests == [("/big.bin", None), ("/big.bin", f"bytes={half}-")]
    assert f"; resuming at {half} bytes (attempt 2 of 4)\n" in capsys.readouterr().err


def test_interrupted_download_resumes_on_the_next_run(server, tmp_path):
    body = _payload(100_001, seed=2)
    server.files["/d.bin"] = body
    server.drop_once.add("/d.bin")
    dest = tmp_path / "d.bin"
    with pytest.raises(fetch.DownloadError, match="run again to resume from .*d.bin.part"):
        fetch.download(server.url + "/d.bin", dest, retries=0)
    part = tmp_path / "d.bin.part"
    assert part.read_bytes() == body[:len(body) // 2] and not dest.exists()
    fetch.download(server.url + "/d.bin", dest, retries=0, size=len(body))
    assert dest.read_bytes() == body and not part.exists()
    assert server.requests[-1] == ("/d.bin", f"bytes={len(body) // 2}-")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    body = _payload(50_001, seed=3)
    server.files["/r.bin"] = body
    server.ignore_range = True
    (tmp_path / "r.bin.part").write_bytes(b"stale bytes from some other file")
    fetch.download(server.url + "/r.bin", tmp_path / "r.bin", retries=0)
    assert (tmp_path / "r.bin").read_bytes() == body


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    body = _payload(4_001, seed=4)
    server.files["/c.bin"] = body
    (tmp_path / "c.bin.part").write_bytes(body)
    fetch.download(server.url + "/c.bin", tmp_path / "c.bin", retries=0,
                   sha1=hashlib.sha1(body).hexdigest())
    assert (tmp_path / "c.bin").read_bytes() == body


@pytest.mark.parametrize("check", ["sha1", "sha256", "size"])
def test_mismatch_is_rejected_and_nothing_left(server, tmp_path, check):
    body = _payload(10_007, seed=5)
    server.files["/m.bin"] = body
    wrong = {"sha1": {"sha1": hashlib.sha1(b"other").hexdigest()},
             "sha256": {"sha256": hashlib.sha256(b"other").hexdigest()},
             "size": {"size": len(body) + 1}}[check]
    with pytest.raises(fetch.DownloadError, match="expected .*the download was deleted"):
        fetch.download(server.url + "/m.bin", tmp_path / "m.bin", retries=0, **wrong)
    assert os.listdir(tmp_path) == []


def test_http_errors_are_reported(server, tmp_path):
    with pytest.raises(fetch.DownloadError, match="/missing.bin: HTTP 404"):
        fetch.download(server.url + "/missing.bin", tmp_path / "x", retries=0)


def _archive(kind, files, top="twitter_release"):
    """An in-memory zip or tar.gz holding files {relative path: bytes} under `top`/."""
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in files.items():
                z.writestr(f"{top}/{name}", data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unpack_strips_the_single_top_folder_and_keeps_other_entries(tmp_path, kind):
    archive = tmp_path / f"a.{kind}"
    archive.write_bytes(_archive(kind, {"images/x.jpg": b"xx", "labels.txt": b"x.jpg 1\n"}))
    target = tmp_path / "data" / "twitter"
    (target / "splits").mkdir(parents=True)
    (target / "labels.txt").write_text("old")
    fetch.unpack(archive, target)
    assert sorted(os.listdir(target)) == ["images", "labels.txt", "splits"]
    assert (target / "labels.txt").read_text() == "x.jpg 1\n"
    assert (target / "images" / "x.jpg").read_bytes() == b"xx"
    assert sorted(os.listdir(tmp_path / "data")) == ["twitter"]   # temporary folder gone


def test_unpack_refuses_unsafe_members_and_non_archives(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", b"no")
    with pytest.raises(fetch.DownloadError, match="unsafe member path '../escape.txt'"):
        fetch.unpack(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as t:
        info = tarfile.TarInfo("x")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(fetch.DownloadError, match="is a link"):
        fetch.unpack(link, tmp_path / "out")
    text = tmp_path / "t.zip"
    text.write_text("not an archive")
    with pytest.raises(fetch.DownloadError, match="not a zip or tar archive"):
        fetch.unpack(text, tmp_path / "out")


def _synthetic_files(tmp_path):
    """The files of a small synthetic dataset: {relative path: bytes}."""
    root = tmp_path / "synthetic"
    twitter.make_synthetic_dataset(root, n_images=20, seed=3)
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root).replace(os.sep, "/")] = open(path, "rb").read()
    return files


def test_main_fetches_dataset_and_splits_from_a_mirror(server, tmp_path, monkeypatch, capsys):
    files = _synthetic_files(tmp_path)
    dataset = {k: v for k, v in files.items() if not k.startswith("splits/")}
    server.files["/twitter_dataset.zip"] = _archive("zip", dataset)
    for name, data in files.items():
        if name.startswith("splits/"):
            server.files["/ground_truth/" + name[len("splits/"):]] = data
    data_dir = tmp_path / "data"
    monkeypatch.setenv(fetch.BASE_URL_ENV, server.url)        # the env var works too
    assert fetch.main(["dataset", "splits", "--data-dir", str(data_dir)]) == 0
    with _no_warning():                 # the fetched split files are used, not generated
        train, test = twitter.load_fold(data_dir / "twitter", "five", 2)
    expected = twitter.load_fold(tmp_path / "synthetic", "five", 2)
    strip = lambda items: [(os.path.basename(p), l) for p, l in items]   # noqa: E731
    assert (strip(train), strip(test)) == (strip(expected[0]), strip(expected[1]))
    assert all(os.path.exists(p) for p, _ in train + test)
    assert (data_dir / "downloads" / "twitter_dataset.zip").exists()
    # each split file's progress says which of the 30 train.txt/test.txt it is
    err = capsys.readouterr().err
    assert "twitter/splits/five_agrees/test2/train.txt: " in err


class _no_warning:
    """Context manager failing the test if a warning is raised (the splits must be used)."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_dataset_without_address_explains(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(fetch.BASE_URL_ENV, raising=False)
    assert fetch.main(["dataset", "--data-dir", str(tmp_path)]) == 1
    assert "--dataset-archive" in capsys.readouterr().err


def test_weights_are_checked_then_converted(server, tmp_path, monkeypatch, capsys):
    from test_convert_caffemodel import v1_model   # the tests' protobuf encoder
    rng = np.random.default_rng(7)
    w = {"conv1": (rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
                   rng.standard_normal(5).astype(np.float32)),
         "fc6": (rng.standard_normal((7, 45)).astype(np.float32),
                 rng.standard_normal(7).astype(np.float32)),
         "fc8_twitter": (rng.standard_normal((2, 7)).astype(np.float32),
                         rng.standard_normal(2).astype(np.float32))}
    model = v1_model(w)
    server.files["/bvlc_reference_caffenet.caffemodel"] = model
    weights_dir = tmp_path / "weights"
    args = ["weights", "--weights-dir", str(weights_dir), "--base-url", server.url,
            "--retries", "0"]
    # the real table has BVLC CaffeNet's SHA-1: this small file must be refused
    assert fetch.main(args) == 1
    assert "SHA1 is" in capsys.readouterr().err
    assert not weights_dir.exists() or os.listdir(weights_dir) == []
    source = fetch.SOURCES["weights"][0]
    monkeypatch.setitem(fetch.SOURCES, "weights", [source._replace(
        sha1=hashlib.sha1(model).hexdigest(), num_classes=2)])
    assert fetch.main(args) == 0
    from nn.weights import load_weights
    params, attrs = load_weights(str(weights_dir / "caffenet_imagenet.h5"))
    assert list(params) == ["conv1", "fc6", "fc8_twitter"] and attrs["num_classes"] == 2
    np.testing.assert_array_equal(params["fc6"]["weight"], w["fc6"][0])


def test_sources_table_is_complete():
    assert len(fetch.SOURCES["splits"]) == 30
    caffenet = fetch.SOURCES["weights"][0]
    assert caffenet.url.startswith("http://dl.caffe.berkeleyvision.org/")
    assert caffenet.sha1 == "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46"
    assert all(s.convert_to.endswith(".h5") for s in fetch.SOURCES["finetuned"])


def test_user_errors_are_one_line_not_tracebacks(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(fetch.BASE_URL_ENV, raising=False)
    # a dataset archive that is not there
    missing = tmp_path / "nowhere.zip"
    assert fetch.main(["dataset", "--dataset-archive", str(missing),
                       "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert err == f"python -m tools.fetch: error: dataset: --dataset-archive {missing}: " \
                  "no such file\n"
    # a data folder that cannot be created (a file is in the way): fails before any request
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    assert fetch.main(["splits", "--data-dir", str(blocker / "data"), "--retries", "0",
                       "--base-url", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m tools.fetch: error: splits: ") and str(blocker) in err
    assert err.count("\n") == 1


def test_failed_first_attempt_does_not_promise_a_resume(tmp_path, monkeypatch):
    def refused(*args, **kw):
        raise fetch._Interrupted("cannot connect: refused")
    monkeypatch.setattr(fetch, "_transfer", refused)
    with pytest.raises(fetch.DownloadError) as info:
        fetch.download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=0)
    assert str(info.value).endswith(", then run again")            # no .part to resume from
    (tmp_path / "x.bin.part").write_bytes(b"half")
    with pytest.raises(fetch.DownloadError, match=r"run again to resume from .*x\.bin\.part"):
        fetch.download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", retries=0)


def test_help_explains_files_targets_and_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")   # no wrapping inside the checked phrases
    monkeypatch.delenv(fetch.BASE_URL_ENV, raising=False)
    with pytest.raises(SystemExit) as info:
        fetch.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.count("[--data-dir") == 1          # the usage once, not the docstring's too
    for phrase in ("<file>.part", "--base-url URL", "finetuned`` (not part of ``all``)",
                   "data/twitter/splits/<subset>/test<k>/{train,test}.txt",
                   "folder for the dataset, its archive and the splits (default: data)",
                   "(default: weights)", "(default: 3)", "--timeout SECONDS",
                   "counts as broken (default: 30)"):
        assert phrase in out, phrase


def test_bad_numbers_are_refused_when_parsing(capsys):
    for args, message in ((["--retries", "-1"], "argument --retries: must be at least 0"),
                          (["--timeout", "0"], "argument --timeout: must be more than 0"),
                          (["--timeout", "nan"], "argument --timeout: expected a number"),
                          (["--retries", "1.5"], "argument --retries: expected a whole "
                                                 "number, got '1.5'")):
        with pytest.raises(SystemExit) as info:
            fetch.main(args + ["splits"])
        assert info.value.code == 2
        assert f"python -m tools.fetch: error: {message}" in capsys.readouterr().err


def test_silent_server_gives_up_after_timeout_and_suggests_a_mirror(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(fetch.time, "sleep", lambda seconds: None)   # no waits between tries
    silent = socket.socket()   # the kernel accepts connections into the backlog; no reply
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    weights_dir = tmp_path / "weights"
    start = time.monotonic()
    try:
        assert fetch.main(["weights", "--weights-dir", str(weights_dir), "--base-url", url,
                           "--timeout", "0.2", "--retries", "1"]) == 1
    finally:
        silent.close()
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("bvlc_reference_caffenet.caffemodel: no answer within 0.2 s; "
                      "retrying (attempt 2 of 2)")
    assert err[1].startswith("python -m tools.fetch: error: weights: " + url)
    assert err[1].endswith("no answer within 0.2 s; check the network or give a mirror "
                           "with --base-url URL, then run again")
    assert len(err) == 2 and not weights_dir.exists()   # nothing received, nothing left


def test_failed_splits_leave_no_empty_folders(server, tmp_path, capsys):
    data_dir = tmp_path / "data"
    # nothing served: the first file fails, every folder this run made goes again
    args = ["splits", "--data-dir", str(data_dir), "--base-url", server.url, "--retries", "0"]
    assert fetch.main(args) == 1
    assert "HTTP 404" in capsys.readouterr().err and not data_dir.exists()
    # fold 1 served, fold 2 a malformed list: fold 1 stays, and what was there before
    (data_dir / "twitter").mkdir(parents=True)
    (data_dir / "twitter" / "keep.txt").write_text("mine")
    server.files["/ground_truth/five_agrees/test1/train.txt"] = b"a.jpg 1\nb.jpg 0\n"
    server.files["/ground_truth/five_agrees/test1/test.txt"] = b"c.jpg 1\n"
    server.files["/ground_truth/five_agrees/test2/train.txt"] = b"<html>not a list</html>\n"
    assert fetch.main(args) == 1
    assert "expected '<image file> <label>'" in capsys.readouterr().err
    assert sorted(os.listdir(data_dir / "twitter")) == ["keep.txt", "splits"]
    assert os.listdir(data_dir / "twitter" / "splits") == ["five_agrees"]
    assert os.listdir(data_dir / "twitter" / "splits" / "five_agrees") == ["test1"]


def test_archive_without_the_dataset_layout_is_refused_before_extracting(tmp_path, capsys):
    data_dir = tmp_path / "data"
    (data_dir / "twitter").mkdir(parents=True)
    (data_dir / "twitter" / "readme.txt").write_text("mine")
    wrong = tmp_path / "wrong.zip"
    with zipfile.ZipFile(wrong, "w") as z:
        z.writestr("readme.txt", b"not the dataset")
    args = ["dataset", "--dataset-archive", str(wrong), "--data-dir", str(data_dir)]
    assert fetch.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m tools.fetch: error: dataset: {wrong}: not the Twitter "
                          "dataset: no twitter_five_agrees.txt, twitter_four_agrees.txt, "
                          "twitter_three_agrees.txt, images (")
    assert err.endswith("; nothing was extracted\n") and err.count("\n") == 1
    assert os.listdir(data_dir) == ["twitter"]                         # no temporary folder
    assert os.listdir(data_dir / "twitter") == ["readme.txt"]
    assert (data_dir / "twitter" / "readme.txt").read_text() == "mine"
    # label files in one top folder, but no images
    labels = {f"twitter_{a}_agrees.txt": b"x.jpg 1\n" for a in twitter.AGREES}
    wrong.write_bytes(_archive("tar.gz", dict(labels, **{"images/readme.txt": b""})))
    assert fetch.main(args) == 1
    err = capsys.readouterr().err
    assert "not the Twitter dataset: no images (images/<image file>" in err
    assert os.listdir(data_dir / "twitter") == ["readme.txt"]
    # a folder is not an archive file
    assert fetch.main(["dataset", "--dataset-archive", str(tmp_path), "--data-dir",
                       str(data_dir)]) == 1
    assert capsys.readouterr().err == (f"python -m tools.fetch: error: dataset: "
                                       f"--dataset-archive {tmp_path}: is a folder, "
                                       "not an archive file\n")


def test_broken_archive_leaves_no_empty_data_folder(tmp_path, capsys):
    files = _synthetic_files(tmp_path)
    dataset = {k: v for k, v in files.items() if not k.startswith("splits/")}
    data = bytearray(_archive("zip", dataset))
    image = dataset["images/synthetic_00000.jpg"]
    at = data.index(image)
    data[at + 100] ^= 0xFF            # the member list is intact; the CRC check fails
    archive = tmp_path / "broken.zip"
    archive.write_bytes(bytes(data))
    data_dir = tmp_path / "data"
    assert fetch.main(["dataset", "--dataset-archive", str(archive), "--data-dir",
                       str(data_dir)]) == 1
    assert "broken archive" in capsys.readouterr().err
    assert not data_dir.exists()


def test_nothing_received_means_retrying_and_no_empty_part_left(server, tmp_path, capsys):
    server.files["/one.bin"] = b"x"
    server.drop_once.add("/one.bin")   # headers, then half of one byte: nothing
    dest = tmp_path / "sub" / "one.bin"
    with pytest.raises(fetch.DownloadError, match=r"after 0 B; .*, then run again$"):
        fetch.download(server.url + "/one.bin", dest, retries=0)
    assert os.listdir(tmp_path) == []            # no empty .part, so no folder kept for it
    server.drop_once.add("/one.bin")
    fetch.download(server.url + "/one.bin", dest, retries=1, retry_wait=0)
    assert dest.read_bytes() == b"x"
    assert "closed after 0 B; retrying (attempt 2 of 2)\n" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fetch, "fetch_splits", interrupted)
    assert fetch.main(["splits", "--data-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == (
        "python -m tools.fetch: interrupted during splits; run the same command again to "
        "resume\n")


# ------------------------------------------------------- review additions (mutation round 4)


def test_checksums_compare_every_digit_any_case_and_sizes_both_ways(server, tmp_path):
    body = _payload(5_003, seed=int(np.random.default_rng().integers(1 << 30)))
    server.files["/v.bin"] = body
    path = tmp_path / "v.bin"
    path.write_bytes(body)
    sha1, sha256 = hashlib.sha1(body).hexdigest(), hashlib.sha256(body).hexdigest()
    assert fetch.verify(path, sha1.upper(), sha256.upper(), len(body)) is None
    last = "0" if sha1[-1] != "0" else "1"                   # wrong in the last digit only
    assert fetch.verify(path, sha1=sha1[:-1] + last) == f"SHA1 is {sha1}, expected " \
                                                        f"{sha1[:-1] + last}"
    last = "0" if sha256[-1] != "0" else "1"
    assert fetch.verify(path, sha256=sha256[:-1] + last).startswith("SHA256 is ")
    assert fetch.verify(path, size=len(body) - 1) == \
        f"size is {len(body)} bytes, expected {len(body) - 1}"   # longer than it should be
    with pytest.raises(fetch.DownloadError, match="size is .*the download was deleted"):
        fetch.download(server.url + "/v.bin", tmp_path / "w.bin", size=len(body) - 1,
                       retries=0)


def test_an_existing_file_that_fails_its_check_is_downloaded_again(server, tmp_path, capsys):
    body = _payload(8_009, seed=6)
    server.files["/e.bin"] = body
    dest = tmp_path / "e.bin"
    dest.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))     # one bit off
    fetch.download(server.url + "/e.bin", dest, sha256=hashlib.sha256(body).hexdigest(),
                   retries=0)
    assert dest.read_bytes() == body and len(server.requests) == 1
    assert "already there" not in capsys.readouterr().err


def test_a_resume_cut_short_without_content_length_is_not_accepted(server, tmp_path):
    body = _payload(60_001, seed=7)
    server.files["/n.bin"] = body
    server.no_length = True
    server.drop_once.add("/n.bin")
    half = len(body) // 2
    (tmp_path / "n.bin.part").write_bytes(body[:half])
    try:   # the resumed response ends early and nothing but its Content-Range says so
        fetch.download(server.url + "/n.bin", tmp_path / "n.bin", retries=0)
    except fetch.DownloadError as e:
        assert f"expected {len(body)}" in str(e)
    assert not (tmp_path / "n.bin").exists() or (tmp_path / "n.bin").read_bytes() == body
    assert server.requests == [("/n.bin", f"bytes={half}-")]


def test_a_server_resuming_at_another_byte_is_refused(server, tmp_path):
    body = _payload(30_011, seed=8)
    server.files["/s.bin"] = body
    server.shift = -10
    (tmp_path / "s.bin.part").write_bytes(body[:1000])
    with pytest.raises(fetch.DownloadError, match="server resumed at byte 990, asked 1000"):
        fetch.download(server.url + "/s.bin", tmp_path / "s.bin", retries=0)
    assert not (tmp_path / "s.bin").exists()


def test_a_stale_part_longer_than_the_file_starts_again(server, tmp_path, capsys):
    body = _payload(7_001, seed=9)
    server.files["/l.bin"] = body
    (tmp_path / "l.bin.part").write_bytes(_payload(len(body) + 5, seed=10))
    fetch.download(server.url + "/l.bin", tmp_path / "l.bin", retries=1, retry_wait=0)
    assert (tmp_path / "l.bin").read_bytes() == body
    assert "the server refused to resume; starting again" in capsys.readouterr().err
    assert server.requests == [("/l.bin", f"bytes={len(body) + 5}-"), ("/l.bin", None)]


def test_unpack_twice_replaces_folders_and_takes_a_lone_top_file(tmp_path):
    target = tmp_path / "twitter"
    for version in (b"one", b"two"):
        archive = tmp_path / "a.zip"
        archive.write_bytes(_archive("zip", {"images/x.jpg": version, "labels.txt": version}))
        fetch.unpack(archive, target)
        assert (target / "images" / "x.jpg").read_bytes() == version
    single = tmp_path / "single.zip"
    with zipfile.ZipFile(single, "w") as z:
        z.writestr("notes.txt", b"only file")
    fetch.unpack(single, target)
    assert (target / "notes.txt").read_bytes() == b"only file"
    assert sorted(os.listdir(target)) == ["images", "labels.txt", "notes.txt"]


@pytest.mark.parametrize("member", ["/abs.txt", "\\abs.txt", "C:/drive.txt", "a/../../up.txt"])
def test_unpack_refuses_absolute_and_drive_paths(tmp_path, member):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("ok.txt", b"fine")
        z.writestr(member, b"no")
    with pytest.raises(fetch.DownloadError, match="unsafe member path"):
        fetch.unpack(evil, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["evil.zip"]


def test_archive_with_images_outside_images_folder_is_refused(tmp_path):
    labels = {f"twitter_{a}_agrees.txt": b"x.jpg 1\n" for a in twitter.AGREES}
    archive = tmp_path / "a.zip"
    archive.write_bytes(_archive("zip", dict(labels, **{"pictures/x.jpg": b"jpeg"})))
    with pytest.raises(fetch.DownloadError, match="no images"):
        fetch.unpack(archive, tmp_path / "twitter", check=fetch._dataset_layout_problem)
    archive.write_bytes(_archive("zip", dict(labels, **{"images/x.jpg": b"jpeg"})))
    fetch.unpack(archive, tmp_path / "twitter", check=fetch._dataset_layout_problem)


def _files_under(folder):
    """The files under `folder`, as sorted '/'-separated relative paths."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
                  for parent, _, names in os.walk(folder) for name in names)


@pytest.mark.parametrize("members, top, laid_out", [
    (["top/a.txt", "top/b/c.txt"], "top", ["a.txt", "b/c.txt"]),     # one top folder: stripped
    (["./top/a.txt"], "top", ["a.txt"]),                             # ('.' is no folder)
    (["top/a.txt", "notes.txt"], None, ["notes.txt", "top/a.txt"]),  # and a file: kept
    (["notes.txt"], None, ["notes.txt"]),                            # a lone file: no folder
    pytest.param(["top\\a.txt"], None, ["top\\a.txt"],               # one file of that name
                 marks=pytest.mark.skipif(os.sep != "/", reason="a separator on Windows")),
])
def test_unpack_strips_the_top_folder_that_the_member_names_give(tmp_path, members, top,
                                                                  laid_out):
    """unpack and _dataset_layout_problem share _single_top_folder: what it names from the
    member names is what unpack strips."""
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in members:
            z.writestr(name, b"x")
        names = z.namelist()
    assert fetch._single_top_folder(fetch._member_paths(names)) == top
    fetch.unpack(archive, tmp_path / "out")
    assert _files_under(tmp_path / "out") == laid_out


def test_the_layout_check_strips_only_the_single_top_folder():
    dataset = [f"twitter_{a}_agrees.txt" for a in twitter.AGREES] + ["images/x.jpg"]
    assert fetch._dataset_layout_problem(dataset) is None
    in_folder = [f"release/{name}" for name in dataset]
    assert fetch._dataset_layout_problem(in_folder) is None
    # beside a top-level file the folder is kept (as unpack keeps it): no label files on top
    problem = fetch._dataset_layout_problem(in_folder + ["README.txt"])
    assert problem.startswith("not the Twitter dataset: no twitter_five_agrees.txt")


@pytest.mark.skipif(os.sep != "/", reason="on Windows a backslash separates folders")
def test_a_zip_with_backslash_paths_is_refused_where_they_unpack_as_file_names(tmp_path):
    """On Linux zipfile extracts 'release\\images\\x.jpg' as one file of that name at the
    top, where nn/twitter.py would never find it: the layout check refuses the archive."""
    names = [f"twitter_{a}_agrees.txt" for a in twitter.AGREES] + ["images\\x.jpg"]
    archive = tmp_path / "windows.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in names:
            z.writestr("release\\" + name, b"x.jpg 1\n")
    with pytest.raises(fetch.DownloadError, match="not the Twitter dataset: no twitter_five"):
        fetch.unpack(archive, tmp_path / "twitter", check=fetch._dataset_layout_problem)
    assert sorted(os.listdir(tmp_path)) == ["windows.zip"]


def test_a_relative_link_in_a_tar_is_refused_too(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as t:
        data = b"real"
        info = tarfile.TarInfo("images/a.jpg")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("images/b.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "a.jpg"
        t.addfile(link)
    with pytest.raises(fetch.DownloadError, match="'images/b.jpg' is a link or device"):
        fetch.unpack(archive, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["link.tar"]


def test_one_failing_target_does_not_stop_the_next_and_dataset_url_wins(server, tmp_path,
                                                                       capsys):
    files = _synthetic_files(tmp_path)
    for name, data in files.items():
        if name.startswith("splits/"):
            server.files["/ground_truth/" + name[len("splits/"):]] = data
    data_dir = tmp_path / "data"
    args = ["dataset", "splits", "--data-dir", str(data_dir), "--base-url", server.url,
            "--retries", "0"]
    assert fetch.main(args) == 1                       # no dataset archive on the mirror
    err = capsys.readouterr().err
    assert "error: dataset: " in err and "HTTP 404" in err and "error: splits" not in err
    assert len(list((data_dir / "twitter" / "splits").rglob("*.txt"))) == 30
    # --dataset-url names the archive's own address, also when a mirror is given
    dataset = {k: v for k, v in files.items() if not k.startswith("splits/")}
    server.files["/elsewhere/release.zip"] = _archive("zip", dataset)
    assert fetch.main(["dataset"] + args[2:] + ["--dataset-url",
                                                server.url + "/elsewhere/release.zip"]) == 0
    assert (data_dir / "twitter" / "images").is_dir()
