"""What a secured local broker needs: certificates, SCRAM users and ACLs.

Production Kafka clusters run SASL_SSL or mutual TLS with an authorizer, so the
harness can start one (``LocalKafkaCluster(security=BrokerSecurity(...))``):

- a CA made for the run signs the broker's certificate (SAN 127.0.0.1) and one
  client certificate per user (CN = user name, so a user is the same principal
  over SCRAM and over mTLS); a second, unrelated CA stands for "a broker we do
  not trust";
- SCRAM-SHA-512 credentials are written by ``kafka-storage format --add-scram``;
- ACLs are created with a CreateAcls request on the harness's own PLAINTEXT
  listener, whose ANONYMOUS principal is the harness super user. The bindings are
  read from ``kafka-acls.sh`` command lines (those of docs/deploy.md), so the
  tests run with exactly the documented permissions.

Certificates need the ``cryptography`` package (a dev dependency), imported only
when a secured broker is asked for.
"""

from __future__ import annotations

import datetime
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRAM_MECHANISM = "SCRAM-SHA-512"
#: Principal of the harness's PLAINTEXT listener (and of the controllers): the super user.
HARNESS_PRINCIPAL = "User:ANONYMOUS"


class AclError(RuntimeError):
    """The broker refused an ACL, or a kafka-acls.sh line is outside what is parsed."""


# ------------------------------------------------------------------ certificates


class _InDirectory:
    """A file of the run's TLS directory, read as an attribute (`files.ca`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, files: TlsFiles, owner: type | None = None) -> Path:
        return files.directory / self.name


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one run: what the broker loads and what each client gets."""

    directory: Path

    ca = _InDirectory("ca.pem")
    untrusted_ca = _InDirectory("untrusted-ca.pem")
    """A CA that signed nothing of this broker: a client trusting only it must refuse."""
    broker_keystore = _InDirectory("broker-keystore.pem")
    """Key (PKCS#8) and certificate chain in one file: Kafka's PEM keystore."""
    server_cert = _InDirectory("server.crt")
    """The broker's certificate alone, reused by the HTTPS bridge in tests."""
    server_key = _InDirectory("server.key")

    def client_cert(self, user: str) -> Path:
        return self.directory / f"{user}.crt"

    def client_key(self, user: str) -> Path:
        return self.directory / f"{user}.key"


def make_tls_files(directory: Path, users: Iterable[str], host: str = "127.0.0.1") -> TlsFiles:
    """Generate a CA, the broker certificate and one client certificate per user.

    EC P-256 keys: generated in microseconds, where RSA would cost a second per
    user on a loaded test machine; Kafka's PEM keystore and Python's ssl take both.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory)
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def issue(
        ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, server: bool
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("tfstream test CA")
    files.ca.write_bytes(cert_pem(ca_cert))
    files.untrusted_ca.write_bytes(cert_pem(make_ca("someone else's CA")[1]))
    server_key, server_cert = issue(ca_key, ca_cert, "kafka-broker", server=True)
    files.server_key.write_bytes(key_pem(server_key))
    files.server_cert.write_bytes(cert_pem(server_cert))
    files.broker_keystore.write_bytes(key_pem(server_key) + cert_pem(server_cert))
    for user in users:
        user_key, user_cert = issue(ca_key, ca_cert, user, server=False)
        files.client_key(user).write_bytes(key_pem(user_key))
        files.client_cert(user).write_bytes(cert_pem(user_cert))
    return files


# ------------------------------------------------------------------ broker config


@dataclass
class BrokerSecurity:
    """Turns on the SASL_SSL (SCRAM-SHA-512) and SSL (client certificates) listeners
    and the StandardAuthorizer. `users` maps user names to SCRAM passwords; each
    user also gets a client certificate."""

    users: Mapping[str, str]
    tls: TlsFiles | None = field(default=None, init=False)

    def prepare(self, directory: Path) -> TlsFiles:
        self.tls = make_tls_files(directory, self.users)
        return self.tls

    def format_args(self) -> list[str]:
        """`kafka-storage format` options that store every user's SCRAM credential."""
        args: list[str] = []
        for user, password in self.users.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
        return args

    def server_properties(self) -> dict[str, str]:
        assert self.tls is not None, "prepare() first"
        return {
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": HARNESS_PRINCIPAL,
            "allow.everyone.if.no.acl.found": "false",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca),
            "listener.name.ssl.ssl.client.auth": "required",
            # CN=worker -> User:worker: one principal per user, over SCRAM and mTLS alike.
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+)$/$1/,DEFAULT",
        }


# --------------------------------------------------------------------------- ACLs

#: The operations kafka-acls.sh's --operation takes (and the documentation uses).
_OPERATIONS = frozenset(
    {
        "All",
        "Read",
        "Write",
        "Create",
        "Delete",
        "Alter",
        "Describe",
        "ClusterAction",
        "DescribeConfigs",
        "AlterConfigs",
        "IdempotentWrite",
    }
)


@dataclass(frozen=True)
class AclBinding:
    principal: str
    resource_type: str
    resource_name: str
    pattern_type: str
    operation: str
    host: str = "*"


