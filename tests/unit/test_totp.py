"""People's TOTP (shared/domain/totp.py) on a fixed clock: RFC 6238's own test vector, the
step boundaries, the window of one step each side, reuse refused; the secret sealed at
rest; the enrolment's QR code rendered by a real SVG renderer and decoded by a real QR
reader back to the provisioning URI."""

from __future__ import annotations

import base64
import urllib.parse
import xml.etree.ElementTree as ET

import jinja2
import png
import pyotp
import pytest
import resvg_py
import zxingcpp

from shared.domain import totp

# RFC 6238 Appendix B: the SHA-1 seed is the ASCII "12345678901234567890".
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
KEY = b"k" * 32
EMAIL = "ann.lee+ops@example.com"


@pytest.mark.parametrize(
    ("at", "eight_digits"),
    [(59, "94287082"), (1111111109, "07081804"), (1111111111, "14050471"), (1234567890, "89005924")],
)
def test_codes_are_rfc_6238s_sha1_vectors_in_six_digits(at: int, eight_digits: str) -> None:
    # RFC 6238's table gives 8 digits; 6 are the same number modulo 10**6 (RFC 4226 5.3).
    assert totp.code_at(RFC_SECRET, at) == eight_digits[-6:]


def test_a_code_belongs_to_its_30_second_step() -> None:
    assert totp.step_of(59.999) == 1 and totp.step_of(60) == 2
    assert totp.code_at(RFC_SECRET, 60) == totp.code_at(RFC_SECRET, 89.999)
    assert totp.code_at(RFC_SECRET, 59.999) != totp.code_at(RFC_SECRET, 60)


def test_a_code_is_accepted_one_step_either_side_and_no_further() -> None:
    code = totp.code_at(RFC_SECRET, 90)  # step 3
    # The neighbouring steps' codes differ from it (else the boundaries would prove nothing).
    assert len({totp.code_at(RFC_SECRET, 30 * s) for s in range(1, 6)}) == 5
    for at in (60.0, 90.0, 119.999, 149.999):  # steps 2, 3, 3, 4
        assert totp.verify_code(RFC_SECRET, code, at=at, last_step=None) == 3
    for at in (59.999, 150.0):  # steps 1 and 5
        assert totp.verify_code(RFC_SECRET, code, at=at, last_step=None) is None


def test_a_code_accepted_once_is_refused_again_within_its_window() -> None:
    code = totp.code_at(RFC_SECRET, 90)
    step = totp.verify_code(RFC_SECRET, code, at=95, last_step=None)
    assert step == 3
    for at in (96, 119, 140):
        assert totp.verify_code(RFC_SECRET, code, at=at, last_step=step) is None
    # An older code still in the window is refused once a newer one was used ...
    assert totp.verify_code(RFC_SECRET, totp.code_at(RFC_SECRET, 60), at=96, last_step=step) is None
    # ... and the next step's code is accepted, moving the stored step on.
    nxt = totp.code_at(RFC_SECRET, 120)
    assert totp.verify_code(RFC_SECRET, nxt, at=121, last_step=step) == 4


FULL_WIDTH_CODE = "\uff12\uff18\uff17\uff10\uff18\uff12"  # 287082 in full-width digits: isdigit() holds


@pytest.mark.parametrize("typed", ["28708", "2870822", "28708a", "", FULL_WIDTH_CODE, "287-082"])
def test_anything_but_six_digits_is_refused(typed: str) -> None:
    assert totp.verify_code(RFC_SECRET, typed, at=59, last_step=None) is None


def test_spaces_in_a_typed_code_are_ignored() -> None:
    assert totp.verify_code(RFC_SECRET, "287 082", at=59, last_step=None) == 1
    assert totp.verify_code(RFC_SECRET, " 287082 ", at=59, last_step=None) == 1


def test_a_wrong_code_is_refused() -> None:
    right = totp.code_at(RFC_SECRET, 59)
    wrong = f"{(int(right) + 1) % 10**6:06d}"
    assert totp.verify_code(RFC_SECRET, wrong, at=59, last_step=None) is None


