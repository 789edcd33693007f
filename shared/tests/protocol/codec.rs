//! The codec against every rule of STOMP framing, one table row per rule, plus a property
//! test that encode -> decode, split anywhere, gives back the frame.

use bytes::Bytes;
use proptest::prelude::*;
use taskpulse_shared::stomp::{
    Command, DecodeError, Decoder, EncodeError, Frame, Limits, Version, encode,
};

/// Feeds `input` in chunks of `chunk` bytes and collects every frame, or the first error.
fn decode_all(
    input: &[u8],
    version: Version,
    limits: Limits,
    chunk: usize,
) -> Result<Vec<Frame>, DecodeError> {
    let mut decoder = Decoder::new(version, limits);
    let mut frames = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        decoder.feed(piece);
        while let Some(frame) = decoder.decode()? {
            frames.push(frame);
        }
    }
    decoder.finish()?;
    Ok(frames)
}

fn frame(command: Command, headers: &[(&str, &str)], body: &[u8]) -> Frame {
    Frame {
        command,
        headers: headers.iter().copied().collect(),
        body: Bytes::copy_from_slice(body),
    }
}

struct Case {
    name: &'static str,
    version: Version,
    input: &'static [u8],
    expected: Result<Vec<Frame>, DecodeError>,
}

fn ok(frames: Vec<Frame>) -> Result<Vec<Frame>, DecodeError> {
    Ok(frames)
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    use Command::*;
    use Version::*;
    vec![
        Case {
            name: "minimal frame",
            version: V1_2,
            input: b"DISCONNECT\n\n\0",
            expected: ok(vec![frame(Disconnect, &[], b"")]),
        },
        Case {
            name: "several frames in one chunk, heart-beats between them",
            version: V1_2,
            input: b"\n\r\nSEND\ndestination:/q\n\nhi\0\n\n\r\nBEGIN\ntransaction:t\n\n\0\n",
            expected: ok(vec![
                frame(Send, &[("destination", "/q")], b"hi"),
                frame(Begin, &[("transaction", "t")], b""),
            ]),
        },
        Case {
            name: "CRLF line endings",
            version: V1_2,
            input: b"SEND\r\ndestination:/q\r\nx:y\r\n\r\nbody\0",
            expected: ok(vec![frame(Send, &[("destination", "/q"), ("x", "y")], b"body")]),
        },
        Case {
            name: "content-length body containing NUL",
            version: V1_2,
            input: b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0",
            expected: ok(vec![frame(
                Send,
                &[("destination", "/q"), ("content-length", "5")],
                b"a\0b\0c",
            )]),
        },
        Case {
            name: "empty body with content-length 0",
            version: V1_2,
            input: b"SEND\ndestination:/q\ncontent-length:0\n\n\0",
            expected: ok(vec![frame(Send, &[("destination", "/q"), ("content-length", "0")], b"")]),
        },
        Case {
            name: "1.2 escapes in name and value",
            version: V1_2,
            input: b"MESSAGE\na\\cb:1\\r\\n2\\c3\\\\4\n\n\0",
            expected: ok(vec![frame(Message, &[("a:b", "1\r\n2:3\\4")], b"")]),
        },
        Case {
            name: "1.1 escapes without \\r",
            version: V1_1,
            input: b"MESSAGE\nk:a\\nb\\cc\\\\d\n\n\0",
            expected: ok(vec![frame(Message, &[("k", "a\nb:c\\d")], b"")]),
        },
        Case {
            name: "1.1 has no \\r escape",
            version: V1_1,
            input: b"MESSAGE\nk:a\\rb\n\n\0",
            expected: Err(DecodeError::InvalidEscape {
                header: "k:a\\rb".into(),
                sequence: "\\r".into(),
            }),
        },
        Case {
            name: "1.0 does not unescape",
            version: V1_0,
            input: b"MESSAGE\nk:a\\nb\\t\n\n\0",
            expected: ok(vec![frame(Message, &[("k", "a\\nb\\t")], b"")]),
        },
        Case {
            name: "CONNECT headers are never unescaped",
            version: V1_2,
            input: b"CONNECT\npasscode:p\\t:x\naccept-version:1.2\n\n\0",
            expected: ok(vec![frame(
                Connect,
                &[("passcode", "p\\t:x"), ("accept-version", "1.2")],
                b"",
            )]),
        },
        Case {
            name: "value keeps colons after the first",
            version: V1_0,
            input: b"SEND\ndestination:/q\nurl:http://x:8080/\n\n\0",
            expected: ok(vec![frame(
                Send,
                &[("destination", "/q"), ("url", "http://x:8080/")],
                b"",
            )]),
        },
        Case {
            name: "repeated headers keep order (lookup uses the first)",
            version: V1_2,
            input: b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0",
            expected: ok(vec![frame(Message, &[("foo", "World"), ("foo", "Hello")], b"")]),
        },
        Case {
            name: "bad escape \\t",
            version: V1_2,
            input: b"SEND\ndestination:/q\\t\n\n\0",
            expected: Err(DecodeError::InvalidEscape {
                header: "destination:/q\\t".into(),
                sequence: "\\t".into(),
            }),
        },
        Case {
            name: "backslash at end of value",
            version: V1_2,
            input: b"SEND\nk:v\\\n\n\0",
            expected: Err(DecodeError::InvalidEscape {
                header: "k:v\\".into(),
                sequence: "\\".into(),
            }),
        },
        Case {
            name: "unknown command",
            version: V1_2,
            input: b"PUBLISH\n\n\0",
            expected: Err(DecodeError::UnknownCommand("PUBLISH".into())),
        },
        Case {
            name: "commands are case-sensitive",
            version: V1_2,
            input: b"send\n\n\0",
            expected: Err(DecodeError::UnknownCommand("send".into())),
        },
        Case {
            name: "header without colon",
            version: V1_2,
            input: b"SEND\ndestination\n\n\0",
            expected: Err(DecodeError::MissingColon("destination".into())),
        },
        Case {
            name: "non-UTF-8 header",
            version: V1_2,
            input: b"SEND\nk:\xff\xfe\n\n\0",
            expected: Err(DecodeError::NonUtf8("header line")),
        },
        Case {
            name: "content-length not a number",
            version: V1_2,
            input: b"SEND\ncontent-length:ten\n\n\0",
            expected: Err(DecodeError::InvalidContentLength("ten".into())),
        },
        Case {
            name: "content-length with a sign",
            version: V1_2,
            input: b"SEND\ncontent-length:+3\n\nabc\0",
            expected: Err(DecodeError::InvalidContentLength("+3".into())),
        },
        Case {
            name: "content-length shorter than the body: missing NUL",
            version: V1_2,
            input: b"SEND\ncontent-length:2\n\nabc\0",
            expected: Err(DecodeError::MissingNul { content_length: 2 }),
        },
        Case {
            name: "content-length longer than the body, next frame follows",
            version: V1_2,
            input: b"SEND\ncontent-length:10\n\nabc\0SEND\ndestination:/q\n\n\0",
            expected: Err(DecodeError::MissingNul { content_length: 10 }),
        },
        Case {
            name: "content-length longer than the body at end of input",
            version: V1_2,
            input: b"SEND\ncontent-length:10\n\nabc\0",
            expected: Err(DecodeError::Truncated { buffered: 28 }),
        },
        Case {
            name: "missing NUL at end of input",
            version: V1_2,
            input: b"SEND\ndestination:/q\n\nbody",
            expected: Err(DecodeError::Truncated { buffered: 25 }),
        },
        Case {
            name: "input ending inside the headers",
            version: V1_2,
            input: b"SEND\ndestination:/q\n",
            expected: Err(DecodeError::Truncated { buffered: 20 }),
        },
        Case { name: "only heart-beats", version: V1_2, input: b"\n\r\n\n", expected: ok(vec![]) },
    ]
}

