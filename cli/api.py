"""The two HTTP services the tool talks to, and how their refusals become one message.

Every command goes through :class:`Service`: it adds the bearer credential read from its file
(at each run, so a rotated one applies), turns a refused connection into a sentence naming the
URL and the setting that points there, and a non-2xx answer into the problem's ``detail``
(:class:`Problem`). Commands never see a ``requests`` exception; :mod:`cli.main` prints a
:class:`Failure` on stderr and exits with its code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import requests

from eventing.settings import CliSettings, secret_from_file

TIMEOUT = 30.0  #: seconds one request may take, the stream of a tail excepted (it has none)
CONNECT_TIMEOUT = 5.0


class Failure(Exception):
    """Why a command could not do its work, said in one sentence for stderr."""

    exit_code = 1


class Unreachable(Failure):
    """No answer at all: the URL is wrong, or the service is down."""


class Problem(Failure):
    """The service answered, but not 2xx: its problem document says why."""

    def __init__(self, service: str, status: int, detail: str, document: Any) -> None:
        self.status = status
        self.detail = detail
        self.document = document  #: the answer's JSON, or None when it was none
        super().__init__(f"the {service} answered {_status_line(status)}: {detail}")


class BadCredential(Failure):
    """A credential file named by a setting cannot be read: the setting is what to fix."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Service:
    """One HTTP service: its base URL and the settings an operator changes to fix a failure."""

    name: str  #: ``manager`` or ``proxy``, as messages call it
    url: str
    url_setting: str
    credential_file: str  #: empty: no Authorization header
    credential_setting: str
    session: requests.Session

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send one request and return its 2xx answer.

        Raises:
            Unreachable: no connection, or no answer in :data:`TIMEOUT` seconds.
            Problem: an answer other than 2xx.
            BadCredential: the credential file cannot be read.
        """
        sent = dict(headers or {})
        if self.credential_file:
            sent["Authorization"] = f"Bearer {self._credential()}"
        url = f"{self.url}{path}"
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                json=body,
                data=data,
                headers=sent,
                stream=stream,
                timeout=(CONNECT_TIMEOUT, None if stream else TIMEOUT),
            )
        except requests.ConnectionError as exc:
            refused = "refused" if "refused" in str(exc).lower() else "failed"
            raise Unreachable(
                f"cannot reach the {self.name} at {self.url} (connection {refused}): is it"
                f" running there? Set {self.url_setting} to the URL it listens on"
            ) from None
        except requests.Timeout:
            raise Unreachable(
                f"the {self.name} at {self.url} did not answer {method} {path} within {TIMEOUT:g}s"
            ) from None
        if not response.ok:
            raise _problem(self.name, response)
        return response

    def document(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
    ) -> Any:
        """The JSON document of a 2xx answer (raises as :meth:`request` does, and
        :class:`Failure` when the answer is no JSON)."""
        response = self.request(method, path, params=params, body=body)
        try:
            return response.json()
        except ValueError:
            raise Failure(
                f"the {self.name} answered {method} {path} with something that is not JSON"
                f" ({response.headers.get('Content-Type', 'no Content-Type')}): is"
                f" {self.url_setting}={self.url} the {self.name}?"
            ) from None

    def lines(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[bytes]:
        """The non-empty lines of a streamed answer (NDJSON), as they arrive; ends when the
        service ends the stream (raises as :meth:`request` does, and :class:`Unreachable` when
        the connection breaks off)."""
        response = self.request("GET", path, params=params, stream=True)
        with response:
            try:
                yield from (line for line in response.iter_lines() if line.strip())
            except requests.RequestException:
                raise Unreachable(f"the {self.name} at {self.url} broke off {path}") from None

    def _credential(self) -> str:
        try:
            return secret_from_file(self.credential_file)
        except OSError as exc:
            raise BadCredential(
                f"{self.credential_setting}: cannot read the file {self.credential_file!r}"
                f" ({exc.strerror or exc})"
            ) from None


@dataclass(frozen=True, slots=True)
class Services:
    """What every command may talk to."""

    manager: Service
    proxy: Service


def services(settings: CliSettings) -> Services:
    """The manager's API and the proxy as ``settings`` name them, sharing one session."""
    session = requests.Session()
    return Services(
        manager=Service(
            "manager",
            settings.manager_url,
            "EVENTING_MANAGER_URL",
            settings.manager_token_file,
            "EVENTING_MANAGER_TOKEN_FILE",
            session,
        ),
        proxy=Service(
            "proxy",
            settings.proxy_url,
            "EVENTING_PROXY_URL",
            settings.api_key_file,
            "EVENTING_API_KEY_FILE",
            session,
        ),
    )


def _problem(service: str, response: requests.Response) -> Problem:
    """The refusal as its problem document tells it; a body that is no problem document (a
    proxy in front, say) is shown as text, shortened."""
    try:
        document: Any = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("detail"), str):
        detail = document["detail"]
        errors = document.get("errors")
        if errors:  # a batch's problems, by index
            detail = f"{detail} {errors}"
    else:
        detail = response.text.strip()[:300] or "no detail given"
    if response.status_code == 401:
        detail += " (the credential comes from the file that " + (
            "EVENTING_MANAGER_TOKEN_FILE" if service == "manager" else "EVENTING_API_KEY_FILE"
        )
        detail += " names)"
    return Problem(service, response.status_code, detail, document)


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
