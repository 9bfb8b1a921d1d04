"""Provisioning: mirror copy, hash checks, and a clear failure."""

import hashlib

import pytest

import posefit

NAME = "teapot.obj"


@pytest.fixture()
def mirror(tmp_path, meshes_ready):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / NAME).write_bytes((meshes_ready / NAME).read_bytes())
    return folder


def test_copies_from_mirror_and_checks_hash(tmp_path, mirror):
    data = tmp_path / "data"
    path = posefit.provision(NAME, data_dir=data, mirror=mirror, allow_download=False)
    assert path == data / NAME
    assert hashlib.sha256(path.read_bytes()).hexdigest() == posefit.DATA_FILES[NAME][1]
    assert not list(data.glob("*.part")), "no temporary file is left behind"


def test_existing_good_file_is_used_without_a_mirror(tmp_path, mirror):
    data = tmp_path / "data"
    posefit.provision(NAME, data_dir=data, mirror=mirror, allow_download=False)
    assert posefit.provision(NAME, data_dir=data, mirror=None, allow_download=False) == data / NAME


def test_mirror_file_with_wrong_hash_is_refused(tmp_path, mirror, monkeypatch):
    monkeypatch.delenv(posefit.MIRROR_ENV, raising=False)
    (mirror / NAME).write_bytes(b"v 0 0 0\n")
    data = tmp_path / "data"
    with pytest.raises(posefit.UserError, match="SHA-256 mismatch"):
        posefit.provision(NAME, data_dir=data, mirror=mirror, allow_download=False)
    assert not (data / NAME).exists(), "a file whose hash does not match is never used"


def test_corrupt_local_file_is_replaced_from_mirror(tmp_path, mirror):
    data = tmp_path / "data"
    data.mkdir()
    (data / NAME).write_bytes(b"garbage")
    path = posefit.provision(NAME, data_dir=data, mirror=mirror, allow_download=False)
    assert posefit.sha256_of(path) == posefit.DATA_FILES[NAME][1]


def test_neither_mirror_nor_download_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv(posefit.MIRROR_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(posefit.urllib.request, "urlopen", no_network)
    with pytest.raises(posefit.UserError) as info:
        posefit.provision(NAME, data_dir=tmp_path / "data", mirror=tmp_path / "empty", timeout=1)
    message = str(info.value)
    assert "\n" not in message
    assert NAME in message and posefit.MIRROR_ENV in message and "https://" in message
    assert not (tmp_path / "data" / NAME).exists()
