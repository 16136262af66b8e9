"""Results folders record a clean commit: lm.metrics.check_clean / write_provenance on a
temporary git repository (clean, dirty, untracked, allow_dirty, destinations outside results/)."""

import dataclasses
import hashlib
import json
import subprocess

import pytest

from experiments.base import prepare_run_dir
from lm import metrics as M
from lm.config import Config, RunCfg
from lm.sharding import ConfigError


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                           *args], check=True, capture_output=True).stdout


@pytest.fixture()
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "results" / "old").mkdir(parents=True)
    (r / "code.py").write_text("x = 1\n")
    (r / "results" / "old" / "README.md").write_text("recorded\n")
    git(r, "init", "-q")
    git(r, "add", ".")
    git(r, "commit", "-q", "-m", "init")
    return r


def prov(out):
    return json.loads((out / "versions.json").read_text())


def test_clean_tree_writes_and_records_commit(repo):
    out = repo / "results" / "new"
    M.write_provenance(str(out), argv=["x"], repo=str(repo))
    p = prov(out)  # the new folder is untracked, inside results/: still clean
    assert p["git_commit"] == git(repo, "rev-parse", "HEAD").decode().strip()
    assert p["git_dirty"] is False and p["git_diff_sha256"] is None
    (repo / "results" / "old" / "README.md").write_text("edited\n")  # data edits are not code
    M.write_provenance(str(repo / "results" / "again"), repo=str(repo))


@pytest.mark.parametrize("change", ["modified", "untracked"])
def test_dirty_tree_refused_in_results_unless_allowed(repo, change):
    if change == "modified":
        (repo / "code.py").write_text("x = 2\n")
    else:
        (repo / "new_module.py").write_text("y = 1\n")
    out = repo / "results" / "new"
    with pytest.raises(ConfigError, match=r"uncommitted changes \((code|new_module)\.py\).*"
                                          r"run\.allow_dirty=true"):
        M.write_provenance(str(out), Config(), ["x"], repo=str(repo))
    assert not out.exists()  # nothing half-written
    cfg = dataclasses.replace(Config(), run=RunCfg(allow_dirty=True))
    M.write_provenance(str(out), cfg, ["x"], repo=str(repo))  # allowed through cfg.run
    p = prov(out)
    diff = subprocess.run(["git", "-C", str(repo), "diff", "HEAD"], capture_output=True).stdout
    assert p["git_dirty"] is True and p["git_commit"].endswith("-dirty")
    assert p["git_diff_sha256"] == (hashlib.sha256(diff).hexdigest() if diff else None)
    assert json.loads((out / "config.json").read_text())["run"]["allow_dirty"] is True


def test_dirty_tree_never_refused_outside_results(repo, tmp_path):
    (repo / "code.py").write_text("x = 3\n")
    for out in (repo / "runs" / "a", tmp_path / "elsewhere"):  # run dirs, test tmp dirs
        M.write_provenance(str(out), argv=[], repo=str(repo))
        assert prov(out)["git_dirty"] is True
    with pytest.raises(ConfigError):
        M.check_clean(str(repo / "results"), repo=str(repo))  # results/ itself counts
    assert M.check_clean(str(repo / "results2"), repo=str(repo))["dirty"] is True


def test_allow_dirty_is_not_part_of_the_run_config(tmp_path):
    wd = str(tmp_path / "run")
    assert prepare_run_dir(wd, Config()) is False
    allowed = dataclasses.replace(Config(), run=RunCfg(allow_dirty=True))
    assert prepare_run_dir(wd, allowed) is True  # resumes: a recording policy, not the run


def test_outside_git_nothing_is_refused(tmp_path):
    out = tmp_path / "results" / "x"
    M.write_provenance(str(out), repo=str(tmp_path))
    assert prov(out)["git_dirty"] is None
