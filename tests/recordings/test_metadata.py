"""metadata.xml as nodes send it (b3lb/recordings/metadata.py): what a record set keeps, and
hostile or broken documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from b3lb.recordings.metadata import (
    MAX_META_KEYS,
    META_VALUE_SIZE,
    MetadataError,
    parse_metadata,
)

# As BBB 2.7 writes it for a published presentation (trimmed playback section).
BBB = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording>
  <id>183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1731234567890</id>
  <state>published</state>
  <published>true</published>
  <start_time>1731234567890</start_time>
  <end_time>1731238167890</end_time>
  <participants>7</participants>
  <meeting id="183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1731234567890" externalId="room-42"
           name="Weekly Sync &amp; Review" breakout="false"/>
  <meta>
    <isBreakout>false</isBreakout>
    <meetingName>Weekly Sync &amp; Review</meetingName>
    <meetingId>room-42</meetingId>
    <bbb-origin>Greenlight</bbb-origin>
    <bbb-origin-version>v3</bbb-origin-version>
    <bbb-origin-server-name>gl.example.org</bbb-origin-server-name>
    <gl-listed>false</gl-listed>
    <b3lb-recordset>0c5e3f4c-2a7e-4b1d-9a55-6f3d2c1b0a99</b3lb-recordset>
  </meta>
  <playback>
    <format>presentation</format>
    <link>https://node.example.org/playback/presentation/2.3/183f...</link>
    <duration>3600000</duration>
  </playback>
  <raw_size>98765432</raw_size>
</recording>
"""


def doc(inner: str, root: str = "recording") -> bytes:
    return f"<{root}>{inner}</{root}>".encode()


def test_a_bbb_document():
    meta = parse_metadata(BBB)
    assert meta.internal_id == "183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1731234567890"
    assert meta.meeting_name == "Weekly Sync & Review"
    assert (meta.start_ms, meta.end_ms, meta.participants, meta.raw_size) == (1731234567890, 1731238167890, 7,
                                                                             98765432)
    assert meta.is_breakout is False
    assert meta.meta == {
        "isBreakout": "false", "meetingName": "Weekly Sync & Review", "meetingId": "room-42",
        "bbb-origin": "Greenlight", "bbb-origin-version": "v3", "bbb-origin-server-name": "gl.example.org",
        "gl-listed": "false",
    }  # the set's nonce (the upload credential) is not kept


def test_defaults_when_fields_are_missing_or_bad():
    meta = parse_metadata(doc("<participants>many</participants><start_time>-5</start_time>"
                              "<end_time>99999999999999999999</end_time><raw_size>1e9</raw_size>"))
    assert (meta.internal_id, meta.meeting_name, meta.start_ms, meta.end_ms) == ("", "", None, None)
    assert meta.participants == 1 and meta.raw_size is None and meta.meta == {} and not meta.is_breakout
    assert parse_metadata(doc("<participants>0</participants>")).participants == 0
    assert parse_metadata(doc("<participants>99999999999</participants>")).participants == 2**31 - 1


def test_name_and_id_fall_back_and_fit_their_columns():
    meta = parse_metadata(doc(f"<meeting id='{'i' * 300}'/><meta><meetingName>{'n' * 300}</meetingName></meta>"))
    assert meta.internal_id == "i" * 200 and meta.meeting_name == "n" * 256
    assert parse_metadata(doc("<id> abc </id><meeting id='other' name='From attribute'/>")).internal_id == "abc"


@pytest.mark.parametrize("inner", [
    "<meta><isBreakout>true</isBreakout></meta>",
    "<meta><isBreakout> TRUE </isBreakout></meta>",
    "<meeting breakout='true'/>",
])
def test_breakout(inner):
    assert parse_metadata(doc(inner)).is_breakout


@pytest.mark.parametrize("data,reason", [
    (b"", "not well-formed"),
    (b"<recording><id>x</id>", "not well-formed"),
    (b"\xff\xfe<recording/>", "not well-formed"),
    (b"<metadata><id>x</id></metadata>", "no <recording> root"),
    (b"<r:recording xmlns:r='urn:x'/>", "no <recording> root"),
    (b"not xml at all", "not well-formed"),
])
def test_broken_documents(data, reason):
    with pytest.raises(MetadataError, match=reason):
        parse_metadata(data)


def test_meta_keys_are_element_names_bounded_in_count_and_length():
    children = "".join(f"<key{n}>v</key{n}>" for n in range(MAX_META_KEYS + 10))
    meta = parse_metadata(doc(f"<meta><x:ns xmlns:x='urn:x'>1</x:ns><xmlish>1</xmlish><!-- c --><?pi x?>"
                              f"<long>{'v' * (META_VALUE_SIZE + 5)}</long><first>1</first><first>2</first>"
                              f"<nested>text<b>bold</b></nested><empty/>{children}</meta>")).meta
    assert "x:ns" not in meta and "{urn:x}ns" not in meta and "xmlish" not in meta
    assert meta["long"] == "v" * META_VALUE_SIZE and meta["first"] == "1" and meta["nested"] == "text"
    assert meta["empty"] == "" and len(meta) == MAX_META_KEYS
    assert all(not key.startswith("{") for key in meta)


def test_no_entity_is_expanded_and_no_file_is_read(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    external = (f'<!DOCTYPE recording [<!ENTITY x SYSTEM "file://{secret}">]>'
                '<recording><meta><bbb-origin>&x;</bbb-origin></meta></recording>').encode()
    assert "TOP-SECRET" not in str(parse_metadata(external).meta)
    laughs = (b'<!DOCTYPE recording [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
              b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>'
              b'<recording><meta><bbb-origin>&d;</bbb-origin></meta><id>x</id></recording>')
    meta = parse_metadata(laughs)
    assert meta.internal_id == "x" and "aaaaaaaaaa" not in str(meta.meta)

