"""Mutual TLS and API tokens through a real ``reportd serve`` with TLS (spec README, "Who may do what")."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from reportd.auth import certificate_certname, certificate_san_names
from reportd.config import load_config_string
from reportd.settings import ConfigError
from tests.support import SAMPLE_CERTNAME, Daemon, ini_for, sample

OTHER = "other.example.test"
FORWARDER = "puppetserver.example.test"
SNEAKY = "sneaky.example.test"
DOOMED = "doomed.example.test"
ALIAS = "alias.example.test"
CHANGES_UUID = b"3e230e53-402f-4e33-bffa-4dcbd3e4f65e"
PUT_PATH = f"/puppet/v3/report/{SAMPLE_CERTNAME}?environment=production"
YAML = sample("http-processor-failure.yaml")
YAML_TYPE = "application/x-yaml"
YAML_UUID = "edd685cf-de74-45ec-be8c-12d2bb874e2d"


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, ssl.SSLContext]
    authority: trustme.CA
    leaves: dict[str, trustme.LeafCert]


def _write_leaf(leaf: trustme.LeafCert, path: Path) -> Path:
    path.write_bytes(leaf.private_key_pem.bytes() + b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    rogue_ca = trustme.CA()
    rogue_ca.cert_pem.write_to_path(str(directory / "rogue-ca.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    leaves = {
        "lab": ca.issue_cert(SAMPLE_CERTNAME, common_name=SAMPLE_CERTNAME),
        "other": ca.issue_cert(OTHER, common_name=OTHER),
        "forwarder": ca.issue_cert(FORWARDER, common_name=FORWARDER),
        # the certname as the CN only, or as a DNS SAN only
        "lab-cn": ca.issue_cert("alias.example.test", common_name=SAMPLE_CERTNAME),
        "lab-san": ca.issue_cert("alias.example.test", SAMPLE_CERTNAME, common_name="alias.example.test"),
        # a node whose SAN names the trusted forwarder
        "sneaky": ca.issue_cert(SNEAKY, FORWARDER, common_name=SNEAKY),
        # revoked by the CRL tests
        "doomed": ca.issue_cert(DOOMED, common_name=DOOMED),
        # right name, wrong CA
        "rogue": rogue_ca.issue_cert(SAMPLE_CERTNAME, common_name=SAMPLE_CERTNAME),
    }
    clients: dict[str, ssl.SSLContext] = {}
    for name, leaf in [("none", None), *leaves.items()]:
        context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        if leaf is not None:
            context.load_cert_chain(_write_leaf(leaf, directory / f"{name}.pem"))
        clients[name] = context
    return PKI(directory / "ca.pem", directory / "server.pem", directory / "server.key", clients, ca, leaves)


def tls_ini(tmp_path: Path, pki: PKI, extra: str = "") -> str:
    """Mutual TLS, nothing for loopback, one trusted forwarder."""
    extra = (
        f"tls_cert = {pki.server_cert}\ntls_key = {pki.server_key}\ntls_ca = {pki.ca}\n"
        f"anonymous_networks =\ntrusted_forwarders = {FORWARDER}\n{extra}"
    )
    return ini_for(tmp_path, extra)


@pytest.fixture
def daemon(daemon_factory, tmp_path, pki) -> Daemon:
    return daemon_factory(tls_ini(tmp_path, pki), scheme="https").start()


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self):
        return orjson.loads(self.body)


async def call(
    daemon: Daemon,
    pki: PKI,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    cert: str = "none",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
    sni: str | None = None,
) -> Answer:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = content_type
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            daemon.url + path,
            data=body,
            ssl=pki.clients[cert],
            headers=headers,
            # None: no SNI, as for every IP address; else the server's name, which its certificate has
            server_hostname=sni,
        ) as response,
    ):
        return Answer(response.status, response.content_type, await response.read())


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def changes(run_id: str | None = None, host: str | None = None) -> bytes:
    body = sample("agent-changes.json")
    if run_id is not None:
        body = body.replace(CHANGES_UUID, run_id.encode())
    if host is not None:
        body = body.replace(f'"host":"{SAMPLE_CERTNAME}"'.encode(), f'"host":"{host}"'.encode())
    return body


async def cli(daemon: Daemon, *args: str) -> str:
    result = await asyncio.to_thread(daemon.cli, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def create_token(daemon: Daemon, name: str, *permissions: str) -> str:
    flags = [arg for permission in permissions for arg in ("-p", permission)]
    out = await cli(daemon, "token", "create", name, *flags)
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpd_"), out
    return lines[0]


async def stored(daemon: Daemon, pki: PKI, viewer: str, certname: str | None = None) -> list[dict]:
    path = "/api/v1/reports" + (f"?certname={certname}" if certname else "")
    answer = await call(daemon, pki, "GET", path, token=viewer)
    assert answer.status == 200, answer.body
    return answer.json()["items"]


async def wait_stored(daemon, pki, viewer, count: int, certname: str | None = None) -> list[dict]:
    deadline = time.monotonic() + 15
    while True:
        items = await stored(daemon, pki, viewer, certname)
        if len(items) >= count:
            assert len(items) == count, items
            return items
        assert time.monotonic() < deadline, f"{len(items)} of {count} reports stored"
        await asyncio.sleep(0.05)


def assert_puppet_forbidden(answer: Answer) -> None:
    assert answer.status == 403, answer.body
    assert answer.content_type == "application/json"
    body = answer.json()
    assert set(body) == {"message", "issue_kind"}
    assert body["issue_kind"] == "FORBIDDEN"
    assert body["message"].startswith("Forbidden request: /")


async def test_node_submits_its_own_report(daemon, pki):
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab", body=changes())
    assert answer.status == 200, answer.body
    assert answer.content_type == "application/json"
    assert answer.json() == ["store"]

    # Path A with the node's own certificate: the body's host is the node
    answer = await call(
        daemon, pki, "POST", "/puppet/v3/report", cert="lab", body=YAML, content_type=YAML_TYPE
    )
    assert answer.status == 200, answer.body
    assert answer.json() == ["store"]

    viewer = await create_token(daemon, "viewer", "view_reports")
    items = await wait_stored(daemon, pki, viewer, 2, SAMPLE_CERTNAME)
    assert {item["transaction_uuid"] for item in items} == {CHANGES_UUID.decode(), YAML_UUID}
    assert all(item["certname"] == SAMPLE_CERTNAME for item in items)
    assert all(item["url"].startswith(f"https://127.0.0.1:{daemon.port}/api/v1/reports/") for item in items)
    # the links name the TLS listener, whatever Host the client sends
    answer = await call(daemon, pki, "GET", "/api/v1/reports", token=viewer, headers={"Host": "evil.example"})
    assert [item["url"] for item in answer.json()["items"]] == [item["url"] for item in items]

    # a node certificate uploads; it does not read
    answer = await call(daemon, pki, "GET", "/api/v1/reports", cert="lab")
    assert answer.status == 403
    assert answer.json() == {
        "error": {"message": "Access denied", "details": {"missing_permissions": ["view_reports"]}}
    }


async def test_certname_is_the_cn_alone(daemon, pki):
    alias_path = f"/puppet/v3/report/{ALIAS}?environment=production"
    alias_report = changes(host=ALIAS)
    # CN lab-agent, SAN alias: lab-agent's certificate, not alias's
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab-cn", body=changes())
    assert answer.status == 200, answer.body
    assert_puppet_forbidden(await call(daemon, pki, "PUT", alias_path, cert="lab-cn", body=alias_report))
    # CN alias, SAN lab-agent: alias's certificate; the SAN does not make it lab-agent's
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab-san", body=changes(str(uuid.uuid4())))
    assert_puppet_forbidden(answer)
    answer = await call(
        daemon, pki, "POST", "/puppet/v3/report", cert="lab-san", body=changes(str(uuid.uuid4()))
    )
    assert_puppet_forbidden(answer)
    answer = await call(daemon, pki, "PUT", alias_path, cert="lab-san", body=alias_report)
    assert answer.status == 200, answer.body

    viewer = await create_token(daemon, "viewer", "view_reports")
    items = await wait_stored(daemon, pki, viewer, 2)
    assert sorted(item["certname"] for item in items) == [ALIAS, SAMPLE_CERTNAME]


async def test_dns_sans_name_a_node_only_when_configured(daemon_factory, tmp_path, pki):
    ini = tls_ini(tmp_path, pki).replace("[reportd]\n", "[reportd]\nnode_names_from_san = true\n", 1)
    daemon = daemon_factory(ini, scheme="https").start()
    alias_path = f"/puppet/v3/report/{ALIAS}?environment=production"
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab-san", body=changes())
    assert answer.status == 200, answer.body
    answer = await call(daemon, pki, "PUT", alias_path, cert="lab-san", body=changes(host=ALIAS))
    assert answer.status == 200, answer.body
    # lab-agent's own certificate has no alias SAN; a SAN naming the forwarder makes no forwarder
    answer = await call(daemon, pki, "PUT", alias_path, cert="lab", body=changes(str(uuid.uuid4()), ALIAS))
    assert_puppet_forbidden(answer)
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="sneaky", body=changes(str(uuid.uuid4())))
    assert_puppet_forbidden(answer)


def ingest_requests(certname: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """One upload for ``certname`` on every ingest route, each a new run: (method, path, body, headers)."""

    def fresh() -> str:
        return str(uuid.uuid4())

    json_type: dict[str, str] = {}  # call() sends the body as application/json
    chef = {"X-Ops-Reporting-Protocol-Version": "0.1.0"}
    runs = f"/organizations/acme/reports/nodes/{certname}/runs"
    put = f"/puppet/v3/report/{certname}?environment=production"
    requests = [
        ("PUT", put, changes(fresh(), certname), json_type),
        ("POST", "/puppet/v3/report", changes(fresh(), certname), json_type),
        ("POST", "/reports/upload", changes(fresh(), certname), json_type),
    ]
    foreman_paths = ("/api/reports", "/api/v2/reports", "/api/config_reports", "/api/v2/config_reports")
    for n, path in enumerate(foreman_paths):
        for prefix in ("", "/"):
            reported_at = f"2026-11-23 10:{n:02d}:{len(prefix):02d} UTC"
            requests.append(("POST", prefix + path, foreman_body(certname, reported_at), json_type))
    start = orjson.dumps({"action": "start", "run_id": fresh(), "start_time": "2026-11-23 10:00:00 +0000"})
    requests.append(("POST", runs, start, chef))
    end_id = fresh()
    requests.append(("POST", f"{runs}/{end_id}", chef_end(end_id), chef))
    for path in ("/data-collector/v0/", "/data-collector/v0"):
        run_id = fresh()
        message = {"message_type": "run_start", "node_name": certname, "run_id": run_id, "id": run_id,
                   "start_time": "2026-11-23T10:00:00Z"}  # fmt: skip
        requests.append(("POST", path, orjson.dumps(message), json_type))
    return requests


async def test_a_san_naming_a_forwarder_makes_no_forwarder_on_any_route(daemon, pki):
    requests = ingest_requests(OTHER)
    assert len({(method, path.split("?")[0]) for method, path, _, _ in requests}) == 15
    for method, path, body, headers in requests:
        answer = await call(daemon, pki, method, path, cert="sneaky", body=body, headers=headers)
        assert answer.status == 403, (path, answer.status, answer.body)
    # the same uploads from the forwarder itself are accepted: only the certificate made the difference
    for method, path, body, headers in ingest_requests(OTHER):
        answer = await call(daemon, pki, method, path, cert="forwarder", body=body, headers=headers)
        assert answer.status in (200, 201), (path, answer.status, answer.body)
    viewer = await create_token(daemon, "viewer", "view_reports")
    # 3 Puppet, 8 Foreman, 1 Chef end, and the forwarder's alone
    assert len(await wait_stored(daemon, pki, viewer, 12)) == 12


async def test_other_node_may_not_submit_for_lab_agent(daemon, pki):
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="other", body=changes())
    assert_puppet_forbidden(answer)
    assert answer.json()["message"] == f"Forbidden request: /puppet/v3/report/{SAMPLE_CERTNAME} (method PUT)"

    for path in ("/puppet/v3/report", "/reports/upload"):
        answer = await call(daemon, pki, "POST", path, cert="other", body=YAML, content_type=YAML_TYPE)
        assert_puppet_forbidden(answer)
        answer = await call(daemon, pki, "POST", path, cert="other", body=changes(str(uuid.uuid4())))
        assert_puppet_forbidden(answer)

    # its own name in the path, lab-agent's report in the body: refused too
    other_path = f"/puppet/v3/report/{OTHER}?environment=production"
    answer = await call(daemon, pki, "PUT", other_path, cert="other", body=changes())
    assert answer.status == 400
    assert answer.json()["issue_kind"] == "REPORT_HOST_MISMATCH"

    # its own report is fine; once that one is stored, the refused ones would be too
    answer = await call(daemon, pki, "PUT", other_path, cert="other", body=changes(host=OTHER))
    assert answer.status == 200, answer.body
    viewer = await create_token(daemon, "viewer", "view_reports")
    items = await wait_stored(daemon, pki, viewer, 1)
    assert [item["certname"] for item in items] == [OTHER]
    assert await stored(daemon, pki, viewer, SAMPLE_CERTNAME) == []

    header, *listing = (await cli(daemon, "reports")).splitlines()
    assert header.startswith("ID  RUN TIME")
    assert len(listing) == 1
    assert listing[0].endswith(f" {OTHER}")
    assert await cli(daemon, "reports", "--certname", SAMPLE_CERTNAME) == ""


async def test_forwarder_submits_for_any_node(daemon, pki):
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="forwarder", body=changes())
    assert answer.status == 200, answer.body
    assert answer.content_type == "application/json"
    assert answer.json() == ["store"]
    answer = await call(
        daemon, pki, "POST", "/reports/upload", cert="forwarder", body=YAML, content_type=YAML_TYPE
    )
    assert answer.status == 200, answer.body
    answer = await call(daemon, pki, "POST", "/puppet/v3/report", cert="forwarder", body=changes(host=OTHER))
    assert answer.status == 200, answer.body

    viewer = await create_token(daemon, "viewer", "view_reports")
    items = await wait_stored(daemon, pki, viewer, 3)
    assert sorted(item["certname"] for item in items) == [SAMPLE_CERTNAME, SAMPLE_CERTNAME, OTHER]
    # a forwarder's certificate is for uploading only
    answer = await call(daemon, pki, "GET", "/api/v1/reports", cert="forwarder")
    assert answer.status == 403


async def test_tokens_in_each_header(daemon, pki):
    answer = await call(daemon, pki, "PUT", PUT_PATH, body=changes())
    assert_puppet_forbidden(answer)

    uploader = await create_token(daemon, "uploader", "upload_config_reports")
    run_ids = [str(uuid.uuid4()) for _ in range(3)]
    headers = [
        {"Authorization": f"Bearer {uploader}"},
        {"X-Authentication": uploader},
        basic("foreman", uploader),
    ]
    for run_id, header in zip(run_ids, headers, strict=True):
        answer = await call(daemon, pki, "PUT", PUT_PATH, body=changes(run_id), headers=header)
        assert answer.status == 200, (header, answer.body)
        assert answer.content_type == "application/json"
        assert answer.json() == ["store"]

    viewer = await create_token(daemon, "viewer", "view_reports")
    items = await wait_stored(daemon, pki, viewer, 3, SAMPLE_CERTNAME)
    assert {item["transaction_uuid"] for item in items} == set(run_ids)


async def test_token_permissions_and_revocation(daemon, pki):
    uploader = await create_token(daemon, "uploader", "upload_config_reports")
    answer = await call(daemon, pki, "GET", "/api/v1/reports", token=uploader)
    assert answer.status == 403
    assert answer.content_type == "application/json"
    body = answer.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["details"] == {"missing_permissions": ["view_reports"]}
    answer = await call(daemon, pki, "GET", "/api/v1/reports", headers={"X-Authentication": uploader})
    assert answer.status == 403

    viewer = await create_token(daemon, "viewer", "view_reports")
    answer = await call(daemon, pki, "PUT", PUT_PATH, token=viewer, body=changes())
    assert_puppet_forbidden(answer)
    assert await stored(daemon, pki, viewer) == []

    answer = await call(daemon, pki, "PUT", PUT_PATH, token=uploader, body=changes())
    assert answer.status == 200
    assert (await cli(daemon, "token", "revoke", "uploader")).strip() == "revoked uploader"
    revoked_at = time.monotonic()
    while True:
        # the same report again: a duplicate while the token still works, so nothing piles up
        answer = await call(daemon, pki, "PUT", PUT_PATH, token=uploader, body=changes())
        if answer.status == 403:
            break
        assert answer.status == 200, answer.body
        assert time.monotonic() - revoked_at < 6.5, "revoked token still accepted after 6.5 s"
        await asyncio.sleep(0.2)
    assert_puppet_forbidden(answer)
    for header in ({"X-Authentication": uploader}, basic("x", uploader)):
        answer = await call(daemon, pki, "PUT", PUT_PATH, headers=header, body=changes(str(uuid.uuid4())))
        assert answer.status == 403
    # the other token still works, and only the one report was stored
    assert len(await wait_stored(daemon, pki, viewer, 1)) == 1


async def test_wrong_token_is_refused(daemon, pki):
    await create_token(daemon, "uploader", "upload_config_reports", "view_reports")
    for headers in (
        {"X-Authentication": "rpd_not-a-real-token"},
        {"Authorization": "Bearer rpd_not-a-real-token"},
        basic("admin", "rpd_not-a-real-token"),
        {"Authorization": "Basic !!!not-base64"},
    ):
        answer = await call(daemon, pki, "PUT", PUT_PATH, headers=headers, body=changes())
        assert_puppet_forbidden(answer)
        answer = await call(daemon, pki, "GET", "/api/v1/reports", headers=headers)
        assert answer.status == 403
        assert answer.json()["error"]["details"] == {"missing_permissions": ["view_reports"]}


async def test_client_certificate_from_another_ca_cannot_connect(daemon, pki):
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await call(daemon, pki, "PUT", PUT_PATH, cert="rogue", body=changes())
    # the same request with the node's real certificate goes through
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab", body=changes())
    assert answer.status == 200


async def test_system_trust_store_does_not_authenticate_nodes(daemon_factory, tmp_path, pki, monkeypatch):
    # Only tls_ca signs node certificates. A CA the system trusts (a distribution's
    # bundle: here the one OpenSSL is pointed at with SSL_CERT_FILE) must not make
    # its certificates nodes or forwarders.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.parent / "rogue-ca.pem"))
    daemon = daemon_factory(tls_ini(tmp_path, pki), scheme="https").start()
    try:
        answer = await call(daemon, pki, "PUT", PUT_PATH, cert="rogue", body=changes())
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
        pass  # refused at the handshake: right
    else:
        assert answer.status == 403, (
            f"a certificate from a CA other than tls_ca was accepted: {answer.status}"
        )
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab", body=changes())
    assert answer.status == 200


# -- revoked certificates (tls_crl) ------------------------------------------------------------


def write_crl(pki: PKI, path: Path, *revoked: str, atomically: bool = False) -> None:
    """A CRL of the test CA revoking the named leaves, written over ``path`` as the Puppet CA does
    (or by a rename when ``atomically``)."""
    key = serialization.load_pem_private_key(pki.authority.private_key_pem.bytes(), None)
    issuer = x509.load_pem_x509_certificate(pki.authority.cert_pem.bytes())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now - timedelta(minutes=5))
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(int(time.time() * 1000)), critical=False)
    )
    for name in revoked:
        serial = x509.load_pem_x509_certificate(pki.leaves[name].cert_chain_pems[0].bytes()).serial_number
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        builder = builder.add_revoked_certificate(entry)
    pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    if atomically:
        path.with_suffix(".new").write_bytes(pem)
        path.with_suffix(".new").replace(path)
    else:
        path.write_bytes(pem)


def doomed_report(run_id: str | None = None) -> tuple[str, bytes]:
    return f"/puppet/v3/report/{DOOMED}?environment=production", changes(run_id or str(uuid.uuid4()), DOOMED)


async def assert_refused_at_handshake(daemon: Daemon, pki: PKI, cert: str, sni: str | None = None) -> None:
    path, body = doomed_report()
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        answer = await call(daemon, pki, "PUT", path, cert=cert, body=body, sni=sni)
        pytest.fail(f"{cert} got an answer: {answer}")


async def test_a_revoked_certificate_is_refused_without_a_restart(daemon_factory, tmp_path, pki):
    crl = tmp_path / "crl.pem"
    write_crl(pki, crl)
    daemon = daemon_factory(tls_ini(tmp_path, pki, f"tls_crl = {crl}\n"), scheme="https").start()
    path, body = doomed_report()
    assert (await call(daemon, pki, "PUT", path, cert="doomed", body=body)).status == 200
    assert (await call(daemon, pki, "PUT", PUT_PATH, cert="lab", body=changes())).status == 200

    write_crl(pki, crl, "doomed")
    # the next connection is refused, whether the client names the server (SNI) or not
    await assert_refused_at_handshake(daemon, pki, "doomed")
    await assert_refused_at_handshake(daemon, pki, "doomed", sni="localhost")
    for sni in (None, "localhost"):
        answer = await call(
            daemon, pki, "PUT", PUT_PATH, cert="lab", body=changes(str(uuid.uuid4())), sni=sni
        )
        assert answer.status == 200, answer.body
    # clients without a certificate are not affected
    uploader = await create_token(daemon, "uploader", "upload_config_reports")
    answer = await call(daemon, pki, "PUT", PUT_PATH, token=uploader, body=changes(str(uuid.uuid4())))
    assert answer.status == 200, answer.body

    # a CRL that cannot be read is reported, and the last good one stays in force
    crl.write_text("-----BEGIN X509 CRL-----\ntruncated\n")
    await assert_refused_at_handshake(daemon, pki, "doomed")
    answer = await call(daemon, pki, "PUT", PUT_PATH, cert="lab", body=changes(str(uuid.uuid4())))
    assert answer.status == 200, answer.body
    assert daemon.log_path.read_text().count('"event": "tls_crl_unreadable"') == 1

    # a CRL put in place by a rename is read too (here, one that lifts the revocation)
    write_crl(pki, crl, atomically=True)
    path, body = doomed_report()
    assert (await call(daemon, pki, "PUT", path, cert="doomed", body=body)).status == 200
    assert daemon.process.poll() is None  # one process throughout

    viewer = await create_token(daemon, "viewer", "view_reports")
    items = await wait_stored(daemon, pki, viewer, 7)
    assert sorted(item["certname"] for item in items) == [DOOMED] * 2 + [SAMPLE_CERTNAME] * 5


async def test_a_connection_open_before_the_revocation_is_closed_after_its_next_answer(
    daemon_factory, tmp_path, pki
):
    crl = tmp_path / "crl.pem"
    write_crl(pki, crl)
    daemon = daemon_factory(tls_ini(tmp_path, pki, f"tls_crl = {crl}\n"), scheme="https").start()
    async with aiohttp.ClientSession() as session:

        async def put() -> aiohttp.ClientResponse:
            path, body = doomed_report()
            headers = {"Content-Type": "application/json"}
            async with session.put(
                daemon.url + path, data=body, headers=headers, ssl=pki.clients["doomed"]
            ) as r:
                await r.read()
                return r

        first = await put()
        assert first.status == 200 and first.headers.get("Connection", "").lower() != "close"
        write_crl(pki, crl, "doomed")
        # still the connection set up before the revocation: answered, and closed
        second = await put()
        assert second.status == 200 and second.headers.get("Connection", "").lower() == "close"
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await put()


def healthz_over(port: int, context: ssl.SSLContext, session: ssl.SSLSession | None):
    """One GET /healthz on a new connection offering ``session``: (status line, session, reused)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        return answer.split(b"\r\n", 1)[0], tls.session, tls.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_revoked_certificate_cannot_resume_an_earlier_session(daemon_factory, tmp_path, pki, version):
    crl = tmp_path / "crl.pem"
    write_crl(pki, crl)
    daemon = daemon_factory(tls_ini(tmp_path, pki, f"tls_crl = {crl}\n"), scheme="https").start()
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.ca.parent / "doomed.pem")
    context.minimum_version = context.maximum_version = version
    status, session, _ = await asyncio.to_thread(healthz_over, daemon.port, context, None)
    assert status == b"HTTP/1.1 200 OK"
    status, session, reused = await asyncio.to_thread(healthz_over, daemon.port, context, session)
    assert (status, reused) == (b"HTTP/1.1 200 OK", True)  # sessions are resumed, so this tests something

    write_crl(pki, crl, "doomed")
    try:
        status, _, reused = await asyncio.to_thread(healthz_over, daemon.port, context, session)
    except (ssl.SSLError, ConnectionError):
        status, reused = None, False
    # refused in the handshake (TLS 1.2), or right after it, without an answer (TLS 1.3)
    assert (status, reused) in ((None, False), (b"", False))


