"""Real pieces of a company's way to the service, for tests: a private CA made with openssl, nginx in front of
the simulator (TLS, short keep-alive, its own HTML 413/502/504 pages), tinyproxy as the forward proxy with Basic
auth. Each runs as the user running the tests, on free loopback ports, with its own files in a temporary folder.

A test that cannot find nginx, tinyproxy or openssl fails when CI=true (`.ci/run` installs them) and is skipped
with the reason elsewhere.

Two loopback hosts stand for two machines: 127.0.0.1 is the API's gateway, 127.0.0.2 the result-file host.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NGINX = "/usr/sbin/nginx"  # Debian's nginx-light
TINYPROXY = "/usr/bin/tinyproxy"
API_HOST = "127.0.0.1"
FILES_HOST = "127.0.0.2"
PROXY_USER = "nightly"
PROXY_PASSWORD = "pr0xy-Secret-9d1f"  # must appear nowhere batchgen writes


def need(path: str) -> str:
    """The program's path; fails the test in CI, skips it with the reason elsewhere."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if found:
        return found
    reason = f"{path} is not installed (apt-get install -y nginx-light tinyproxy openssl)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port(host: str = API_HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], deadline: float = 10.0) -> None:
    """Until something accepts on host:port (the process started), or fail with its output."""
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > end:
                out = process.stdout.read().decode(errors="replace") if process.stdout else ""
                raise AssertionError(f"{process.args!r} did not start listening on {host}:{port}: {out}") from None
            time.sleep(0.02)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


# ---------------------------------------------------------------- a private CA


@dataclass(frozen=True)
class Pki:
    ca: Path  # the test CA's certificate: --ca-bundle / SSL_CERT_FILE
    certs: dict[str, tuple[Path, Path]]  # name -> (certificate chain, key): good, expired, wrong_host, untrusted


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need("/usr/bin/openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> Pki:
    """A CA, and server certificates for both loopback hosts: good, expired, for another host, and one from a
    CA nobody trusts."""
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "30", "-subj", f"/O=batchgen tests/CN=batchgen test {ca} CA", cwd=folder,
        )  # fmt: skip
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("1000\n")
    (folder / "new").mkdir(exist_ok=True)
    (folder / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = new\nserial = serial\n"
        "default_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = copy\n[any]\ncommonName = supplied\n"
    )
    both = f"IP:{API_HOST},IP:{FILES_HOST},DNS:localhost"
    plans = {
        "good": ("ca", both, None),
        "expired": ("ca", both, ("20200101000000Z", "20200201000000Z")),
        "wrong_host": ("ca", "DNS:wrong-host.example", None),
        "untrusted": ("rogue", both, None),
    }
    certs = {}
    for name, (issuer, names, dates) in plans.items():
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=batchgen-{name}", "-addext", f"subjectAltName={names}", cwd=folder,
        )  # fmt: skip
        start, end = dates or ("20240101000000Z", "20991231000000Z")
        _openssl(
            "ca", "-batch", "-config", "ca.cnf", "-cert", f"{issuer}.pem", "-keyfile", f"{issuer}.key",
            "-in", f"{name}.csr", "-out", f"{name}.pem", "-startdate", start, "-enddate", end, "-notext",
            cwd=folder,
        )  # fmt: skip
        certs[name] = (folder / f"{name}.pem", folder / f"{name}.key")
    return Pki(ca=folder / "ca.pem", certs=certs)


# ---------------------------------------------------------------- nginx in front of the simulator


