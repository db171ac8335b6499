"""A Kafka broker as production NREN clusters run it: a SASL_SSL listener only (SCRAM-SHA-512 users
created when the storage is formatted, TLS certificate from a CA this fixture makes with openssl) and
the StandardAuthorizer with ACLs that give each Shoal role only its topics, groups and transactional
ids. Loopback only; the KRaft controller listener stays on plaintext loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from demo_reference import free_port

ROOT = Path(__file__).resolve().parents[2]
LIBS = Path(os.environ.get("SHOAL_CACHE", Path.home() / ".cache" / "shoal")) / "kafka-3.9.1" / "libs"
ROLES = ("admin", "collector", "worker", "intel")


@dataclass
class SecureBroker:
    state: Path
    topics: dict[str, str]
    """Role names of the topics (flows, alerts, indicators, partials...) -> topic names."""
    group: str
    passwords: dict[str, str] = field(default_factory=lambda: {r: secrets.token_urlsafe(12) for r in ROLES})
    bootstrap: str = ""
    _proc: subprocess.Popen | None = None

    @property
    def ca(self) -> Path:
        return self.state / "ca.crt"

    def env(self, role: str, password: str | None = None) -> dict[str, str]:
        """librdkafka settings for ``role`` as SHOAL_KAFKA_* variables (how the chart passes them)."""
        return {
            "SHOAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "SHOAL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "SHOAL_KAFKA_SASL_USERNAME": role,
            "SHOAL_KAFKA_SASL_PASSWORD": self.passwords[role] if password is None else password,
            "SHOAL_KAFKA_SSL_CA_LOCATION": str(self.ca),
        }

    def client(self, role: str = "admin") -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap, "log_level": 0,
                **{k[len("SHOAL_KAFKA_"):].lower().replace("_", "."): v for k, v in self.env(role).items()}}  # fmt: skip

    def start(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), "fetch"], check=True, timeout=600)
        self.state.mkdir(parents=True, exist_ok=True)
        self._certificates()
        port, cport = free_port(), free_port()
        while cport == port:
            cport = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        admin_jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
                      f'password="{self.passwords["admin"]}";')  # fmt: skip
        props = self.state / "server.properties"
        props.write_text(f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cport}
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={admin_jaas}
ssl.keystore.type=PEM
ssl.keystore.location={self.state / "broker.pem"}
ssl.truststore.type=PEM
ssl.truststore.location={self.ca}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:ANONYMOUS
log.dirs={self.state / "data"}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
""")
        log4j = self.state / "log4j.properties"
        log4j.write_text("log4j.rootLogger=WARN, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
                         "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n")  # fmt: skip
        java = ["java", f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{LIBS}/*"]
        cluster = subprocess.run([*java, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True,
                                 check=True, timeout=120).stdout.split()[-1]  # fmt: skip
        scram = [
            a
            for role in ROLES
            for a in ("--add-scram", f"SCRAM-SHA-512=[name={role},password={self.passwords[role]}]")
        ]
        subprocess.run([*java, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(props), *scram],
                       capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
        log = (self.state / "broker.log").open("ab")
        self._proc = subprocess.Popen([*java[:1], "-Xms256m", "-Xmx1g", *java[1:], "kafka.Kafka", str(props)],
                                      stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        admin = AdminClient(self.client())
        deadline = time.monotonic() + 90
        while True:
            try:
                if admin.list_topics(timeout=2).brokers:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"secure broker did not start: {(self.state / 'broker.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        self._acls(admin)

    def _certificates(self) -> None:
        s = self.state

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=s, capture_output=True, check=True, timeout=60)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                "-subj", "/CN=Shoal test CA")  # fmt: skip
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr", "-subj",
                "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")  # fmt: skip
        openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
                "broker.crt", "-days", "2", "-copy_extensions", "copy")  # fmt: skip
        (s / "broker.pem").write_text((s / "broker.key").read_text() + (s / "broker.crt").read_text())

    def _acls(self, admin: AdminClient) -> None:
        """collector: write flows; worker: read flows, its group, write alerts and partials, its
        transactional ids, read indicators; intel: read and write indicators (docs/kafka.md lists the same). Nothing else
        (no topic creation: that is the admin's)."""
        t, lit, pre = self.topics, ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
        rules = [
            ("collector", ResourceType.TOPIC, t["flows"], lit, [AclOperation.WRITE, AclOperation.DESCRIBE]),
            ("worker", ResourceType.TOPIC, t["flows"], lit, [AclOperation.READ, AclOperation.DESCRIBE]),
            ("worker", ResourceType.GROUP, self.group, lit, [AclOperation.READ]),
            ("worker", ResourceType.TOPIC, t["alerts"], lit, [AclOperation.WRITE, AclOperation.DESCRIBE]),
            ("worker", ResourceType.TOPIC, t["partials"], lit, [AclOperation.WRITE, AclOperation.DESCRIBE]),
            ("worker", ResourceType.TRANSACTIONAL_ID, f"shoal-detect.{self.group}.", pre,
             [AclOperation.WRITE, AclOperation.DESCRIBE]),
            ("worker", ResourceType.TOPIC, t["indicators"], lit, [AclOperation.READ, AclOperation.DESCRIBE]),
            ("intel", ResourceType.TOPIC, t["indicators"], lit,
             [AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE]),
        ]  # fmt: skip
        bindings = [AclBinding(rtype, name, pattern, f"User:{role}", "*", op, AclPermissionType.ALLOW)
                    for role, rtype, name, pattern, ops in rules for op in ops]  # fmt: skip
        for future in admin.create_acls(bindings, request_timeout=30).values():
            future.result()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.state / "data", ignore_errors=True)