def test_new_secrets_are_160_random_bits_in_base32() -> None:
    secrets = {totp.new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert len(secret) == 32 and len(base64.b32decode(secret)) == 20


def test_the_provisioning_uri_is_what_authenticator_apps_read() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, EMAIL)
    parts = urllib.parse.urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert urllib.parse.unquote(parts.path) == f"/fleetreg:{EMAIL}"
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert query["secret"] == secret and query["issuer"] == "fleetreg"
    # Read back by pyotp's own parser: the parameters apps assume (SHA-1, 6 digits, 30 s).
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.name, parsed.issuer, parsed.digits, parsed.interval) == (EMAIL, "fleetreg", 6, 30)
    assert parsed.digest().name == "sha1"
    assert parsed.at(1000) == totp.code_at(secret, 1000)


def test_the_secret_is_sealed_for_one_user_under_one_key() -> None:
    secret = totp.new_secret()
    sealed = totp.seal_secret(KEY, "user-1", secret)
    assert secret.encode() not in sealed
    assert totp.open_secret(KEY, "user-1", sealed) == secret
    assert totp.seal_secret(KEY, "user-1", secret) != sealed  # a fresh nonce each time
    with pytest.raises(ValueError, match="TOTP secret does not decrypt"):
        totp.open_secret(KEY, "user-2", sealed)
    with pytest.raises(ValueError, match="TOTP secret does not decrypt"):
        totp.open_secret(b"o" * 32, "user-1", sealed)


def test_the_secret_is_sealed_apart_from_webhook_secrets() -> None:
    from shared.domain.webhooks import SecretBox

    sealed = totp.seal_secret(KEY, "same-id", "JBSWY3DPEHPK3PXP")
    with pytest.raises(ValueError):
        SecretBox(KEY).open("same-id", sealed)


def test_the_manual_key_is_the_secret_in_groups_of_four() -> None:
    secret = totp.new_secret()
    shown = totp.manual_key(secret)
    assert shown.replace(" ", "") == secret
    assert all(len(group) == 4 for group in shown.split(" "))


def decoded(svg: str) -> str:
    """The text a QR reader finds in ``svg``, rendered as a browser would (resvg)."""
    rendered = resvg_py.svg_to_bytes(svg_string=svg)
    width, height, rows, _ = png.Reader(bytes=rendered).asRGBA8()
    grey = bytearray()
    for row in rows:
        # Composite over white (the page behind it), then average the channels.
        for i in range(0, len(row), 4):
            r, g, b, a = row[i : i + 4]
            grey.append(((r + g + b) * a // 3 + 255 * (255 - a)) // 255)
    barcode = zxingcpp.read_barcode(memoryview(bytes(grey)).cast("B", (height, width)))
    assert barcode is not None, "no QR code found in the rendered SVG"
    assert barcode.format == zxingcpp.BarcodeFormat.QRCode
    return barcode.text


def test_the_qr_code_decodes_to_the_provisioning_uri() -> None:
    enrolment = totp.enrolment(totp.new_secret(), EMAIL)
    assert decoded(enrolment.svg) == enrolment.uri
    assert enrolment.manual_key.replace(" ", "") == enrolment.secret


def test_a_reader_does_not_decode_some_other_uri() -> None:
    # The decoding above can fail: a code of another secret decodes to another URI.
    one, other = totp.new_secret(), totp.new_secret()
    assert decoded(totp.qr_svg(totp.provisioning_uri(one, EMAIL))) != totp.provisioning_uri(other, EMAIL)


def test_the_qr_svg_is_safe_to_embed() -> None:
    enrolment = totp.enrolment(totp.new_secret(), EMAIL)
    root = ET.fromstring(enrolment.svg)  # noqa: S314 -- our own output, parsed to inspect it
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == ns + "svg"
    tags = {element.tag.removeprefix(ns) for element in root.iter()}
    assert tags <= {"svg", "title", "g", "path"}
    for element in root.iter():
        for name in element.attrib:
            assert not name.lower().startswith("on"), name
            assert "href" not in name.lower(), name
        assert "url(" not in " ".join(element.attrib.values())
    assert root.findtext(ns + "title") == totp.QR_TITLE
    assert "otpauth" not in enrolment.svg and enrolment.secret not in enrolment.svg


def test_the_qr_svg_goes_into_a_jinja_page_as_it_is() -> None:
    env = jinja2.Environment(autoescape=True)
    svg = totp.qr_svg(totp.provisioning_uri(RFC_SECRET, EMAIL))
    page = env.from_string("<figure>{{ svg | safe }}<figcaption>{{ key }}</figcaption></figure>").render(
        svg=svg, key=totp.manual_key(RFC_SECRET)
    )
    assert svg in page
