"""The way to the service, decided before any connection: which proxy a URL goes through, and whom TLS trusts.

Pure and resolved once (flag > environment > default), like the rest of the run's settings:

- `resolve_proxy(flag, env)`: `--proxy URL` (env `BATCHGEN_PROXY`) over `HTTPS_PROXY`/`https_proxy` and
  `HTTP_PROXY`/`http_proxy`, with `NO_PROXY`/`no_proxy`. `~/.netrc` and every other file are never read.
- `proxy_for(url, proxy)`: the proxy for one URL, host by host (the API, result hosts, notifications, pings).
  Plain `http://` to a loopback address never goes through a proxy: the key would travel to it in clear.
- `tls_context(ca_bundle)`: the one `ssl.SSLContext` of a run: the system's CAs (OpenSSL honours `SSL_CERT_FILE`
  and `SSL_CERT_DIR`), or only the CAs of `--ca-bundle PATH` (env `BATCHGEN_CA_BUNDLE`).

Proxy credentials are secrets like the key: `ProxySettings` never shows them (repr, `shown`), and `secrets()`
gives the masking boundary (config.redact) every form to hide.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import UsageError
from .files import read_bounded  # the one bounded, regular-file-only reader

CA_BUNDLE_LIMIT = 16 * 1024 * 1024  # bytes: a system bundle is ~200 KB; more is not a CA bundle (or /dev/zero)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The proxies of a run. URLs keep their credentials (aiohttp sends them as Proxy-Authorization); repr and
    `shown` never show them."""

    https: str | None = field(default=None, repr=False)  # for https:// URLs
    http: str | None = field(default=None, repr=False)  # for http:// URLs
    no_proxy: tuple[str, ...] = ()
    source: str = ""  # where https/http came from ("--proxy", "HTTPS_PROXY", ...), for doctor and messages

    def __repr__(self) -> str:
        return (
            f"ProxySettings(https={shown(self.https)!r}, http={shown(self.http)!r}, no_proxy={self.no_proxy!r}, "
            f"source={self.source!r})"
        )

    def secrets(self) -> tuple[str, ...]:
        """What must never reach output: each proxy's password and its whole `user:password` part."""
        found: set[str] = set()
        for url in (self.https, self.http):
            if url is None:
                continue
            parts = urlsplit(url)
            userinfo = parts.netloc.rpartition("@")[0]
            if userinfo:
                found.add(userinfo)
                found.add(unquote(userinfo))
            if parts.password:
                found.add(parts.password)
                found.add(unquote(parts.password))
        return tuple(sorted((s for s in found if s), key=len, reverse=True))


def shown(url: str | None) -> str | None:
    """A proxy URL as it may be printed: scheme, host and port; never a user or a password."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}"


def resolve_proxy(flag: str | None, env: Mapping[str, str]) -> ProxySettings:
    """The run's proxies: --proxy (or BATCHGEN_PROXY) for every URL, else the usual environment variables."""
    no_proxy = _no_proxy_entries(_first(env, "no_proxy", "NO_PROXY") or "")
    if flag is not None and not flag.strip():  # `--proxy ""`: no proxy at all, whatever the environment says
        return ProxySettings(no_proxy=no_proxy, source="--proxy")
    chosen = flag if flag is not None else env.get("BATCHGEN_PROXY")
    if chosen is not None and chosen.strip():
        source = "--proxy" if flag is not None else "BATCHGEN_PROXY"
        url = check_proxy_url(chosen, source)
        return ProxySettings(https=url, http=url, no_proxy=no_proxy, source=source)
    https_name = "https_proxy" if env.get("https_proxy", "").strip() else "HTTPS_PROXY"
    https = _first(env, "https_proxy", "HTTPS_PROXY")
    # HTTP_PROXY in capitals is ignored under CGI (REQUEST_METHOD set): there a client's "Proxy:" header lands in
    # it ("httpoxy"), as Python's urllib and curl do.
    http = _first(env, "http_proxy") if "REQUEST_METHOD" in env else _first(env, "http_proxy", "HTTP_PROXY")
    return ProxySettings(
        https=check_proxy_url(https, https_name) if https else None,
        http=check_proxy_url(http, "HTTP_PROXY") if http else None,
        no_proxy=no_proxy,
        source=https_name if https else ("HTTP_PROXY" if http else ""),
    )


PROXY_VARIABLES = ("BATCHGEN_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")