#[test]
fn table_of_framing_rules_at_every_split() {
    for case in cases() {
        // Whole input at once, byte by byte, and a few odd chunk sizes in between.
        for chunk in [usize::MAX, 1, 2, 3, 7, 16] {
            let got = decode_all(case.input, case.version, Limits::default(), chunk);
            assert_eq!(got, case.expected, "case {:?} with chunks of {chunk}", case.name);
        }
    }
}

#[test]
fn header_lookup_keeps_the_first_of_repeated_headers() {
    let frames =
        decode_all(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\0", Version::V1_2, Limits::default(), 1)
            .unwrap();
    assert_eq!(frames[0].header("foo"), Some("World"));
}

#[test]
fn incomplete_input_is_ok_none_not_an_error() {
    let mut decoder = Decoder::default();
    for piece in [&b"SEN"[..], b"D\ndesti", b"nation:/q\n", b"\nbo", b"dy"] {
        decoder.feed(piece);
        assert_eq!(decoder.decode(), Ok(None));
    }
    decoder.feed(b"\0");
    let frame = decoder.decode().unwrap().unwrap();
    assert_eq!(&frame.body[..], b"body");
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.finish(), Ok(()));
}

#[test]
fn limits_name_the_limit_and_the_excess() {
    let small = Limits { max_frame_bytes: 32, max_headers: 2, max_header_line_bytes: 16 };
    let too_big =
        decode_all(b"SEND\ndestination:/q\n\n0123456789abcdef0123\0", Version::V1_2, small, 4)
            .unwrap_err();
    assert_eq!(too_big, DecodeError::FrameTooLarge { limit: 32, actual: 33 });
    assert_eq!(
        too_big.to_string(),
        "frame of at least 33 bytes exceeds the frame size limit of 32 bytes by 1"
    );

    let headers = decode_all(b"SEND\na:1\nb:2\nc:3\n\n\0", Version::V1_2, small, 1).unwrap_err();
    assert_eq!(headers, DecodeError::TooManyHeaders { limit: 2, actual: 3 });
    assert_eq!(headers.to_string(), "frame has at least 3 headers, over the limit of 2 by 1");

    let line =
        decode_all(b"SEND\nname:0123456789abcdef\n\n\0", Version::V1_2, small, 1).unwrap_err();
    assert!(matches!(line, DecodeError::HeaderLineTooLong { limit: 16, actual: 17 }), "{line:?}");
    assert_eq!(
        line.to_string(),
        "header line of at least 17 bytes exceeds the line limit of 16 bytes by 1"
    );
}