def parse_acl_commands(
    text: str, substitutions: Mapping[str, str], principals: Mapping[str, str] | None = None
) -> list[AclBinding]:
    """The bindings of every `kafka-acls.sh ... --add` line in `text`.

    `substitutions` fills shell variables ("$PREFIX" -> "t1234"); `principals`
    renames principals ("User:tfstream-worker" -> "User:w1"), so one documented
    set of commands can be granted to several test users. Only the options the
    documentation uses are understood; anything else is an error rather than a
    silently different grant.
    """
    bindings: list[AclBinding] = []
    for line in _command_lines(text):
        for variable, value in substitutions.items():
            line = line.replace(variable, value)
        words = shlex.split(line)
        if "--add" not in words:
            continue
        principal_list: list[str] = []
        operations: list[str] = []
        resources: list[tuple[str, str]] = []
        pattern = "literal"
        host = "*"
        i = 1
        while i < len(words):
            word = words[i]
            value = words[i + 1] if i + 1 < len(words) else ""
            if word == "--add":
                i += 1
                continue
            if word in ("--bootstrap-server", "--command-config"):
                pass
            elif word == "--allow-principal":
                principal_list.append((principals or {}).get(value, value))
            elif word == "--operation":
                if value not in _OPERATIONS:
                    raise AclError(f"unknown operation {value!r} in: {line}")
                operations.append(value)
            elif word in ("--topic", "--group", "--transactional-id"):
                resources.append((word[2:], value))
            elif word == "--cluster":
                resources.append(("cluster", "kafka-cluster"))
                i += 1
                continue
            elif word == "--resource-pattern-type":
                pattern = value
            elif word == "--allow-host":
                host = value
            else:
                raise AclError(f"option {word!r} is not understood in: {line}")
            i += 2
        if not (principal_list and operations and resources):
            raise AclError(f"incomplete kafka-acls.sh command: {line}")
        bindings += [
            AclBinding(p, kind, name, pattern, op, host)
            for p in principal_list
            for kind, name in resources
            for op in operations
        ]
    return bindings


def _command_lines(text: str) -> list[str]:
    """kafka-acls.sh commands, with backslash continuations joined."""
    joined = text.replace("\\\n", " ")
    return [
        line.strip() for line in joined.splitlines() if line.strip().startswith("kafka-acls.sh")
    ]


def _admin_binding(b: AclBinding) -> Any:
    from confluent_kafka.admin import (
        AclBinding as AdminBinding,
    )
    from confluent_kafka.admin import (
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    # kafka-acls.sh's --cluster is the resource librdkafka calls BROKER.
    kind = "BROKER" if b.resource_type == "cluster" else b.resource_type.upper().replace("-", "_")
    operation = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", b.operation).upper()  # IdempotentWrite
    return AdminBinding(
        ResourceType[kind],
        b.resource_name,
        ResourcePatternType[b.pattern_type.upper()],
        b.principal,
        b.host,
        AclOperation[operation],
        AclPermissionType.ALLOW,
    )


def create_acls(
    host: str, port: int, bindings: Sequence[AclBinding], timeout_s: float = 10
) -> None:
    """CreateAcls through confluent-kafka's AdminClient (the dev extra), on a listener
    where the caller is a super user: milliseconds per role, not a JVM per
    kafka-acls.sh line. Returns once the broker's authorizer applies them all."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "client.id": "tfstream-acls"})
    wanted = [_admin_binding(b) for b in bindings]
    problems = []
    for binding, future in admin.create_acls(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            problems.append(f"{binding}: {exc}")
    if problems:
        raise AclError("; ".join(problems))
    _wait_in_force(admin, wanted, timeout_s)


def _wait_in_force(admin: Any, wanted: Sequence[Any], timeout_s: float) -> None:
    """CreateAcls answers once the controller has the ACLs; a broker's authorizer applies
    them a moment later. DescribeAcls reads that authorizer, so wait until it lists them all."""
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    everything = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        None,
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        described = set(admin.describe_acls(everything, request_timeout=timeout_s).result())
        missing = set(wanted) - described
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AclError(f"ACLs not in force after {timeout_s}s: {sorted(map(str, missing))}")
        time.sleep(0.05)


def client_env(
    bootstrap: str,
    tls: TlsFiles,
    user: str,
    protocol: str,
    password_file: Path | None = None,
) -> dict[str, str]:
    """TFSTREAM_* variables for a tfstream process connecting as `user`.

    SASL_SSL: SCRAM-SHA-512 with the password read from `password_file` (never
    from the environment or the command line, where `ps` shows it); SSL: the
    user's client certificate.
    """
    env = {
        "TFSTREAM_BOOTSTRAP": bootstrap,
        "TFSTREAM_SECURITY_PROTOCOL": protocol,
        "TFSTREAM_SSL_CAFILE": str(tls.ca),
    }
    if protocol == "SASL_SSL":
        assert password_file is not None, "SASL_SSL needs the password file"
        env.update(
            TFSTREAM_SASL_MECHANISM=SCRAM_MECHANISM,
            TFSTREAM_SASL_USERNAME=user,
            TFSTREAM_SASL_PASSWORD_FILE=str(password_file),
        )
    else:
        env.update(
            TFSTREAM_SSL_CERTFILE=str(tls.client_cert(user)),
            TFSTREAM_SSL_KEYFILE=str(tls.client_key(user)),
        )
    return env
