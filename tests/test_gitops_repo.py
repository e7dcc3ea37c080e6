"""The GitOps repository writer against a real Git server (git http-backend, password on push) on 127.0.0.1."""

import os
import socket
import subprocess

import pytest

from components.serving.gitops.repo import KNOWN_HOSTS_CONTENT_ENV, OWNED_LIST, SSH_KEY_CONTENT_ENV, TOKEN_ENV, GitopsError, GitopsRepo, commit_message
from tests.git_server import GitHttpServer, GitSshServer, RedirectServer

PASSWORD = "git-push-secret-7d1f"
PATH = "fleet/models"
HUMAN_FILE = "fleet/models/README.md"


def free_port_containing(digits: str) -> int:
    """Return a free loopback port whose number contains ``digits``."""
    for port in range(1024, 65536):
        if digits in str(port):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    return port
    raise RuntimeError(f"no free port containing {digits}")


@pytest.fixture(params=["any port", "port containing 403"])
def git(tmp_path, request):
    """A Git server; the second one's URL contains "403", which git quotes when it rejects a push."""
    server = GitHttpServer(tmp_path / "server", PASSWORD, free_port_containing("403") if request.param.endswith("403") else 0)
    (tmp_path / "server").mkdir()
    url = server.create("fleet.git", {HUMAN_FILE: "Owned by the platform team.\n", "clusters/spoke-1.yaml": "name: spoke-1\n"})
    server.start()
    yield server, url
    server.stop()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, PASSWORD)


def remote_log(url: str, tmp_path, name: str = "check") -> list[str]:
    clone = tmp_path / name
    subprocess.run(["git", "clone", "--quiet", url, str(clone)], check=True)
    return subprocess.run(["git", "-C", str(clone), "log", "--format=%s|%an", "main"], capture_output=True, text=True, check=True).stdout.splitlines()


def someone_else_commits(url: str, tmp_path, relative: str, content: str) -> None:
    clone = tmp_path / "colleague"
    subprocess.run(["git", "clone", "--quiet", url, str(clone)], check=True)
    (clone / relative).parent.mkdir(parents=True, exist_ok=True)
    (clone / relative).write_text(content)
    environment = {**os.environ, "GIT_AUTHOR_NAME": "colleague", "GIT_AUTHOR_EMAIL": "c@example.com",
                   "GIT_COMMITTER_NAME": "colleague", "GIT_COMMITTER_EMAIL": "c@example.com"}
    push_url = url.replace("http://", f"http://colleague:{PASSWORD}@")
    for command in (["add", "--all"], ["commit", "--quiet", "-m", f"colleague edits {relative}"], ["push", "--quiet", push_url, "main"]):
        subprocess.run(["git", "-C", str(clone), *command], check=True, env=environment)


def test_a_change_is_one_commit_naming_model_version_step_and_run_pushed_with_the_token(git, token, tmp_path):
    server, url = git
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    assert repo.write({"base/anomaly-detector/inferenceservice.yaml": "kind: InferenceService\n"}) == ["base/anomaly-detector/inferenceservice.yaml"]
    head = repo.commit_and_push(commit_message("anomaly-detector", "v3", "deploy", "anomaly-detector-retrain-abc"))
    assert remote_log(url, tmp_path)[0] == "anomaly-detector v3: deploy|model-pipelines"
    assert server.pushes == ["model-pipelines"]
    assert repo.commit_and_push(commit_message("anomaly-detector", "v3", "deploy", "again")) == head, "nothing changed: no commit"
    assert PASSWORD not in (tmp_path / "work" / ".git" / "config").read_text(), "the token is in no remote URL or config"
    assert (tmp_path / "work" / PATH / OWNED_LIST).read_text() == "base/anomaly-detector/inferenceservice.yaml\n"


def test_a_push_without_the_token_is_refused_with_the_fix(git, tmp_path, monkeypatch):
    _, url = git
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    repo.write({"base/x.yaml": "a: 1\n"})
    with pytest.raises(GitopsError, match=r"refused to let model-pipelines push: put a token with push access in \$GITOPS_TOKEN"):
        repo.commit_and_push("x")