#[test]
fn oversized_content_length_fails_before_the_body_is_buffered() {
    let mut decoder = Decoder::default();
    decoder.feed(b"SEND\ndestination:/q\ncontent-length:1000000\n\n");
    let err = decoder.decode().unwrap_err();
    assert!(matches!(err, DecodeError::FrameTooLarge { limit: 65536, .. }), "{err:?}");
}

#[test]
fn a_header_line_without_end_fails_once_it_passes_the_limit() {
    let limits = Limits { max_header_line_bytes: 100, ..Limits::default() };
    let mut decoder = Decoder::new(Version::V1_2, limits);
    decoder.feed(b"SEND\nk:");
    assert_eq!(decoder.decode(), Ok(None));
    decoder.feed(&[b'x'; 200]);
    assert!(matches!(decoder.decode(), Err(DecodeError::HeaderLineTooLong { limit: 100, .. })));
}

#[test]
fn a_body_without_nul_fails_once_it_passes_the_frame_limit() {
    let limits = Limits { max_frame_bytes: 1024, ..Limits::default() };
    let mut decoder = Decoder::new(Version::V1_2, limits);
    decoder.feed(b"SEND\ndestination:/q\n\n");
    for _ in 0..9 {
        decoder.feed(&[b'x'; 100]);
        assert_eq!(decoder.decode(), Ok(None));
    }
    // 21 head bytes + 1002 body bytes + the NUL still to come = exactly the limit.
    decoder.feed(&[b'x'; 102]);
    assert_eq!(decoder.decode(), Ok(None));
    decoder.feed(b"x");
    assert_eq!(decoder.decode(), Err(DecodeError::FrameTooLarge { limit: 1024, actual: 1025 }));
}

#[test]
fn a_whole_frame_over_the_limit_is_refused_even_when_its_nul_arrived() {
    // Found by the fuzzer: the size was only checked while the NUL was still missing.
    let limits = Limits { max_frame_bytes: 64, ..Limits::default() };
    let mut input = b"SEND\ndestination:/q\n\n".to_vec();
    input.extend_from_slice(&[b'x'; 43]);
    input.push(0);
    assert_eq!(input.len(), 65);
    for chunk in [usize::MAX, 1, 10] {
        let got = decode_all(&input, Version::V1_2, limits, chunk);
        assert_eq!(
            got,
            Err(DecodeError::FrameTooLarge { limit: 64, actual: 65 }),
            "chunks of {chunk}"
        );
    }
    input.remove(21);
    assert_eq!(decode_all(&input, Version::V1_2, limits, usize::MAX).unwrap().len(), 1);
}

#[test]
fn version_switch_applies_to_later_frames() {
    let mut decoder = Decoder::new(Version::V1_0, Limits::default());
    decoder.feed(b"SEND\nk:a\\cb\n\n\0");
    assert_eq!(decoder.decode().unwrap().unwrap().header("k"), Some("a\\cb"));
    decoder.set_version(Version::V1_2);
    decoder.feed(b"SEND\nk:a\\cb\n\n\0");
    assert_eq!(decoder.decode().unwrap().unwrap().header("k"), Some("a:b"));
}

