"""Who may talk to the explorer, checked in front of every route (the live app and the static mode alike).

- **Host allow-list** against DNS rebinding: only ``127.0.0.1``, ``localhost``, ``[::1]``, the bound address
  (with the bound port) and the names given with ``--allow-host``; anything else is answered 400.
- **The access token** when the server listens beyond loopback (``?token=…`` once, then a cookie).
- **Same origin for every request that changes state** (any method but GET/HEAD/OPTIONS): a browser's
  ``Sec-Fetch-Site`` must be ``same-origin`` (or ``none``) and its ``Origin`` this server's; else 403.
- **A client id the server signs** (``itsdangerous``, with a secret made per process): the job caps count
  per signed id; a missing, unsigned or forged id counts as one anonymous client per remote address. The
  forms carry a per-session CSRF token derived from the signed id (:func:`csrf_token`).
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from dataclasses import dataclass, field

from itsdangerous import BadSignature, Signer
from starlette.requests import Request
from starlette.responses import PlainTextResponse

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
CLIENT_COOKIE = "fs_client"
TOKEN_COOKIE = "fs_token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _bracket(host: str) -> str:
    h = host.strip("[]").lower()
    try:
        return f"[{h}]" if ipaddress.ip_address(h).version == 6 else h
    except ValueError:
        return h


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port`` → (name as written in URLs, port); None if malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/\\@ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, _, port = value.partition(":")
        rest = f":{port}" if _ else ""
    if not rest:
        return name, None
    if not rest.startswith(":") or not rest[1:].isascii() or not rest[1:].isdigit() or len(rest) > 6:
        return None
    return name, int(rest[1:])


@dataclass
class Access:
    """The guard's settings: the bound address and port, extra host names, the token, the signing secret."""

    host: str = "127.0.0.1"
    port: int | None = None  # None or 0: any port in the Host header
    allow_hosts: tuple[str, ...] = ()
    token: str | None = None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        self._signer = Signer(self.secret, salt="filterscope-client")
        self._csrf = Signer(self.secret, salt="filterscope-csrf")
        names = {*LOOPBACK_NAMES, _bracket(self.host), *(_bracket(h) for h in self.allow_hosts)}
        if self.host in ("0.0.0.0", "::"):  # every interface: this machine's own names and addresses too
            try:
                hn = socket.gethostname()
                names |= {hn.lower(), *socket.gethostbyname_ex(hn)[2]}
            except OSError:
                pass
        self.names = frozenset(names)

    def host_problem(self, header: str | None) -> str | None:
        """Why a Host header is refused (None when it names this server)."""
        got = _split_host(header or "")
        if got is None:
            return f"the Host header {header!r} is malformed"
        name, port = got
        if name not in self.names:
            return f"the Host {header!r} is not a name of this server; start it with --allow-host {name} to allow it"
        if port is not None and self.port and port != self.port:
            return f"the Host {header!r} names another port than this server's ({self.port})"
        return None

    def sign(self, client: str) -> str:
        return self._signer.sign(client).decode()

    def unsign(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            return self._signer.unsign(cookie).decode()
        except (BadSignature, UnicodeDecodeError):
            return None

    def csrf_token(self, client: str) -> str:
        """The per-session form token of a (signed) client id."""
        return self._csrf.get_signature(client).decode()


def _text(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(f"{status} {message}\n", status_code=status)


def cross_origin_problem(request: Request) -> str | None:
    """Why a state-changing request is refused as cross-site (None when it is same-origin or not a browser's)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        if origin.lower() != own:
            return f"cross-origin request refused (Origin {origin!r} is not {own!r})"
    return None


class Guard:
    """ASGI middleware doing the checks of this module; it leaves in ``scope["state"]``: ``fs_client`` (the id
    the job caps count against), ``fs_csrf`` (the token the pages embed) and ``fs_csrf_ok`` (the token a form
    must send back, None for an anonymous client)."""

    def __init__(self, app, access: Access, clients: bool = True):
        self.app = app
        self.access = access
        self.clients = clients

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        ac = self.access
        problem = ac.host_problem(request.headers.get("host"))
        if problem:
            return await _text(400, f"bad request: {problem}")(scope, receive, send)
        token, given = ac.token, request.query_params.get("token")
        if token and not (
            secrets.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), token)
            or (given is not None and secrets.compare_digest(given, token))
        ):
            msg = "forbidden: this server needs its access token (?token=…, printed at start)"
            return await _text(403, msg)(scope, receive, send)
        if scope["method"] not in SAFE_METHODS:
            problem = cross_origin_problem(request)
            if problem:
                return await _text(403, f"forbidden: {problem}")(scope, receive, send)
        cookies = []
        if token and given:
            cookies.append(f"{TOKEN_COOKIE}={token}; Path=/; SameSite=Strict; HttpOnly")
        if self.clients:
            cid = ac.unsign(request.cookies.get(CLIENT_COOKIE))
            state = scope.setdefault("state", {})
            if cid is None:  # new, unsigned or forged: one anonymous client per address until the cookie is back
                host = scope.get("client")[0] if scope.get("client") else "?"
                state["fs_client"] = f"anon:{host}"
                state["fs_csrf_ok"] = None
                new = secrets.token_hex(8)
                state["fs_csrf"] = ac.csrf_token(new)
                cookies.append(f"{CLIENT_COOKIE}={ac.sign(new)}; Path=/; SameSite=Strict; HttpOnly")
            else:
                state["fs_client"] = cid
                state["fs_csrf"] = state["fs_csrf_ok"] = ac.csrf_token(cid)
        if not cookies:
            return await self.app(scope, receive, send)

        async def send_with_cookies(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"set-cookie", c.encode()) for c in cookies]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookies)
