"""Pure unit tests of b3lb.checksum against the worked examples of spec 1.10 (42-char secrets)."""

from __future__ import annotations

import hashlib
import random
from urllib.parse import quote_plus, urlencode

import pytest

from b3lb.checksum import digest, encode_params, find_checksum, quote_value, signed_query, strip_checksum, verify

S1 = "b3lbDemoSecret0123456789abcdefghijklmnopQR"
S2 = "NextSecret9876543210zyxwvutsrqponmlkjihgfE"
ALL = frozenset({"sha1", "sha256", "sha384", "sha512"})

QUERY_A = (
    "name=Weekly+Sync&meetingID=room-42&record=true"
    "&meta_endCallbackUrl=https%3A%2F%2Fgl.example.org%2Fended%3Froom%3D42"
)
EXAMPLE_A = {
    "sha1": "e1c03727f738c50dcdf2fa1029137cb3945d6592",
    "sha256": "2bdbdf172d9118b90cffe9366c595161f7b7bff0d9c0f121b3d9e2a6bebba30e",
    "sha384": "e1b9f7485199a9920db34dbf69e64745098ce7ef5ea88306d9107349644c8983"
    "c8b34fcb822f72253350b2051a3a0dfd",
    "sha512": "6cbc494cb38f4818727cad24c1394c615aac3c796d88413254edc6730151022385dd36a5e3050289660d540ef3af8bd2"
    "7682ecdc65bb1c07b1f75ff84bbdb501",
}

# (call, query without checksum, secret, algorithm, expected digest)
VECTORS = [
    *[("create", QUERY_A, S1, alg, value) for alg, value in EXAMPLE_A.items()],
    # B: + versus %20
    ("join", "meetingID=room-42&fullName=J%C3%BCrgen+M%C3%BCller&role=MODERATOR", S1, "sha1",
     "a57d228f6462c8cb32e40b6594dbdd632289f978"),
    ("join", "meetingID=room-42&fullName=J%C3%BCrgen+M%C3%BCller&role=MODERATOR", S1, "sha256",
     "3059fd63c6fb36916af93f9eaeb324a1acfecc6f10e2540a8f67f78868b6f985"),
    ("join", "meetingID=room-42&fullName=J%C3%BCrgen%20M%C3%BCller&role=MODERATOR", S1, "sha1",
     "fdc64595007665031b34541836454453457cae19"),
    ("join", "meetingID=room-42&fullName=J%C3%BCrgen%20M%C3%BCller&role=MODERATOR", S1, "sha256",
     "e9143b7ff7e3a907631472558051132a713944c2c249cfc15f1485b748b783c1"),
    # C: the stripped query of the middle-checksum example
    ("join", "meetingID=room-42&redirect=false&fullName=Ann&role=VIEWER", S1, "sha256",
     "62fcf295b09d2959447e5ecdd5845df95351652fcf69017430abfa1d14e48f23"),
    # D: empty query, call and API root
    ("getMeetings", "", S1, "sha1", "da16fb77a6f8e586dbefba5561058fed749b752c"),
    ("getMeetings", "", S1, "sha256", "31e23df75fde1d43259f4376d1d895d4e47e42b0e3e6dcccbacdab98fac47a10"),
    ("", "", S1, "sha1", "2f00f4aeb0a9e66dbf0b7e18a4bbf484695b7c1b"),
    ("", "", S1, "sha256", "8a7ce63cad69c28348a728d9d61e3f077060cc890b25a31fcf2d02d941a9c567"),
    # E: rollover
    ("isMeetingRunning", "meetingID=room-42", S1, "sha256",
     "9d6675c715ee0864da64c8991e4b665c2625fa91f8fe78009ac89bf1eb649069"),
    ("isMeetingRunning", "meetingID=room-42", S2, "sha256",
     "ee291a40c99419f9832bd1f72181a2c9930d2a836298f9c34f0a038dd2dab079"),
    # F: checksumHash=sha512
    ("isMeetingRunning", "meetingID=room-42&checksumHash=sha512", S1, "sha512",
     "75aeea167442826232e93a5e460c515a564d4b582fbe4eb2028dda55c1f6cff7"
     "406642712066f8c0e572c985778063d3ca04a3e2bd2aaf0b49e71373de7db081"),
    # G: form POST fallback, over the empty string and over the body
    ("getMeetingInfo", "", S1, "sha256", "846241ee5d61f8c97787584e0ed07c94a07ecbcde2b3b69dc2994a0cdfe6f33e"),
    ("getMeetingInfo", "meetingID=room-42", S1, "sha256",
     "3c903ea92408f4c3a23c0468caf4fea0ab273468903d09a1e0d0a9ded98bb769"),
    # H: * versus %2A
    ("create", "meetingID=a*b&name=Star*Room", S1, "sha1", "4328fa1a0f0987c5579eeac1a39ee07e95f5017a"),
    ("create", "meetingID=a%2Ab&name=Star%2ARoom", S1, "sha1", "0a15ec913f544462271c7366e96b4460a3ba5a27"),
    # I: BBB documentation vector
    ("create", "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444",
     "639259d4-9dd8-4b25-bf01-95f9567eaf4b", "sha1", "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"),
]
IDS = [f"{call or 'root'}-{alg}-{i}" for i, (call, _, _, alg, _) in enumerate(VECTORS)]


