"""Certificates made for a test with the openssl CLI: a private CA and the certificates it signs.

`openssl ca` rather than `req -x509` because it takes start and end dates, so an expired
certificate needs no clock games.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_CA_CONFIG = """
[ca]
default_ca = test_ca
[test_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[anything]
commonName = supplied
"""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class PrivateCa:
    """A CA of the test's own in `folder`; `issue` signs a certificate for names (DNS: or IP:)."""

    def __init__(self, folder: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("no openssl CLI to make test certificates with (apt-get install openssl)")
        self._openssl = openssl
        self._folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.txt").write_text("")
        (folder / "serial").write_text("1000\n")
        self._config = folder / "ca.cnf"
        self._config.write_text(_CA_CONFIG.format(dir=folder))
        self.cert, self.key = folder / "ca.pem", folder / "ca.key"
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rerank-gateway test CA",
                  "-keyout", str(self.key), "-out", str(self.cert))

    def issue(self, name: str, *alt_names: str, start: str | None = None, end: str | None = None) -> Issued:
        """A certificate for CN=`name` with `alt_names` as subjectAltName; `start`/`end` as YYYYMMDDHHMMSSZ."""
        key, request, cert = (self._folder / f"{name}.{suffix}" for suffix in ("key", "csr", "pem"))
        alt = ",".join(alt_names) or f"DNS:{name}"
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-addext", f"subjectAltName={alt}",
                  "-keyout", str(key), "-out", str(request))
        dates = ["-startdate", start or "20200101000000Z", "-enddate", end or "20991231000000Z"]
        self._run("ca", "-batch", "-notext", "-config", str(self._config), "-cert", str(self.cert), "-keyfile",
                  str(self.key), *dates, "-in", str(request), "-out", str(cert))
        return Issued(cert, key)

    def _run(self, *args: str) -> None:
        subprocess.run([self._openssl, *args], check=True, capture_output=True)
