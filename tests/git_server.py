"""Real Git servers on 127.0.0.1: ``git http-backend`` (smart HTTP) behind a small HTTP server that asks for a
password on push, as a Git host does for the HTTPS form (every push's user is recorded), and OpenSSH's sshd with
key authentication only, for the SSH form."""

from __future__ import annotations

import base64
import getpass
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.servers import start_server


class LoopbackHttpServer:
    """An HTTP server on 127.0.0.1 answering with the handler class ``_handler()`` returns, in a daemon thread once started."""

    def __init__(self, port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self):
        raise NotImplementedError

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()


class GitHttpServer(LoopbackHttpServer):
    """Bare repositories under ``root``, served read-only to anyone and writable with ``password``."""

    def __init__(self, root: Path, password: str, port: int = 0) -> None:
        self.root, self.password = root, password
        self.pushes: list[str] = []
        self.authorizations: list[str] = []  # every Authorization header received, on any request
        self.before_next_push: list = []  # callables run once, just before the next push is received
        super().__init__(port)

    def create(self, name: str, files: dict[str, str]) -> str:
        """Create a bare repository ``name`` with a first commit on main holding ``files``; return its URL."""
        bare = self.root / name
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare)], check=True)
        subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
        subprocess.run(["git", "-C", str(bare), "config", "receive.denyNonFastForwards", "true"], check=True)  # no force push lands
        seed = self.root / f"{name}-seed"
        subprocess.run(["git", "init", "--quiet", "--initial-branch=main", str(seed)], check=True)
        for relative, content in files.items():
            (seed / relative).parent.mkdir(parents=True, exist_ok=True)
            (seed / relative).write_text(content)
        environment = {**os.environ, "GIT_AUTHOR_NAME": "platform team", "GIT_AUTHOR_EMAIL": "platform@example.com",
                       "GIT_COMMITTER_NAME": "platform team", "GIT_COMMITTER_EMAIL": "platform@example.com"}
        for command in (["add", "--all"], ["commit", "--quiet", "-m", "fleet repository"], ["push", "--quiet", str(bare), "main"]):
            subprocess.run(["git", "-C", str(seed), *command], check=True, env=environment)
        return f"{self.url}/{name}"

    def commit_directly(self, name: str, relative: str, content: str, author: str = "colleague") -> None:
        """Commit ``content`` to ``relative`` on main of repository ``name`` as ``author``, bypassing HTTP (another writer)."""
        clone = self.root / f"{name}-{author}-{len(list(self.root.glob(f'{name}-{author}-*')))}"
        environment = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": f"{author}@example.com",
                       "GIT_COMMITTER_NAME": author, "GIT_COMMITTER_EMAIL": f"{author}@example.com"}
        subprocess.run(["git", "clone", "--quiet", str(self.root / name), str(clone)], check=True, env=environment)
        (clone / relative).parent.mkdir(parents=True, exist_ok=True)
        (clone / relative).write_text(content)
        for command in (["add", "--all"], ["commit", "--quiet", "-m", f"{author} edits {relative}"], ["push", "--quiet", "origin", "main"]):
            subprocess.run(["git", "-C", str(clone), *command], check=True, env=environment, capture_output=True)

    def _handler(self):
        git = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _authorised_user(self) -> str | None:
                header = self.headers.get("Authorization", "")
                if not header.startswith("Basic "):
                    return None
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                return user if password == git.password else None

            def _serve(self) -> None:
                if self.headers.get("Authorization"):
                    git.authorizations.append(self.headers["Authorization"])
                path, _, query = self.path.partition("?")
                pushing = "git-receive-pack" in path or "service=git-receive-pack" in query
                user = self._authorised_user() if pushing else "anonymous"
                if user is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if pushing and self.command == "POST" and git.before_next_push:
                    git.before_next_push.pop(0)()
                environment = {**os.environ, "GIT_PROJECT_ROOT": str(git.root), "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
                               "QUERY_STRING": query, "REQUEST_METHOD": self.command, "REMOTE_USER": user, "REMOTE_ADDR": "127.0.0.1",
                               "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""), "GIT_HTTP_MAX_REQUEST_BUFFER": "100M"}
                result = subprocess.run(["git", "http-backend"], input=body, env=environment, capture_output=True, timeout=120)
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = result.stdout.partition(b"\n\n")
                headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
                status = next((int(value.split()[0]) for name, value in headers if name.lower() == "status"), 200)
                if pushing and self.command == "POST" and status == 200:
                    git.pushes.append(user)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() != "status":
                        self.send_header(name, value.strip())
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        return Handler


class RedirectServer(LoopbackHttpServer):
    """An HTTP server on 127.0.0.1 that answers every request with a redirect to the same path under ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        super().__init__()

    def _handler(self):
        redirect = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _redirect(self) -> None:
                self.send_response(302)
                self.send_header("Location", redirect.target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _redirect

        return Handler


class GitSshServer:
    """A real OpenSSH server on 127.0.0.1 (run as this user, key authentication only) serving the bare repositories
    of a ``GitHttpServer`` over ``ssh://<user>@127.0.0.1:<port>/<path>``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "GitSshServer":
        self.work.mkdir(parents=True, exist_ok=True)
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.work / name)], check=True)
        (self.work / "authorized_keys").write_text((self.work / "client.pub").read_text())
        config = self.work / "sshd_config"

        def arguments(port: int) -> list[str]:
            config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {self.work / 'host'}\nAuthorizedKeysFile {self.work / 'authorized_keys'}\n"
                              f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
                              f"PidFile {self.work / 'sshd.pid'}\n")
            return ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]

        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
        self.process, self.port = start_server(arguments, self.work / "sshd.log", "sshd", timeout_s=10)
        self.user = getpass.getuser()
        return self

    def url(self, bare: Path) -> str:
        """Return the SSH URL of a bare repository on this machine."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{bare}"

    def known_hosts(self) -> str:
        """Return the known_hosts line of this server's host key."""
        kind, key = (self.work / "host.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def client_key(self) -> str:
        """Return the private key authorised to log in."""
        return (self.work / "client").read_text()

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