def test_a_concurrent_commit_is_rebased_onto_never_forced_over(git, token, tmp_path):
    _, url = git
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    repo.write({"waves/canary/kustomization.yaml": "resources: []\n"})
    someone_else_commits(url, tmp_path, "clusters/spoke-2.yaml", "name: spoke-2\n")
    repo.commit_and_push(commit_message("anomaly-detector", "v4", "deploy to wave canary", "run-1"))
    assert [line.split("|")[0] for line in remote_log(url, tmp_path)] == [
        "anomaly-detector v4: deploy to wave canary", "colleague edits clusters/spoke-2.yaml", "fleet repository"]


def test_files_it_did_not_create_are_never_touched(git, token, tmp_path):
    _, url = git
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    with pytest.raises(GitopsError, match="README.md exists and was not created by model-pipelines"):
        repo.write({"README.md": "overwritten\n"})
    for outside in ("../clusters/spoke-1.yaml", "/etc/passwd", OWNED_LIST):
        with pytest.raises(GitopsError, match="is not a file name under"):
            repo.write({outside: "x\n"})
    repo.write({"base/a.yaml": "a: 1\n"})
    repo.commit_and_push("ours")
    assert (tmp_path / "work" / HUMAN_FILE).read_text() == "Owned by the platform team.\n"


def test_a_revert_restores_the_previous_files_and_a_conflict_is_reported_not_forced(git, token, tmp_path):
    _, url = git
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    repo.write({"waves/canary/version.yaml": "version: v1\n"})
    repo.commit_and_push("v1")
    repo.write({"waves/canary/version.yaml": "version: v2\n"})
    candidate = repo.commit_and_push("v2")
    repo.revert([candidate], commit_message("anomaly-detector", "v2", "roll back wave canary", "run-2"))
    assert (tmp_path / "work" / PATH / "waves/canary/version.yaml").read_text() == "version: v1\n"
    assert remote_log(url, tmp_path)[0].startswith("anomaly-detector v2: roll back wave canary")

    repo.write({"waves/canary/version.yaml": "version: v3\n"})
    someone_else_commits(url, tmp_path, f"{PATH}/waves/canary/version.yaml", "version: hand-edited\n")
    with pytest.raises(GitopsError, match="someone else changed the same lines"):
        repo.commit_and_push("v3")
    assert remote_log(url, tmp_path, "after")[0].startswith("colleague edits"), "their commit stays; ours was not forced"


def test_the_token_goes_over_plain_http_only_to_this_machine(token, tmp_path):
    repo = GitopsRepo("http://git.example.com/fleet.git", "main", PATH, tmp_path / "work")
    with pytest.raises(GitopsError, match="refusing to send the Git token over plain http to http://git.example.com/fleet.git"):
        repo.sync()


def test_the_token_never_follows_a_redirect_to_another_host(token, tmp_path):
    other = GitHttpServer(tmp_path / "other", PASSWORD)
    (tmp_path / "other").mkdir()
    other.create("fleet.git", {HUMAN_FILE: "Owned by the platform team.\n"})
    other.start()
    redirect = RedirectServer(other.url.replace("127.0.0.1", "localhost")).start()
    try:
        repo = GitopsRepo(f"{redirect.url}/fleet.git", "main", PATH, tmp_path / "work")
        with pytest.raises(GitopsError, match=r"returned error: 302; the server redirects, and an authenticated remote is never followed through a redirect"):
            repo.sync()
            repo.write({"base/x.yaml": "a: 1\n"})
            repo.commit_and_push(commit_message("anomaly-detector", "v1", "deploy", "run"))
    finally:
        redirect.stop()
        other.stop()
    assert other.authorizations == [] and other.pushes == [], "the server a redirect named never saw the token"


def test_the_credential_helper_answers_only_for_the_configured_protocol_and_host(git, token, tmp_path):
    _, url = git
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    host = url.split("/")[2]

    def fill(protocol: str, asked_host: str) -> str:
        return repo._git("credential", "fill", check=False, stdin=f"protocol={protocol}\nhost={asked_host}\npath=fleet.git\n\n").stdout

    assert f"password={PASSWORD}" in fill("http", host)
    for protocol, asked_host in (("http", host.replace("127.0.0.1", "localhost")), ("https", host), ("http", "evil.example.com")):
        assert PASSWORD not in fill(protocol, asked_host), (protocol, asked_host)