@dataclass
class Nginx:
    """nginx: https://127.0.0.1:api_port -> the simulator's API, https://127.0.0.2:files_port -> its files.

    `switch("502")` / `switch("504")` / `switch(None)`: nginx itself answers every request with its own 502 or
    504 page (a file the config tests per request: no reload, no race), until switched back."""

    folder: Path
    api_port: int = field(default_factory=free_port)
    files_port: int = field(default_factory=lambda: free_port(FILES_HOST))
    process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"https://{API_HOST}:{self.api_port}"

    @property
    def files_url(self) -> str:
        return f"https://{FILES_HOST}:{self.files_port}"

    def start(
        self,
        api_upstream: str,
        files_upstream: str,
        cert: tuple[Path, Path],
        *,
        files_cert: tuple[Path, Path] | None = None,
        body_limit: str = "4k",
    ) -> None:
        binary = need(NGINX)
        f = self.folder
        f.mkdir(parents=True, exist_ok=True)
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""  # workers as us
        temp = " ".join(
            f"{kind}_temp_path {f}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        outage = f"if (-f {f}/outage502) {{ return 502; }} if (-f {f}/outage504) {{ return 504; }}"
        proxy = 'proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off;'

        def server(host: str, port: int, upstream: str, cert: tuple[Path, Path]) -> str:
            return (
                f"server {{ listen {host}:{port} ssl; ssl_certificate {cert[0]}; ssl_certificate_key {cert[1]}; "
                f"location / {{ {outage} proxy_pass {upstream}; {proxy} }} }}"
            )

        (f / "nginx.conf").write_text(
            f"daemon off; worker_processes 1; pid {f}/nginx.pid; error_log {f}/error.log warn; {user}\n"
            "events { worker_connections 256; }\n"
            f"http {{ access_log {f}/access.log; {temp}\n"
            # Short keep-alive: idle connections are closed after 1 s, and after 3 requests (SPEC §1a).
            f"  keepalive_timeout 1s; keepalive_requests 3; client_max_body_size {body_limit};\n"
            f"  {server(API_HOST, self.api_port, api_upstream, cert)}\n"
            f"  {server(FILES_HOST, self.files_port, files_upstream, files_cert or cert)}\n}}\n"
        )
        self.process = subprocess.Popen(
            [binary, "-p", str(f), "-c", str(f / "nginx.conf"), "-e", str(f / "error.log")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(API_HOST, self.api_port, self.process)
        wait_for_port(FILES_HOST, self.files_port, self.process)

    def switch(self, outage: str | None) -> None:
        for kind in ("502", "504"):
            path = self.folder / f"outage{kind}"
            if kind == outage:
                path.touch()
            else:
                path.unlink(missing_ok=True)

    def served(self, status: int, path: str = "") -> int:
        """How many answers with this status nginx has logged (to requests whose line holds `path`)."""
        log = self.folder / "access.log"
        if not log.exists():
            return 0
        lines = log.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if f'" {status} ' in line and path in line)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


# ---------------------------------------------------------------- tinyproxy, the company's forward proxy


@dataclass
class Tinyproxy:
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def url(self, password: str = PROXY_PASSWORD) -> str:
        return f"http://{PROXY_USER}:{password}@{API_HOST}:{self.port}"

    def start(self, *, connect_ports: tuple[int, ...] = ()) -> None:
        """Basic auth required; CONNECT to any port unless `connect_ports` names the only ones allowed."""
        binary = need(TINYPROXY)
        f = self.folder
        f.mkdir(parents=True, exist_ok=True)
        ports = "".join(f"ConnectPort {p}\n" for p in connect_ports)
        (f / "tinyproxy.conf").write_text(
            f'Port {self.port}\nListen {API_HOST}\nTimeout 30\nLogFile "{f}/tinyproxy.log"\nLogLevel Connect\n'
            f'PidFile "{f}/tinyproxy.pid"\nMaxClients 64\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\n{ports}'
        )
        self.process = subprocess.Popen(
            [binary, "-d", "-c", str(f / "tinyproxy.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        wait_for_port(API_HOST, self.port, self.process)

    def connects(self) -> list[str]:
        """The CONNECT requests in its log: ["127.0.0.1:8443", ...]."""
        log = self.folder / "tinyproxy.log"
        if not log.exists():
            return []
        found = []
        for line in log.read_text(errors="replace").splitlines():
            if "Request (file descriptor" in line and ": CONNECT " in line:
                found.append(line.split(": CONNECT ", 1)[1].split()[0])
        return found

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
