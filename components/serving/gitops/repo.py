"""The Git side of GitOps serving: write manifests under a path of a repository, commit, push, revert.

Every change is a commit whose message's last paragraph holds git trailers (Model, Version, Step, Pipeline-Run, ...). A push that the server
refuses as non-fast-forward (someone else pushed first) is rebased onto the new remote head and retried; the
repository is never force-pushed. Only files this project created are ever changed or deleted: their list is kept
in ``.model-pipelines-owned`` under the path, and a file there that the list does not name is refused.

Credentials never come from parameters. Over HTTPS the token is read from ``$GITOPS_TOKEN`` (a Secret's key
injected into the pod) by a credential helper, so it is in no command line and no URL; it goes only to an https
remote, or over plain http to this machine. Over SSH the key is ``$GITOPS_SSH_KEY`` with the hosts in
``$GITOPS_KNOWN_HOSTS`` (a Secret's ``ssh-privatekey`` and ``known_hosts``), or on a laptop the files
``$GITOPS_SSH_KEY_FILE`` and ``$GITOPS_KNOWN_HOSTS_FILE``; host keys are always checked.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from components.credentials import token_may_go_to

OWNED_LIST = ".model-pipelines-owned"
# In a pod the gitops Secret's keys arrive as these variables; the SSH key and known hosts as contents, written to 0600
# files beside the clone. On a laptop the key and hosts may be files instead.
SECRET_KEY_TO_ENV = {"token": "GITOPS_TOKEN", "ssh-privatekey": "GITOPS_SSH_KEY", "known_hosts": "GITOPS_KNOWN_HOSTS"}
TOKEN_ENV, SSH_KEY_CONTENT_ENV, KNOWN_HOSTS_CONTENT_ENV = SECRET_KEY_TO_ENV.values()
SSH_KEY_ENV, KNOWN_HOSTS_ENV = "GITOPS_SSH_KEY_FILE", "GITOPS_KNOWN_HOSTS_FILE"
PUSH_ATTEMPTS = 5
# What git prints when the server refuses the credentials. Not a bare "403": a push's output quotes commit hashes and
# the URL's port, which can contain it.
AUTH_REFUSED = re.compile(r"Authentication failed|could not read Username|returned error: 40[13]\b|Permission denied")
REDIRECTED = re.compile(r"returned error: 30[1278]\b|redirect", re.IGNORECASE)
AUTHOR = ("model-pipelines", "model-pipelines@self-healing-platform.invalid")
# Where the token may go: the configured repository's protocol and host[:port], handed to the helper in the environment.
CREDENTIAL_PROTOCOL_ENV, CREDENTIAL_HOST_ENV = "GITOPS_CREDENTIAL_PROTOCOL", "GITOPS_CREDENTIAL_HOST"
# A credential helper that answers with the token from the environment, so that the token is never an argument, and
# only when git asks for the configured repository's protocol and host (not a host a redirect or a submodule names).
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || return 0; protocol=; host=; '
    'while IFS= read -r line; do case "$line" in protocol=*) protocol="${line#protocol=}";; host=*) host="${line#host=}";; esac; done; '
    f'test -n "$protocol" && test "$protocol" = "${CREDENTIAL_PROTOCOL_ENV}" && test "$host" = "${CREDENTIAL_HOST_ENV}" || return 0; '
    f'echo username=model-pipelines; echo "password=${TOKEN_ENV}"; }}; f'
)


class GitopsError(RuntimeError):
    """A Git operation failed or was refused; the message names the cause and the fix."""


@dataclass(frozen=True)
class GitopsRepo:
    """A clone of ``url`` at ``branch`` in ``workdir``, whose files under ``path`` this project manages."""

    url: str
    branch: str
    path: str
    workdir: Path

    def __post_init__(self) -> None:
        """Refuse a URL or branch that git would read as an option."""
        for name, value in (("gitops_repo", self.url), ("gitops_branch", self.branch)):
            if value.startswith("-"):
                raise GitopsError(f"{name}={value!r} starts with '-', which git would take as an option: give the repository's https:// or ssh:// URL")

    def _environment(self) -> dict[str, str]:
        """Return git's environment: no prompts, a fixed author, and SSH with a checked host key when configured."""
        environment = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1],
                       "GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1]}
        key_file, known_hosts = os.environ.get(SSH_KEY_ENV, ""), os.environ.get(KNOWN_HOSTS_ENV, "/dev/null")
        if os.environ.get(SSH_KEY_CONTENT_ENV):
            key_file = self._private_file("ssh-key", os.environ[SSH_KEY_CONTENT_ENV])
            if os.environ.get(KNOWN_HOSTS_CONTENT_ENV):
                known_hosts = self._private_file("known_hosts", os.environ[KNOWN_HOSTS_CONTENT_ENV])
        if key_file:
            environment["GIT_SSH_COMMAND"] = (f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
                                              f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts}")
        return environment

    def _private_file(self, name: str, content: str) -> str:
        """Write ``content`` to a file only this user can read, beside (never inside) the clone; return its path."""
        path = self.workdir.parent / f".{self.workdir.name}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content if content.endswith("\n") else content + "\n")
        return str(path)

    def _git(self, *args: str, cwd: Path | None = None, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run git with the credential helper when a token is set (refusing plain http to another machine)."""
        options: list[str] = []
        environment = self._environment()
        if os.environ.get(TOKEN_ENV):
            parsed = urllib.parse.urlsplit(self.url)
            if parsed.scheme == "http" and not token_may_go_to(self.url):
                raise GitopsError(f"refusing to send the Git token over plain http to {self.url}: use the https URL of the repository")
            # An authenticated remote is never left through a redirect, and the helper answers for its own host alone.
            options = ["-c", "credential.helper=", "-c", f"credential.helper={CREDENTIAL_HELPER}", "-c", "http.followRedirects=false"]
            environment.update({CREDENTIAL_PROTOCOL_ENV: parsed.scheme, CREDENTIAL_HOST_ENV: parsed.netloc.rpartition("@")[2]})
        result = subprocess.run(["git", *options, *args], cwd=cwd or self.workdir, env=environment, capture_output=True,
                                text=True, timeout=300, input=stdin)
        if check and result.returncode != 0:
            hint = ("; the server redirects, and an authenticated remote is never followed through a redirect: "
                    "set gitops_repo to the URL it redirects to") if options and REDIRECTED.search(result.stderr) else ""
            raise GitopsError(f"git {args[0]} failed for {self.url}: {result.stderr.strip()[-400:]}{hint}")
        return result

    @property
    def root(self) -> Path:
        """Return the directory of ``path`` in the clone."""
        return self.workdir / self.path

    def sync(self) -> str:
        """Clone the branch, or fetch it and reset the clone to it; return the head revision."""
        if not (self.workdir / ".git").is_dir():
            self.workdir.parent.mkdir(parents=True, exist_ok=True)
            self._git("clone", "--quiet", "--branch", self.branch, "--", self.url, str(self.workdir), cwd=self.workdir.parent)
        else:
            self._git("fetch", "--quiet", "origin", self.branch)
            self._git("reset", "--quiet", "--hard", f"origin/{self.branch}")
        return self.head()

    def head(self) -> str:
        """Return the clone's head revision."""
        return self._git("rev-parse", "HEAD").stdout.strip()

    def owned(self) -> set[str]:
        """Return the files under ``path`` this project created (relative to ``path``)."""
        listing = self.root / OWNED_LIST
        return set(listing.read_text().split()) if listing.is_file() else set()

    def write(self, files: dict[str, str]) -> list[str]:
        """Write ``files`` (relative to ``path``) as owned ones, refusing others' files; return those whose content changed."""
        owned, changed = self.owned(), []
        for relative, content in sorted(files.items()):
            pure = PurePosixPath(relative)
            if pure.is_absolute() or ".." in pure.parts or relative == OWNED_LIST:
                raise GitopsError(f"{relative!r} is not a file name under {self.path}")
            target = self.root / relative
            if target.exists() and relative not in owned:
                raise GitopsError(f"{self.path}/{relative} exists and was not created by model-pipelines; it is left alone: "
                                  "move it, or choose another gitops_path")
            if not target.exists() or target.read_text() != content:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
                changed.append(relative)
        if changed:
            (self.root / OWNED_LIST).write_text("".join(f"{name}\n" for name in sorted(owned | set(files))))
        return changed

    def commit_and_push(self, message: str) -> str:
        """Commit everything written under ``path`` and push it (``_push``); return the head (unchanged when nothing changed)."""
        self._git("add", "--all", "--", self.path)
        if self._git("diff", "--cached", "--quiet", check=False).returncode == 0:
            return self.head()
        self._git("commit", "--quiet", "-m", message)
        return self._push(message.splitlines()[0])

    def revert(self, revisions: list[str], message: str) -> str:
        """Commit the revert of ``revisions`` (ours, newest first) as one commit and push it (``_push``); return the pushed head."""
        if self._git("revert", "--no-edit", "--no-commit", *revisions, check=False).returncode != 0:
            self._git("revert", "--abort", check=False)
            raise GitopsError(f"the revert of {', '.join(r[:7] for r in revisions)} conflicts with later changes under {self.path} on "
                              f"{self.branch}; nothing was pushed: revert them in the repository by hand")
        self._git("commit", "--quiet", "--allow-empty", "-m", message)
        return self._push(message.splitlines()[0])

    def remove(self, files: list[str]) -> list[str]:
        """Delete owned ``files`` (relative to ``path``), refusing others' files; return those that existed."""
        owned = self.owned()
        foreign = [relative for relative in files if relative not in owned and (self.root / relative).exists()]
        if foreign:
            raise GitopsError(f"{', '.join(f'{self.path}/{name}' for name in foreign)} was not created by model-pipelines; it is left alone")
        removed = [relative for relative in files if (self.root / relative).exists()]
        for relative in removed:
            (self.root / relative).unlink()
        if removed:
            (self.root / OWNED_LIST).write_text("".join(f"{name}\n" for name in sorted(owned - set(removed))))
        return removed

    def read(self, relative: str) -> str | None:
        """Return the text of a file under ``path`` in the clone, or None when it does not exist."""
        target = self.root / relative
        return target.read_text() if target.is_file() else None

    def history(self, *relatives: str) -> list[tuple[str, list[tuple[str, str]]]]:
        """Return (revision, trailers) of the commits that touched ``relatives`` under ``path``, newest first.

        The trailers are (key, value) pairs of the message's last paragraph as git itself parses them
        (``%(trailers:only,unfold)``, the rules of ``git interpret-trailers --parse``), so no subject or body line counts.
        """
        paths = [f"{self.path}/{relative}" for relative in relatives]
        output = self._git("log", "--format=%H%x1f%(trailers:only,unfold)%x1e", "--", *paths).stdout
        entries = [entry.strip("\n").split("\x1f", 1) for entry in output.split("\x1e") if "\x1f" in entry]
        return [(revision, [tuple(line.split(": ", 1)) for line in block.splitlines() if ": " in line]) for revision, block in entries]

    def last_change(self, *relatives: str) -> str:
        """Return the newest revision that touched ``relatives`` under ``path`` ("" when none did)."""
        return self._git("log", "-1", "--format=%H", "--", *[f"{self.path}/{relative}" for relative in relatives]).stdout.strip()

    def changed_files(self, revision: str) -> list[str]:
        """Return the files ``revision`` changed, relative to ``path``."""
        output = self._git("diff-tree", "--no-commit-id", "--name-only", "-r", revision).stdout.split()
        return [name.removeprefix(f"{self.path}/") for name in output if name.startswith(f"{self.path}/")]

    def contains(self, revision: str, ancestor: str) -> bool:
        """Return whether ``revision`` (e.g. what Argo CD synced) includes ``ancestor``, fetching when it is unknown here."""
        if not re.fullmatch(r"[0-9a-f]{7,64}", revision or ""):
            return False
        if self._git("cat-file", "-e", f"{revision}^{{commit}}", check=False).returncode != 0:
            self._git("fetch", "--quiet", "origin", self.branch, check=False)
        return self._git("merge-base", "--is-ancestor", ancestor, revision, check=False).returncode == 0

    def _push(self, what: str) -> str:
        """Push the head; when the branch moved on, rebase onto it and try again (never force). Return the pushed head."""
        for _ in range(PUSH_ATTEMPTS):
            pushed = self._git("push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", check=False)
            if pushed.returncode == 0:
                return self.head()
            if AUTH_REFUSED.search(pushed.stderr):
                raise GitopsError(f"{self.url} refused to let model-pipelines push: put a token with push access in ${TOKEN_ENV} "
                                  f"(from the gitops_secret Secret's key token), or an SSH key in ${SSH_KEY_CONTENT_ENV} (its key ssh-privatekey)")
            if "rejected" not in pushed.stderr:
                raise GitopsError(f"git push to {self.url} failed: {pushed.stderr.strip()[-400:]}")
            self._git("fetch", "--quiet", "origin", self.branch)
            if self._git("rebase", "--quiet", f"origin/{self.branch}", check=False).returncode != 0:
                self._git("rebase", "--abort", check=False)
                raise GitopsError(f"someone else changed the same lines under {self.path} on {self.branch}; {what!r} was not "
                                  "pushed: resolve it in the repository and run again")
        raise GitopsError(f"{self.url} refused the push of {what!r} {PUSH_ATTEMPTS} times (the branch keeps moving); run again")


def commit_message(model_name: str, version: str, subject: str, run: str, body: str = "", trailers: list[tuple[str, str]] = ()) -> str:
    """Return "<model> <version>: <subject>" ("<model>: <subject>" without a version), the body, and a last paragraph of git
    trailers: Model, Version, ``trailers``, Pipeline-Run.

    Each trailer value is put on one line (whitespace collapsed) so that ``git interpret-trailers --parse`` reads it whole;
    empty values are left out.
    """
    pairs = [("Model", model_name), ("Version", version), *trailers, ("Pipeline-Run", run)]
    block = "\n".join(f"{key}: {' '.join(value.split())}" for key, value in pairs if value.strip())
    return f"{' '.join(part for part in (model_name, version) if part)}: {subject}\n\n" + (f"{body.strip()}\n\n" if body.strip() else "") + f"{block}\n"