def mutate(text: str, index: int) -> str:
    """Change one character (hex stays hex, other characters become a different letter)."""
    ch = text[index]
    replacement = "0" if ch != "0" else "1"
    if not ch.isalnum():
        replacement = "x"
    return text[:index] + replacement + text[index + 1:]


@pytest.mark.parametrize(("call", "query", "secret", "algorithm", "expected"), VECTORS, ids=IDS)
def test_worked_example_digest_and_verify(call: str, query: str, secret: str, algorithm: str, expected: str) -> None:
    assert digest(algorithm, call, query, secret) == expected
    checksum_hash = "sha512" if "checksumHash=sha512" in query else None
    signed = f"{query}&checksum={expected}" if query else f"checksum={expected}"
    assert verify(call, signed, (secret, ""), ALL, checksum_hash)
    # upper-case hex is accepted (BBB and the recommendation compare case-insensitively)
    upper = f"{query}&checksum={expected.upper()}" if query else f"checksum={expected.upper()}"
    assert verify(call, upper, (secret, ""), ALL, checksum_hash)
    # one-character mutations of the checksum, the query, the call and the secret all fail
    for index in (0, len(expected) // 2, len(expected) - 1):
        bad = mutate(expected, index)
        assert not verify(call, f"{query}&checksum={bad}" if query else f"checksum={bad}", (secret, ""), ALL,
                          checksum_hash)
    if query:
        for index in (0, len(query) // 2, len(query) - 1):
            assert not verify(call, f"{mutate(query, index)}&checksum={expected}", (secret, ""), ALL, checksum_hash)
    assert not verify(call + "x", signed, (secret, ""), ALL, checksum_hash)
    assert not verify(call, signed, (mutate(secret, 5), ""), ALL, checksum_hash)


def test_example_b_swapped_checksums_fail() -> None:
    plus = "meetingID=room-42&fullName=J%C3%BCrgen+M%C3%BCller&role=MODERATOR"
    pct = "meetingID=room-42&fullName=J%C3%BCrgen%20M%C3%BCller&role=MODERATOR"
    assert not verify("join", plus + "&checksum=fdc64595007665031b34541836454453457cae19", (S1, ""), ALL)
    assert not verify("join", pct + "&checksum=a57d228f6462c8cb32e40b6594dbdd632289f978", (S1, ""), ALL)
    assert verify("join", plus + "&checksum=a57d228f6462c8cb32e40b6594dbdd632289f978", (S1, ""), ALL)


@pytest.mark.parametrize(
    "query",
    [
        "checksum=62fcf295b09d2959447e5ecdd5845df95351652fcf69017430abfa1d14e48f23"
        "&meetingID=room-42&redirect=false&fullName=Ann&role=VIEWER",
        "meetingID=room-42&checksum=62fcf295b09d2959447e5ecdd5845df95351652fcf69017430abfa1d14e48f23"
        "&redirect=false&fullName=Ann&role=VIEWER",
        "meetingID=room-42&redirect=false&fullName=Ann&role=VIEWER"
        "&checksum=62fcf295b09d2959447e5ecdd5845df95351652fcf69017430abfa1d14e48f23",
    ],
    ids=["first", "middle", "last"],
)
def test_example_c_checksum_position(query: str) -> None:
    assert verify("join", query, (S1, ""), ALL)
    stripped = strip_checksum(query, find_checksum(query) or "")
    assert stripped == "meetingID=room-42&redirect=false&fullName=Ann&role=VIEWER"


def test_example_d_upper_case_literal() -> None:
    assert verify("getMeetings", "checksum=DA16FB77A6F8E586DBEFBA5561058FED749B752C", (S1, ""), ALL)


def test_example_e_rollover_and_empty_secret() -> None:
    q1 = "meetingID=room-42&checksum=9d6675c715ee0864da64c8991e4b665c2625fa91f8fe78009ac89bf1eb649069"
    q2 = "meetingID=room-42&checksum=ee291a40c99419f9832bd1f72181a2c9930d2a836298f9c34f0a038dd2dab079"
    assert verify("isMeetingRunning", q1, (S1, S2), ALL)
    assert verify("isMeetingRunning", q2, (S1, S2), ALL)
    assert verify("isMeetingRunning", q1, (S1, ""), ALL)
    assert not verify("isMeetingRunning", q2, (S1, ""), ALL)
    # spec 7.6: checksums computed with no secret never authenticate
    assert not verify("getMeetings", "checksum=7c77eb87aee52c58f38af3f45bd3913a9d084aaa", (S1, ""), ALL)
    assert not verify(
        "getMeetings", "checksum=3fa997df9d8382ff20dce34bf95809fe67483d6c06f85659f0d3f397f684bd6c", (S1, ""), ALL
    )
    assert not verify("getMeetings", "checksum=7c77eb87aee52c58f38af3f45bd3913a9d084aaa", ("", ""), ALL)


def test_example_f_checksum_hash_and_allow_list() -> None:
    value = EXAMPLE_A["sha512"]
    query_f = "meetingID=room-42&checksumHash=sha512&checksum=" + digest(
        "sha512", "isMeetingRunning", "meetingID=room-42&checksumHash=sha512", S1
    )
    assert verify("isMeetingRunning", query_f, (S1, ""), ALL, "sha512")
    assert not verify("isMeetingRunning", query_f, (S1, ""), ALL - {"sha512"}, "sha512")
    # checksumHash takes precedence over the length: sha512 requested, 64-char checksum → fail
    q256 = "meetingID=room-42&checksumHash=sha512"
    assert not verify("isMeetingRunning", f"{q256}&checksum={digest('sha256', 'isMeetingRunning', q256, S1)}",
                      (S1, ""), ALL, "sha512")
    # sha1 requested with a 40-char checksum passes; an unknown value falls back to the length rule
    q1 = "meetingID=room-42&checksumHash=sha1"
    assert verify("isMeetingRunning", f"{q1}&checksum={digest('sha1', 'isMeetingRunning', q1, S1)}", (S1, ""), ALL,
                  "sha1")
    qx = "meetingID=room-42&checksumHash=md5"
    assert verify("isMeetingRunning", f"{qx}&checksum={digest('sha256', 'isMeetingRunning', qx, S1)}", (S1, ""),
                  ALL, "md5")
    # a disallowed algorithm behaves like an unknown length
    assert not verify("create", f"{QUERY_A}&checksum={value}", (S1, ""), frozenset({"sha256"}))
    assert verify("create", f"{QUERY_A}&checksum={EXAMPLE_A['sha256']}", (S1, ""), frozenset({"sha256"}))


@pytest.mark.parametrize("length", [0, 39, 41, 63, 65, 95, 97, 127, 129])
def test_wrong_lengths_fail(length: int) -> None:
    full = digest("sha512", "getMeetings", "", S1)
    value = (full * 2)[:length]
    assert not verify("getMeetings", f"checksum={value}", (S1, ""), ALL)


def test_missing_checksum_fails() -> None:
    assert not verify("getMeetings", "", (S1, ""), ALL)
    assert not verify("getMeetings", "meetingID=x", (S1, ""), ALL)
    assert not verify("getMeetings", "checksum=", (S1, ""), ALL)


def test_parameter_order_is_hashed_as_sent() -> None:
    value = digest("sha256", "create", "b=1&a=2", S1)
    assert verify("create", f"b=1&a=2&checksum={value}", (S1, ""), ALL)
    assert not verify("create", f"a=2&b=1&checksum={value}", (S1, ""), ALL)


def test_example_j_outbound_signing() -> None:
    nonce = "Xy7(qZ)-_k2!Lm@9*ab3Cd4Ef5Gh6Ij7Kl8Mn9Op0Qr1St2Uv3Wx4Yz5Ab6Cd7Ef"
    params = [
        ("name", "Weekly Sync"),
        ("meetingID", "room-42"),
        ("record", "true"),
        ("meta_endCallbackUrl", f"https://api.example.org/b3lb/b/meeting/end?nonce={nonce}"),
        ("logo", "https://api.example.org/b3lb/t/abc/logo"),
        ("meta_b3lb-recordset", nonce),
    ]
    expected_query = (
        "name=Weekly+Sync&meetingID=room-42&record=true&meta_endCallbackUrl=https%3A%2F%2Fapi.example.org%2Fb3lb"
        "%2Fb%2Fmeeting%2Fend%3Fnonce%3DXy7%28qZ%29-_k2%21Lm%409*ab3Cd4Ef5Gh6Ij7Kl8Mn9Op0Qr1St2Uv3Wx4Yz5Ab6Cd7Ef"
        "&logo=https%3A%2F%2Fapi.example.org%2Fb3lb%2Ft%2Fabc%2Flogo"
        "&meta_b3lb-recordset=Xy7%28qZ%29-_k2%21Lm%409*ab3Cd4Ef5Gh6Ij7Kl8Mn9Op0Qr1St2Uv3Wx4Yz5Ab6Cd7Ef"
    )
    assert encode_params(params) == expected_query
    signed = signed_query("create", params, "NodeSecretForN1337example", "SHA256")
    assert signed == expected_query + "&checksum=f27086eb657577630f9e2ffa114534c944ac0f61520d76967e69e258399eac9a"
    assert verify("create", signed, ("NodeSecretForN1337example", ""), ALL)
    # no parameters: only the checksum over the empty query
    assert signed_query("getMeetings", [], S1, "sha1") == "checksum=da16fb77a6f8e586dbefba5561058fed749b752c"


def test_raw_utf8_bytes_hash_as_sent() -> None:
    # Tornado hands the request line over decoded as latin-1; the digest must be over the original bytes.
    wire = "name=J\u00c3\u00bcrgen"  # the UTF-8 bytes of "Jürgen" seen through latin-1
    expected = hashlib.sha256(b"create" + "name=Jürgen".encode() + S1.encode()).hexdigest()
    assert digest("sha256", "create", wire, S1) == expected


@pytest.mark.parametrize("value", ["\u00e9" * 40, "\u00ff" * 64, "\u20ac" * 40, "g" * 40, "%C3%A9" * 20])
def test_non_hex_checksum_fails_without_raising(value: str) -> None:
    assert not verify("getMeetings", f"checksum={value}", (S1, S2), ALL)
    assert not verify("getMeetings", f"checksum={value}", (S1, S2), ALL, "sha1")


# Characters that exercise every branch of the encoder: plain, space, reserved, %, *, non-ASCII
# (two-, three- and four-byte UTF-8), controls, the line separator.
_ALPHABET = "aZ09_.-~* +&=%/?#:;,@!$'()[]\"<>\\^`{|}\x00\x1f\x7f\x80\xa0\xff\u00e9\u20ac\u2028\U0001f600"


def test_encode_params_is_urlencode_with_quote_plus() -> None:
    """encode_params formats what urlencode(safe="*", quote_via=quote_plus) did (the node's checksum
    covers these exact bytes), without its per-byte Python loop."""
    rng = random.Random(12)
    for _ in range(5000):
        params = [
            ("".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 6))),
             "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 10))))
            for _ in range(rng.randint(0, 4))
        ]
        assert encode_params(params) == urlencode(params, safe="*", quote_via=quote_plus), params
    for code in range(0x110000):  # every character alone: the same text, or the same error
        text = chr(code)
        try:
            expected = quote_plus(text, safe="*")
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                quote_value(text)
            continue
        assert quote_value(text) == expected


def test_strip_checksum_is_bbbs_three_replacements() -> None:
    """The shortcut for a trailing checksum pair changes nothing: same result as BBB's replacements."""

    def bbb(query: str, value: str) -> str:
        return query.replace("&checksum=" + value, "").replace("checksum=" + value + "&", "").replace(
            "checksum=" + value, "")

    rng = random.Random(3)
    pieces = ["a=1", "checksum=x", "checksum=xx", "&", "checksum=", "x", "=", "checksum=x&", "&checksum=x", "hecksum=x"]
    for _ in range(20000):
        query = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        value = rng.choice(["x", "xx", "", "x&", "=x"])
        assert strip_checksum(query, value) == bbb(query, value), (query, value)
