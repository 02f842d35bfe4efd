"""A real single-node Apache Kafka broker (KRaft, combined broker + controller).

The jars come from Maven Central through a small pom kept in the project and are
cached in the state directory; the broker runs as a detached JVM with its log,
data and pid file under the same directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.stack.process import (
    StackError,
    ensure_port_free,
    log_tail,
    read_pid,
    spawn,
    stop_pid,
    wait_until,
)

POM = "kafka-pom.xml"

LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
logger.server.name = kafka.server.KafkaServer
logger.server.level = INFO
logger.raft.name = kafka.server.BrokerServer
logger.raft.level = INFO
"""


@dataclass(frozen=True)
class EmbeddedKafka:
    state_dir: Path
    port: int

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def home(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def jars(self) -> Path:
        return self.state_dir / "kafka-jars"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "kafka.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    # -- jars -------------------------------------------------------------------------

    def pom_text(self) -> str:
        return resources.files("pipeline.stack").joinpath(POM).read_text()

    def pinned_version(self) -> str:
        match = re.search(r"<kafka.version>([^<]+)</kafka.version>", self.pom_text())
        return match.group(1) if match else "unknown"

    def fetch_jars(self) -> bool:
        """Resolve the broker's jars once; returns True when Maven ran."""
        pom = self.pom_text()
        stamp = self.jars / ".pom-sha256"
        digest = hashlib.sha256(pom.encode()).hexdigest()
        if stamp.is_file() and stamp.read_text() == digest and any(self.jars.glob("kafka_*.jar")):
            return False
        if shutil.which("mvn") is None:
            raise StackError("Maven (mvn) is not installed: run scripts/setup.sh first")
        self.jars.mkdir(parents=True, exist_ok=True)
        pom_path = self.state_dir / "kafka-pom.xml"
        pom_path.write_text(pom)
        for old in self.jars.glob("*.jar"):
            old.unlink()
        cmd = [
            "mvn", "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
            f"-DoutputDirectory={self.jars}", "-DincludeScope=runtime",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(
                "Maven could not resolve the Kafka jars:\n"
                + (result.stdout + result.stderr)[-3000:]
            )
        stamp.write_text(digest)
        return True

    def _java(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        if shutil.which("java") is None:
            raise StackError("Java is not installed: run scripts/setup.sh first")
        return subprocess.run(
            ["java", "-cp", f"{self.jars}/*", *args], capture_output=True, text=True, **kw
        )

    # -- lifecycle --------------------------------------------------------------------

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def server_properties(self) -> str:
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self.home / 'data'}",
            "num.partitions=6",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.cleaner.backoff.ms=5000",
            "auto.create.topics.enable=true",
            "",
        ])

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start the broker; returns False when it was already running."""
        if self.pid() is not None:
            return False
        ensure_port_free(self.port, "Kafka", "FXSTREAM_KAFKA_PORT")
        ensure_port_free(self.controller_port, "the Kafka controller", "FXSTREAM_KAFKA_PORT")
        self.fetch_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        props.write_text(self.server_properties())
        log4j = self.home / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log=self.log_file))
        if not (self.home / "data" / "meta.properties").is_file():
            cluster_id = self._java("kafka.tools.StorageTool", "random-uuid").stdout.strip()
            fmt = self._java(
                "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id,
                "-c", str(props),
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {fmt.stdout}{fmt.stderr}")
        heap = os.environ.get("FXSTREAM_KAFKA_HEAP", "1G")
        proc = spawn(
            ["java", f"-Xmx{heap}", "-Xms256m", "-XX:+UseG1GC", "-cp", f"{self.jars}/*",
             f"-Dlog4j2.configurationFile={log4j}", "kafka.Kafka", str(props)],
            self.log_file, self.pid_file,
        )
        wait_until(self.healthy, timeout_s, "Kafka", alive=lambda: proc.poll() is None,
                   log_file=self.log_file)
        return True

    def healthy(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0,
                                 "logger": _QuietLogger()})
            result = admin.describe_cluster(request_timeout=2).result(timeout=3)
            return bool(result.nodes)
        except Exception:
            return False

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        stop_pid(pid, timeout_s=60)
        self.pid_file.unlink(missing_ok=True)
        return True

    def reported_version(self, bootstrap: str | None = None) -> str:
        """The Kafka version as the broker reports it through the admin API (DescribeFeatures)."""
        return describe_broker_version(self, bootstrap or self.bootstrap)


class _QuietLogger:
    """librdkafka logs connection refusals while a broker starts; health polling expects them."""

    def log(self, *args: object, **kw: object) -> None:  # pragma: no cover - trivial
        pass

    def __getattr__(self, name: str) -> object:
        return self.log


def describe_broker_version(kafka: EmbeddedKafka, bootstrap: str) -> str:
    """Ask the broker for its finalized metadata.version and its software version.

    The admin API reports the feature levels the broker runs with; Kafka's own
    FeatureCommand asks for them (DescribeFeatures), and we read the release from
    metadata.version (e.g. 4.1-IV1 for Kafka 4.1).
    """
    if not any(kafka.jars.glob("kafka-tools-*.jar")):
        kafka.fetch_jars()
    result = kafka._java(
        "org.apache.kafka.tools.FeatureCommand", "--bootstrap-server", bootstrap, "describe",
        timeout=60,
    )
    if result.returncode != 0:
        raise StackError(f"the broker at {bootstrap} did not describe its features: "
                         f"{(result.stdout + result.stderr).strip()[-500:]}")
    match = re.search(r"Feature:\s*metadata\.version.*?FinalizedVersionLevel:\s*(\S+)",
                      result.stdout)
    if not match:
        raise StackError(f"no metadata.version in the broker's features: {result.stdout[-500:]}")
    return match.group(1)


__all__ = ["EmbeddedKafka", "describe_broker_version", "log_tail"]