def test_a_repository_or_branch_that_git_would_read_as_an_option_is_refused(tmp_path):
    for url, branch in (("-uevil@host:path", "main"), ("https://git.example.com/fleet.git", "--upload-pack=touch x")):
        with pytest.raises(GitopsError, match="starts with '-', which git would take as an option"):
            GitopsRepo(url, branch, PATH, tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_over_ssh_the_key_and_known_hosts_come_from_the_secrets_contents_and_an_unknown_host_key_is_refused(git, tmp_path, monkeypatch):
    server, url = git
    ssh = GitSshServer(tmp_path / "ssh").start()
    try:
        ssh_url = ssh.url(server.root / "fleet.git")
        monkeypatch.setenv(SSH_KEY_CONTENT_ENV, ssh.client_key())
        monkeypatch.setenv(KNOWN_HOSTS_CONTENT_ENV, "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n")
        with pytest.raises(GitopsError, match="Host key verification failed"):
            GitopsRepo(ssh_url, "main", PATH, tmp_path / "refused").sync()
        monkeypatch.setenv(KNOWN_HOSTS_CONTENT_ENV, ssh.known_hosts())
        repo = GitopsRepo(ssh_url, "main", PATH, tmp_path / "work")
        repo.sync()
        repo.write({"waves/canary/version.yaml": "version: v1\n"})
        repo.commit_and_push(commit_message("anomaly-detector", "v1", "deploy over ssh", "run-ssh"))
        key_file = tmp_path / ".work-ssh-key"
        assert key_file.stat().st_mode & 0o077 == 0, "the key file is readable by its owner only"
        assert not (tmp_path / "work" / ".work-ssh-key").exists(), "the key is never inside the clone"
    finally:
        ssh.stop()
    assert remote_log(url, tmp_path)[0] == "anomaly-detector v1: deploy over ssh|model-pipelines"


def test_the_message_ends_in_trailers_git_parses_and_no_subject_or_body_line_passes_for_one(git, token, tmp_path):
    _, url = git
    repo = GitopsRepo(url, "main", PATH, tmp_path / "work")
    repo.sync()
    repo.write({"waves/canary/version.yaml": "version: v2\n"})
    reason = "rejected at canary-promote: 10% traffic, fail: prediction_shift 0.9 > 0.1;\n  max_drift 0.4 > 0.3"
    message = commit_message("anomaly-detector", "v2", "Pipeline-Run: forged-in-subject", "run-7", "Model: forged-in-body\nPipeline-Run: forged",
                             [("Step", "rollback"), ("Wave", "1/2 (canary: spoke-1)"), ("Reason", reason)])
    repo.commit_and_push(message)
    clone = tmp_path / "check"
    subprocess.run(["git", "clone", "--quiet", url, str(clone)], check=True)
    body = subprocess.run(["git", "-C", str(clone), "log", "-1", "--format=%B"], capture_output=True, text=True, check=True).stdout
    parsed = subprocess.run(["git", "interpret-trailers", "--parse"], input=body, capture_output=True, text=True, check=True).stdout
    expected = [("Model", "anomaly-detector"), ("Version", "v2"), ("Step", "rollback"), ("Wave", "1/2 (canary: spoke-1)"),
                ("Reason", "rejected at canary-promote: 10% traffic, fail: prediction_shift 0.9 > 0.1; max_drift 0.4 > 0.3"), ("Pipeline-Run", "run-7")]
    assert parsed == "".join(f"{key}: {value}\n" for key, value in expected)
    assert repo.history("waves/canary") == [(repo.head(), expected)], "the clone reads the trailers as git parses them, not lines of the subject or body"
    # The fleet-settled record after a first deployment was removed names no version: "<model>: fleet settled", no Version trailer.
    record = commit_message("anomaly-detector", "", "fleet settled", "run-7", "After rollback, every wave below is Synced and Healthy",
                            [("Step", "settled"), ("Fleet-state", "settled"), ("Reason", "smoke test failed")])
    parsed = subprocess.run(["git", "interpret-trailers", "--parse"], input=record, capture_output=True, text=True, check=True).stdout
    assert record.splitlines()[0] == "anomaly-detector: fleet settled" and parsed == (
        "Model: anomaly-detector\nStep: settled\nFleet-state: settled\nReason: smoke test failed\nPipeline-Run: run-7\n")
