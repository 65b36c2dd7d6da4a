"""The openssl recipe for a CRL in docs/device-identity.md ("Making a CRL with openssl"),
run as written: the CRL it makes is accepted for its CA (issuer and signature checked)
and lists the revoked certificate's serial, and a second revocation adds to it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cryptography import x509

from shared.domain.x509_attestation import crl_serials, parse_crl

ROOT = Path(__file__).resolve().parents[2]


def recipe() -> str:
    text = (ROOT / "docs" / "device-identity.md").read_text()
    section = text[text.index("#### Making a CRL with openssl") :]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None, "the recipe's sh block is missing"
    return found.group(1)


def sh(command: str, cwd: Path) -> None:
    subprocess.run(["/bin/sh", "-ec", command], cwd=cwd, check=True, capture_output=True)


def board(cwd: Path, serial: str) -> None:
    sh(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout b.key "
        "-subj /CN=board -out b.csr && "
        f"openssl x509 -req -in b.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 30 -out board.pem",
        cwd,
    )


def test_the_documented_recipe_makes_a_crl_fleetreg_accepts(tmp_path: Path) -> None:
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key "
        "-out ca.pem -days 365 -subj '/CN=Maker CA' -addext basicConstraints=critical,CA:TRUE "
        "-addext keyUsage=critical,keyCertSign,cRLSign",
        tmp_path,
    )
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    board(tmp_path, "0x0a1b2c")
    sh(recipe(), tmp_path)
    assert crl_serials(parse_crl((tmp_path / "ca.crl").read_bytes(), ca)) == {0x0A1B2C}

    board(tmp_path, "0x0d0e0f")  # the next revocation, in the same folder
    sh(recipe(), tmp_path)
    assert crl_serials(parse_crl((tmp_path / "ca.crl").read_bytes(), ca)) == {0x0A1B2C, 0x0D0E0F}