def secrets_in(flag: str | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials of every proxy setting, read leniently (never raises): what to mask from the very first
    line, before the flags are checked (a crash log holds the command line, --proxy included)."""
    urls = [flag or "", *(env.get(name, "") for name in PROXY_VARIABLES)]
    found: set[str] = set()
    for url in urls:
        text = url.strip() if "://" in url else "http://" + url.strip()
        try:
            found.update(ProxySettings(https=text).secrets())
        except ValueError:
            continue
    return tuple(sorted(found, key=len, reverse=True))


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def check_proxy_url(text: str, source: str) -> str:
    """A proxy URL as aiohttp takes it: http:// (the scheme may be left out); never echoes credentials."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise UsageError(f"{source}: not a valid proxy URL (expected http://[user:password@]host:port)") from None
    host = parts.hostname
    if not host:
        raise UsageError(f"{source}: not a valid proxy URL (expected http://[user:password@]host:port)")
    where = f"{host}:{port}" if port else host
    if parts.scheme.lower() != "http":
        raise UsageError(
            f"{source}: {parts.scheme}:// proxies are not supported ({where}); use an http:// proxy (it tunnels "
            "https:// with CONNECT)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{source}: a proxy URL is scheme, host and port only ({where})")
    return text.rstrip("/")


def _no_proxy_entries(text: str) -> tuple[str, ...]:
    """NO_PROXY's entries, lower case: separated by commas or spaces."""
    return tuple(e.strip().lower() for e in text.replace(" ", ",").split(",") if e.strip())


def proxy_for(url: str, proxy: ProxySettings) -> str | None:
    """The proxy to reach `url` through, or None for a direct connection.

    https:// URLs use the https proxy, http:// ones the http proxy; plain http:// to a loopback address never
    goes through one; NO_PROXY wins over both.
    """
    if proxy.http is None and proxy.https is None:
        return None  # no proxy at all (most runs): nothing to parse, at every request
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not host or scheme not in ("http", "https"):
        return None
    if scheme == "http" and is_loopback_host(host):
        return None
    chosen = proxy.https if scheme == "https" else proxy.http
    if chosen is None or bypassed(host, port or (443 if scheme == "https" else 80), proxy.no_proxy):
        return None
    return chosen


def bypassed(host: str, port: int, entries: tuple[str, ...]) -> bool:
    """Whether NO_PROXY's entries send `host:port` direct.

    An entry is `*` (everything), a host name (itself and every name under it; a leading `.` or `*.` means the
    same), an IP address, a CIDR block (`10.0.0.0/8`, `fd00::/8`), any of these with `:port` (only that port),
    an IPv6 address in brackets. Names are compared as written: no lookup is made.
    """
    host = host.strip("[]").rstrip(".").lower()
    address = _address(host)
    for entry in entries:
        if entry == "*":
            return True
        name, wanted = _split_port(entry)
        if wanted is not None and wanted != port:
            continue
        name = name.strip("[]").rstrip(".")
        if name.startswith("*."):
            name = name[1:]
        if "/" in name and address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if address is not None:
            if _address(name) == address:
                return True
            continue
        suffix = name.lstrip(".")
        if suffix and (host == suffix or host.endswith("." + suffix)):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, a bare IPv6 address, or a plain name."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port) if port.isdigit() else None
    return entry, None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address is this machine's loopback."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.") or host.endswith(".localhost"):
        return True
    address = _address(host)
    return address is not None and address.is_loopback


def check_ca_bundle(path: str, source: str) -> Path:
    """--ca-bundle / BATCHGEN_CA_BUNDLE: a readable PEM file with at least one certificate."""
    tls_context(Path(path), source=source)
    return Path(path)


def tls_context(ca_bundle: Path | None, *, source: str = "--ca-bundle") -> ssl.SSLContext:
    """The one TLS context of a run: verify every certificate and host name, against the system's CAs
    (SSL_CERT_FILE/SSL_CERT_DIR honoured by OpenSSL) or only those of `ca_bundle`."""
    if ca_bundle is None:
        return ssl.create_default_context()
    data = read_bounded(ca_bundle, CA_BUNDLE_LIMIT, f"{source} {ca_bundle}")
    if isinstance(data, str):
        raise UsageError(data)
    text = data.decode("ascii", errors="replace")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"{source} {ca_bundle}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verify_mode CERT_REQUIRED, check_hostname True
    try:  # the bundle's CAs only, as curl's --cacert: the system's are not added
        context.load_verify_locations(cadata=_pem_only(text, ca_bundle, source))
    except ssl.SSLError as exc:
        raise UsageError(f"{source} {ca_bundle}: not a PEM certificate bundle ({exc.reason or exc})") from None
    return context


def _pem_only(text: str, path: Path, source: str) -> str:
    blocks = []
    rest = text
    while "-----BEGIN CERTIFICATE-----" in rest:
        start = rest.index("-----BEGIN CERTIFICATE-----")
        end = rest.find("-----END CERTIFICATE-----", start)
        if end < 0:
            raise UsageError(f"{source} {path}: a certificate is cut short (no -----END CERTIFICATE-----)")
        end += len("-----END CERTIFICATE-----")
        blocks.append(rest[start:end])
        rest = rest[end:]
    return "\n".join(blocks) + "\n"
