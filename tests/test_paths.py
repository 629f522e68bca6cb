"""paths: the one owner of user paths (absolute locally, URLs untouched)."""
import os

import pytest

from flexivit_jax import paths


@pytest.mark.parametrize("path, url", [("gs://b/run", True), ("ram://x", True),
                                       ("s3+x://b", True), ("runs/a://b", False),
                                       ("workdirs/demo", False), ("/abs/run", False)])
def test_is_url_needs_a_scheme_at_the_start(path, url):
  assert paths.is_url(path) is url


def test_relative_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.normalize("workdirs/demo/") == os.path.join(str(tmp_path), "workdirs", "demo")
  assert paths.normalize("gs://b/run/") == "gs://b/run"


def test_makedirs_makes_url_folders_at_the_url(tmp_path, monkeypatch):
  import tensorflow as tf
  monkeypatch.chdir(tmp_path)
  paths.makedirs("ram://paths_test/a/b")
  assert tf.io.gfile.isdir("ram://paths_test/a/b")
  paths.makedirs("local/a")
  assert sorted(os.listdir(tmp_path)) == ["local"]
