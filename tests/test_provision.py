"""Provisioning through pooch: mirror copy, hash checks, and one clear line when the file cannot be had."""

import pooch
import pytest
import requests

from posefit import data
from posefit.errors import UserError

NAME = "teapot.obj"
SHA256 = data.DATA_FILES[NAME][1]


@pytest.fixture()
def mirror(tmp_path, meshes_ready):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / NAME).write_bytes((meshes_ready / NAME).read_bytes())
    return folder


@pytest.fixture()
def no_network(monkeypatch):
    """Every download fails as it does without a network, at pooch's level."""
    calls = []

    def refuse(self, url, output_file, store, **kwargs):
        calls.append(url)
        raise requests.exceptions.ConnectionError(f"Failed to establish a new connection to {url}")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", refuse)
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)
    return calls


def test_copies_from_mirror_and_checks_hash(tmp_path, mirror, no_network):
    folder = tmp_path / "data"
    path = data.provision(NAME, data_dir=folder, mirror=mirror)
    assert path == folder / NAME
    assert pooch.file_hash(str(path)) == SHA256
    assert not no_network, "a good mirror copy needs no download"
    assert sorted(p.name for p in folder.iterdir()) == [NAME], "no temporary file is left behind"


def test_existing_good_file_is_used_without_a_mirror(tmp_path, mirror, no_network):
    folder = tmp_path / "data"
    data.provision(NAME, data_dir=folder, mirror=mirror)
    assert data.provision(NAME, data_dir=folder, mirror=None, allow_download=False) == folder / NAME
    assert not no_network


def test_mirror_file_with_wrong_hash_is_refused(tmp_path, mirror, no_network):
    (mirror / NAME).write_bytes(b"v 0 0 0\n")
    folder = tmp_path / "data"
    with pytest.raises(UserError, match="SHA-256 mismatch") as info:
        data.provision(NAME, data_dir=folder, mirror=mirror, allow_download=False)
    assert "\n" not in str(info.value)
    assert not (folder / NAME).exists(), "a file whose hash does not match is never used"


def test_wrong_mirror_copy_falls_back_to_the_download(tmp_path, mirror, no_network):
    (mirror / NAME).write_bytes(b"v 0 0 0\n")
    with pytest.raises(UserError) as info:
        data.provision(NAME, data_dir=tmp_path / "data", mirror=mirror, timeout=1)
    message = str(info.value)
    assert no_network == [data.DATA_FILES[NAME][0]], "the canonical address is tried next"
    assert "SHA-256 mismatch" in message and "download failed (ConnectionError" in message


def test_corrupt_local_file_is_replaced_from_mirror(tmp_path, mirror, no_network):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / NAME).write_bytes(b"garbage")
    path = data.provision(NAME, data_dir=folder, mirror=mirror, allow_download=False)
    assert pooch.file_hash(str(path)) == SHA256


def test_corrupt_local_file_without_a_source_says_so(tmp_path, no_network):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / NAME).write_bytes(b"garbage")
    with pytest.raises(UserError, match="has the wrong SHA-256"):
        data.provision(NAME, data_dir=folder, mirror=tmp_path / "empty", timeout=1)
    assert (folder / NAME).read_bytes() == b"garbage", "nothing better was found: the file is left as it was"


def test_file_missing_from_mirror_and_no_network_gives_one_clear_line(tmp_path, no_network):
    with pytest.raises(UserError) as info:
        data.provision(NAME, data_dir=tmp_path / "data", mirror=tmp_path / "empty", timeout=1)
    message = str(info.value)
    assert "\n" not in message
    assert f"not in mirror {tmp_path / 'empty'}" in message and "download failed (ConnectionError" in message
    assert NAME in message and data.MIRROR_ENV in message and "https://" in message
    assert not (tmp_path / "data" / NAME).exists()


def test_a_download_that_hashes_wrong_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(data.MIRROR_ENV, raising=False)

    def wrong_bytes(self, url, output_file, store, **kwargs):
        with open(output_file, "wb") as handle:
            handle.write(b"not the teapot")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", wrong_bytes)
    with pytest.raises(UserError, match="download failed") as info:
        data.provision(NAME, data_dir=tmp_path / "data", mirror=None, timeout=1)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data" / NAME).exists()
