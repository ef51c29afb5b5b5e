"""The built-in ``webhook`` actor: POST a JSON payload to a URL, retrying only what may succeed later.

It owns input checks, the HTTP call (stdlib ``urllib.request``) and the retry decision:
5xx, 429, timeouts and connection errors raise :class:`WebhookRetryable` (retried with
backoff, then dead-lettered); any other non-2xx answer, a redirect, or bad input raises
:class:`WebhookRejected` (never retried). Redirects are not followed, so custom headers
(often credentials) only ever go to the host the caller named.

**Internal addresses are refused** (SSRF): the host is resolved when the connection is made and
only public addresses are connected to, so neither a hostname that resolves to loopback,
private, link-local (cloud metadata at 169.254.169.254), shared, multicast or reserved space,
nor one whose DNS answer changes between a check and the connect (rebinding), reaches an
internal service. ``FAIRLANE_WEBHOOK_ALLOWED_NETWORKS`` lists the internal networks that may be
called. Environment proxies are not used: the check applies to the real target.

Header values, URL paths and query strings may carry secrets: logs and error messages name
the host and status only.

    from fairlane.actors.webhook import webhook

    webhook.send_with_options(
        args=("https://hooks.example.com/orders", {"order": 17}),
        kwargs={"headers": {"Authorization": "Bearer …"}},
        tenant="store-42",
    )
"""

from __future__ import annotations

import codecs
import functools
import http.client
import ipaddress
import json
import logging
import re
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.client import HTTPException
from typing import Any, cast
from urllib.parse import urlsplit

import fairlane

logger = logging.getLogger("fairlane.actors")

#: Longest URL accepted.
MAX_URL_LENGTH = 2048
#: Upper bound, in seconds, of ``timeout``.
MAX_TIMEOUT = 60.0
#: Most custom headers one call may set, and the longest value of one.
MAX_HEADERS = 50
MAX_HEADER_VALUE_LENGTH = 8192
#: How much of the response body is returned (characters, read from at most this many bytes).
MAX_BODY_CHARS = 2048

_USER_AGENT = "fairlane-webhook/1"
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
#: Headers the HTTP client computes itself; letting a caller set them would corrupt the request.
_RESERVED_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


class WebhookRejected(Exception):
    """The call cannot succeed as given (bad input, or the receiver answered 3xx/4xx other than 429).

    Not retried. ``status`` is the HTTP status, or ``None`` when the input was refused.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WebhookRetryable(Exception):
    """The call may succeed later (5xx, 429, timeout, connection error); the job is retried.

    ``status`` is the HTTP status, or ``None`` when no response arrived.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WebhookAddressRefused(WebhookRejected):
    """The URL's host resolves only to addresses that are not public (and not allowed)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_allowed(address: str, allowed: Sequence[Network] = ()) -> bool:
    """Whether a webhook may connect to ``address``: public, or inside an ``allowed`` network."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowed):
        return True
    return ip.is_global and not ip.is_multicast


def _public_connection(allowed: Sequence[Network]) -> Callable[..., socket.socket]:
    """A ``socket.create_connection`` that connects only to addresses :func:`address_allowed`.

    The address checked is the address connected to: no second lookup an attacker's DNS could
    answer differently.
    """

    def create_connection(
        address: tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        host, port = address
        candidates = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        usable = [candidate for candidate in candidates if address_allowed(str(candidate[4][0]), allowed)]
        if not usable:
            refused = sorted({str(candidate[4][0]) for candidate in candidates})
            raise WebhookAddressRefused(
                f"webhook host {host} resolves to {', '.join(refused)}, which is not a public address; "
                "allow its network with FAIRLANE_WEBHOOK_ALLOWED_NETWORKS if it is meant to be called"
            )
        error: OSError | None = None
        for family, kind, proto, _name, sockaddr in usable:
            sock = socket.socket(family, kind, proto)
            try:
                if isinstance(timeout, int | float):  # else http.client's "no timeout given" sentinel
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as failure:
                sock.close()
                error = failure
        assert error is not None
        raise error

    return create_connection


class _PublicHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allowed: Sequence[Network], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _public_connection(allowed)


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, allowed: Sequence[Network], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _public_connection(allowed)


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allowed: Sequence[Network]) -> None:
        super().__init__()
        self._connection = cast(Any, functools.partial(_PublicHTTPConnection, allowed=allowed))

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._connection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allowed: Sequence[Network]) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(context=self._tls)
        self._connection = cast(Any, functools.partial(_PublicHTTPSConnection, allowed=allowed))

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._connection, req, context=self._tls)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turn a 3xx into an ``HTTPError`` instead of re-sending (and its headers) elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@functools.lru_cache(maxsize=8)
def _opener(allowed: tuple[Network, ...]) -> urllib.request.OpenerDirector:
    """An opener that connects directly (no environment proxy) to allowed addresses only."""
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _PublicHTTPHandler(allowed),
        _PublicHTTPSHandler(allowed),
        _RefuseRedirects(),
    )


