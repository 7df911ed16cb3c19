"""The Twilio REST subset (supervisor/rest.py): request handling without a server."""
from __future__ import annotations

import base64
import uuid

import pytest

from audiogw.supervisor.rest import RestApi, call_sid, handle

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "token-0123456789abcdef"
CALL = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
PATH = f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid(CALL)}.json"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Registry:
    def __init__(self, known=(CALL,)):
        self.known = set(known)
        self.hung_up: list[str] = []

    def __call__(self, call_uuid: str) -> bool:
        self.hung_up.append(call_uuid)
        return call_uuid in self.known


def serve(method="POST", path=PATH, auth=basic(ACCOUNT, TOKEN), body=b"Status=completed", token=TOKEN, registry=None):
    registry = registry or Registry()
    return handle(method, path, auth, body, account_sid=ACCOUNT, auth_token=token, hangup=registry), registry


def test_call_sid_is_ca_and_the_uuid_hex():
    assert call_sid(CALL) == "CA" + uuid.UUID(CALL).hex and len(call_sid(CALL)) == 34


def test_hangup_with_the_right_credentials():
    reply, registry = serve(body=b"Status=completed&Twiml=ignored")
    assert reply.status == 200, reply.body
    assert registry.hung_up == [CALL]
    assert reply.body["sid"] == call_sid(CALL) and reply.body["status"] == "completed"
    assert reply.body["account_sid"] == ACCOUNT and reply.body["uri"] == PATH


@pytest.mark.parametrize("auth", ["", basic(ACCOUNT, "wrong-token-0123456"), basic("ACother", TOKEN),
                                  "Basic !!!notbase64", "Bearer " + TOKEN, "Basic " + base64.b64encode(b"nocolon").decode()])
def test_wrong_or_missing_credentials_are_401_and_hang_nothing_up(auth):
    reply, registry = serve(auth=auth)
    assert reply.status == 401
    assert ("WWW-Authenticate", 'Basic realm="Twilio API"') in reply.headers
    assert registry.hung_up == []


def test_unknown_call_account_or_sid_is_404():
    other = str(uuid.uuid4())
    reply, registry = serve(path=PATH.replace(call_sid(CALL), call_sid(other)))
    assert reply.status == 404 and registry.hung_up == [other]
    other_account = "AC" + "f" * 32
    reply, registry = serve(path=PATH.replace(ACCOUNT, other_account), auth=basic(ACCOUNT, TOKEN))
    assert reply.status == 404 and reply.reason == "unknown_account" and registry.hung_up == []
    reply, _ = serve(path=PATH.replace(call_sid(CALL), "CAnothex"))
    assert reply.status == 404 and reply.reason == "bad_call_sid"
    reply, _ = serve(path="/2010-04-01/Accounts/x/Other.json")
    assert reply.status == 404


@pytest.mark.parametrize("body", [b"Status=canceled", b"", b"Status=completed&Status=completed", b"\xff\xfe",
                                  b"=&&=="])
def test_bad_form_or_status_is_400(body):
    reply, registry = serve(body=body)
    assert reply.status == 400 and registry.hung_up == []


def test_disabled_without_an_auth_token_is_403():
    reply, registry = serve(token=None)
    assert reply.status == 403 and "auth_token" in reply.body["message"] and registry.hung_up == []


def test_only_post():
    reply, _ = serve(method="GET")
    assert reply.status == 405 and ("Allow", "POST") in reply.headers


def test_rest_api_counts_by_status_and_reads_the_token_at_each_request():
    class Agent:
        account_sid = ACCOUNT
        auth_token = TOKEN

    agent = Agent()
    api = RestApi(lambda: agent, Registry())
    assert api.serve("POST", PATH, basic(ACCOUNT, TOKEN), b"Status=completed").status == 200
    agent.auth_token = "another-token-0123456789"  # a reload (auth_token is LIVE)
    assert api.serve("POST", PATH, basic(ACCOUNT, TOKEN), b"Status=completed").status == 401
    assert api.too_large().status == 413
    assert api.figures() == {"rest_requests": {"200": 1, "401": 1, "413": 1}}