#[test]
fn encoder_writes_exact_bytes() {
    let cases: Vec<(Frame, Version, &[u8])> = vec![
        (
            frame(Command::Send, &[("destination", "/q"), ("k", "a:b\nc\\d\re")], b"hi"),
            Version::V1_2,
            b"SEND\ndestination:/q\nk:a\\cb\\nc\\\\d\\re\n\nhi\0",
        ),
        (
            frame(Command::Send, &[("k", "a:b\nc\re")], b""),
            Version::V1_1,
            b"SEND\nk:a\\cb\\nc\re\n\n\0",
        ),
        (frame(Command::Send, &[("k", "a:b")], b""), Version::V1_0, b"SEND\nk:a:b\n\n\0"),
        (
            frame(Command::Connected, &[("version", "1.2"), ("server", "x:1")], b""),
            Version::V1_2,
            b"CONNECTED\nversion:1.2\nserver:x:1\n\n\0",
        ),
        (
            frame(Command::Message, &[("content-length", "3")], b"a\0b"),
            Version::V1_2,
            b"MESSAGE\ncontent-length:3\n\na\0b\0",
        ),
    ];
    for (frame, version, bytes) in cases {
        let mut out = Vec::new();
        encode(&frame, version, &mut out).unwrap();
        assert_eq!(out, bytes, "{frame:?} as {version}");
        assert_eq!(decode_all(&out, version, Limits::default(), 1).unwrap(), vec![frame]);
    }
}

#[test]
fn encoder_refuses_what_it_cannot_write_faithfully() {
    let mut out = Vec::new();
    let newline_10 = frame(Command::Send, &[("k", "a\nb")], b"");
    assert!(matches!(
        encode(&newline_10, Version::V1_0, &mut out),
        Err(EncodeError::UnrepresentableHeader { .. })
    ));
    let connect_colon = frame(Command::Connect, &[("a:b", "c")], b"");
    assert!(encode(&connect_colon, Version::V1_2, &mut out).is_err());
    let trailing_cr_11 = frame(Command::Send, &[("k", "v\r")], b"");
    assert!(encode(&trailing_cr_11, Version::V1_1, &mut out).is_err());
    assert!(encode(&trailing_cr_11, Version::V1_2, &mut out).is_ok());
    out.clear();
    let nul = frame(Command::Send, &[], b"a\0b");
    assert_eq!(encode(&nul, Version::V1_2, &mut out), Err(EncodeError::NulWithoutContentLength));
    let wrong_length = frame(Command::Send, &[("content-length", "9")], b"abc");
    assert_eq!(
        encode(&wrong_length, Version::V1_2, &mut out),
        Err(EncodeError::ContentLengthMismatch { declared: "9".into(), actual: 3 })
    );
    assert!(out.is_empty(), "a refused frame writes nothing");
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop::sample::select(Command::ALL.to_vec())
}

fn arb_version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

/// Header text including every octet that needs escaping.
fn arb_text() -> impl Strategy<Value = String> {
    prop::string::string_regex("([a-z0-9/.\\-]|:|\\\\|\n|\r| |é|\u{1F600}){0,12}").unwrap()
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        arb_command(),
        prop::collection::vec((arb_text(), arb_text()), 0..6),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    )
        .prop_map(|(command, headers, body, with_length)| {
            let headers =
                headers.into_iter().filter(|(name, _)| name != "content-length").collect();
            let mut frame = Frame { command, headers, body: Bytes::from(body) };
            if with_length || frame.body.contains(&0) {
                frame.headers.push("content-length", &frame.body.len().to_string());
            }
            frame
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any sequence of frames, encoded with heart-beats between them and split at arbitrary
    /// points, decodes to the same frames. 1.2 frames other than CONNECT/CONNECTED must always
    /// be encodable; others are skipped only when the encoder says they cannot be written.
    #[test]
    fn encode_then_decode_split_anywhere_round_trips(
        frames in prop::collection::vec(arb_frame(), 1..5),
        version in arb_version(),
        heartbeats in prop::collection::vec(prop::sample::select(vec![&b""[..], b"\n", b"\r\n", b"\n\n"]), 5),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for (frame, beat) in frames.into_iter().zip(heartbeats) {
            match encode(&frame, version, &mut wire) {
                Ok(()) => { wire.extend_from_slice(beat); sent.push(frame); }
                Err(err) => {
                    prop_assert!(
                        version != Version::V1_2 || !frame.command.escapes_headers(),
                        "1.2 frame refused: {err}"
                    );
                }
            }
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut decoder = Decoder::new(version, Limits::unbounded());
        let mut got = Vec::new();
        for pair in points.windows(2) {
            decoder.feed(&wire[pair[0]..pair[1]]);
            while let Some(frame) = decoder.decode().map_err(|e| TestCaseError::fail(e.to_string()))? {
                got.push(frame);
            }
        }
        prop_assert_eq!(decoder.finish(), Ok(()));
        prop_assert_eq!(got, sent);
    }
}