def _check_url(url: object) -> str:
    """The URL's host (for logs), or :class:`WebhookRejected` if it is not a usable http(s) URL."""
    if not isinstance(url, str) or not url:
        raise WebhookRejected("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRejected(f"url is {len(url)} characters; the limit is {MAX_URL_LENGTH}")
    if not url.isascii() or any(char.isspace() or not char.isprintable() for char in url):
        raise WebhookRejected("url must be printable ASCII (percent-encode the path, punycode the host)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as error:
        raise WebhookRejected(f"url is malformed: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRejected(f"url scheme must be http or https, not {parts.scheme!r}")
    if not host:
        raise WebhookRejected("url has no host")
    return host


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise WebhookRejected(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], not {timeout!r}")
    return float(timeout)


def _check_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise WebhookRejected(f"headers must be an object of strings, not {type(headers).__name__}")
    if len(headers) > MAX_HEADERS:
        raise WebhookRejected(f"{len(headers)} headers given; the limit is {MAX_HEADERS}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        # Name the header, never echo its value: it may be a credential.
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise WebhookRejected(f"header name {str(name)[:64]!r} is not a valid HTTP header name")
        if name.lower() in _RESERVED_HEADERS:
            raise WebhookRejected(f"header {name!r} is set by the HTTP client and may not be given")
        if not isinstance(value, str):
            raise WebhookRejected(f"header {name!r} must have a string value")
        if (
            len(value) > MAX_HEADER_VALUE_LENGTH
            or any(char in value for char in "\r\n\0")
            or any(ord(char) > 0xFF for char in value)
        ):
            raise WebhookRejected(
                f"header {name!r} value must be at most {MAX_HEADER_VALUE_LENGTH} Latin-1 characters,"
                " without CR/LF/NUL"
            )
        checked[name] = value
    return checked


def _encode_payload(payload: object) -> bytes:
    if not isinstance(payload, dict):
        raise WebhookRejected(f"payload must be a JSON object, not {type(payload).__name__}")
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise WebhookRejected(f"payload is not valid JSON: {error}") from None


def _body_text(raw: bytes, charset: str | None) -> str:
    """Decode the start of a body, dropping a character cut in half at the end."""
    try:
        decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(raw, final=False)[:MAX_BODY_CHARS]


def post_json(
    url: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    *,
    allowed: Sequence[Network] = (),
) -> dict[str, Any]:
    """POST ``payload`` as JSON to ``url``; return ``{"status": code, "body": first 2 KiB of text}``.

    Only public addresses, and those inside ``allowed`` networks, are connected to.

    Raises:
      WebhookRejected: bad input, a non-public address (:class:`WebhookAddressRefused`), a
        redirect, or a 4xx other than 429.
      WebhookRetryable: a 5xx or 429, a timeout, or a connection error.
    """
    host = _check_url(url)
    seconds = _check_timeout(timeout)
    request_headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
    request_headers.update(_check_headers(headers))
    request = urllib.request.Request(
        url, data=_encode_payload(payload), headers=request_headers, method="POST"
    )
    try:
        with _opener(tuple(allowed)).open(request, timeout=seconds) as response:
            status = int(response.status)
            body = _body_text(response.read(MAX_BODY_CHARS), response.headers.get_content_charset())
    except urllib.error.HTTPError as error:
        status = int(error.code)
        error.close()
        retryable = status >= 500 or status == 429
        logger.warning("event=webhook_failed host=%s status=%d retryable=%s", host, status, retryable)
        if retryable:
            raise WebhookRetryable(f"webhook to {host} answered {status}", status) from None
        raise WebhookRejected(f"webhook to {host} answered {status}", status) from None
    except (urllib.error.URLError, HTTPException, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        kind = "timed out" if isinstance(reason, TimeoutError) else f"failed ({type(reason).__name__})"
        logger.warning("event=webhook_unreachable host=%s error_type=%s", host, type(reason).__name__)
        raise WebhookRetryable(f"webhook to {host} {kind}") from None
    logger.info("event=webhook_sent host=%s status=%d", host, status)
    return {"status": status, "body": body}


@fairlane.actor(queue_name="webhooks", max_retries=5, min_backoff=1000, throws=(WebhookRejected,))
def webhook(
    url: str, payload: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """POST ``payload`` as JSON to ``url`` (http/https) with optional ``headers``; ``timeout`` in (0, 60] s.

    Refuses hosts that resolve to non-public addresses outside ``FAIRLANE_WEBHOOK_ALLOWED_NETWORKS``.

    Returns ``{"status": code, "body": first 2 KiB of the response text}``. 5xx, 429,
    timeouts and connection errors are retried (5 retries, backoff from 1 s); bad input,
    redirects and other 4xx fail the job at once.
    """
    allowed = tuple(
        ipaddress.ip_network(network, strict=False)
        for network in fairlane.get_app().settings.webhook_allowed_networks
    )
    return post_json(url, payload, headers, timeout, allowed=allowed)