async def test_a_bad_crl_stops_the_start(daemon_factory, tmp_path, pki):
    # a certificate where the CRL should be: nothing would ever be revoked
    daemon = daemon_factory(tls_ini(tmp_path, pki, f"tls_crl = {pki.ca}\n"), scheme="https")
    with pytest.raises(RuntimeError, match=r"tls_crl .*ca\.pem: no CRL in it"):
        daemon.start()
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a CRL\n")
    daemon = daemon_factory(tls_ini(tmp_path, pki, f"tls_crl = {garbage}\n"), scheme="https", name="again")
    with pytest.raises(RuntimeError, match=r"tls_crl .*garbage\.pem: not a PEM CRL"):
        daemon.start()
    with pytest.raises(ConfigError, match=r"\[reportd\] tls_crl: needs tls_ca"):
        load_config_string(f"[reportd]\ntls_crl = {garbage}\n")


async def test_plain_http_is_not_served(daemon):
    with pytest.raises(aiohttp.ClientError):
        async with (
            aiohttp.ClientSession() as session,
            session.get(daemon.url.replace("https://", "http://") + "/healthz") as response,
        ):
            await response.read()


async def test_cli_send_with_client_certificate_and_token(daemon, pki, tmp_path):
    lab_pem, other_pem = str(pki.ca.parent / "lab.pem"), str(pki.ca.parent / "other.pem")
    report = tmp_path / "report.json"
    report.write_bytes(changes(str(uuid.uuid4())))
    tls = ["--url", daemon.url, "--cacert", str(pki.ca)]

    result = await asyncio.to_thread(
        daemon.cli, "send", str(report), *tls, "--cert", lab_pem, "--key", lab_pem
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f'{report}: 200 ["store"]\n'

    result = await asyncio.to_thread(daemon.cli, "send", str(report), *tls, "--cert", other_pem)
    assert result.returncode == 1
    assert f"{report}: 403 " in result.stderr and '"issue_kind":"FORBIDDEN"' in result.stderr

    result = await asyncio.to_thread(daemon.cli, "send", str(report), *tls)
    assert result.returncode == 1
    assert f"{report}: 403 " in result.stderr

    uploader = await create_token(daemon, "uploader", "upload_config_reports")
    yaml_file = tmp_path / "report.yaml"
    yaml_file.write_bytes(YAML)
    result = await asyncio.to_thread(daemon.cli, "send", str(yaml_file), *tls, "--token", uploader)
    assert result.returncode == 0, result.stderr

    # without the CA the daemon's certificate is not trusted
    result = await asyncio.to_thread(
        daemon.cli, "send", str(report), "--url", daemon.url, "--token", uploader
    )
    assert result.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr

    viewer = await create_token(daemon, "viewer", "view_reports")
    assert len(await wait_stored(daemon, pki, viewer, 2, SAMPLE_CERTNAME)) == 2


# -- the same node rule for Foreman-style and Chef uploads -------------------------------------


def foreman_body(host: str, reported_at: str = "2026-11-23 10:00:00 UTC") -> bytes:
    return orjson.dumps({"config_report": {
        "host": host, "reported_at": reported_at, "status": {"applied": 1},
        "metrics": {}, "logs": []}})  # fmt: skip


def chef_end(run_id: str) -> bytes:
    return orjson.dumps({
        "action": "end", "run_id": run_id, "status": "success", "start_time": "2026-11-23 10:00:00 +0000",
        "end_time": "2026-11-23 10:01:00 +0000", "run_list": "[]", "total_res_count": "0", "resources": [],
        "data": {}})  # fmt: skip


async def test_foreman_upload_follows_the_node_rule(daemon, pki):
    answer = await call(daemon, pki, "POST", "/api/config_reports", body=foreman_body(OTHER), cert="lab")
    assert answer.status == 403
    assert answer.json()["error"]["message"] == "Access denied"
    answer = await call(
        daemon, pki, "POST", "/api/config_reports", body=foreman_body(SAMPLE_CERTNAME), cert="lab"
    )
    assert answer.status == 201, answer.body
    answer = await call(
        daemon, pki, "POST", "/api/config_reports", body=foreman_body(OTHER), cert="forwarder"
    )
    assert answer.status == 201, answer.body
    # nobody at all: Foreman's own 403, to the letter
    answer = await call(daemon, pki, "POST", "/api/config_reports", body=foreman_body(OTHER))
    assert answer.status == 403
    assert answer.json() == {"error": {
        "message": "Access denied",
        "details": "Missing one of the required permissions: upload_config_reports",
        "missing_permissions": ["upload_config_reports"]}}  # fmt: skip


async def test_chef_upload_follows_the_node_rule(daemon, pki):
    headers = {"X-Ops-Reporting-Protocol-Version": "0.1.0"}
    run_id = str(uuid.uuid4())
    path = f"/organizations/acme/reports/nodes/{OTHER}/runs/{run_id}"
    answer = await call(daemon, pki, "POST", path, body=chef_end(run_id), cert="lab", headers=headers)
    assert answer.status == 403
    assert isinstance(answer.json()["error"], list)
    path = f"/organizations/acme/reports/nodes/{SAMPLE_CERTNAME}/runs/{run_id}"
    answer = await call(daemon, pki, "POST", path, body=chef_end(run_id), cert="lab", headers=headers)
    assert (answer.status, answer.json()) == (201, {})


def test_a_certificate_names_one_certname_by_its_cn():
    def subject(*cns: str) -> dict:
        return {"subject": ((("countryName", "IT"),), *((("commonName", cn),) for cn in cns)),
                "subjectAltName": (("DNS", "san.example.test"), ("IP Address", "10.0.0.1"))}  # fmt: skip

    assert certificate_certname(subject("node.example.test")) == "node.example.test"
    assert certificate_san_names(subject("node.example.test")) == frozenset({"san.example.test"})
    # no CN, or two: no certname rather than a guess
    assert certificate_certname(subject()) is None
    assert certificate_certname(subject("a.example.test", "b.example.test")) is None
    assert certificate_certname(None) is None and certificate_certname({}) is None
