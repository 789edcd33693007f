//! Bytes <-> [`Frame`]: an incremental, bounded decoder and an exact encoder.
//!
//! The decoder accepts input split anywhere, remembers where it stopped scanning, and fails
//! with a typed error as soon as a frame breaks a rule or a limit, before buffering more.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use std::borrow::Cow;

use super::frame::{Command, Frame, Headers, Version};

/// Bounds on inbound frames. Every buffer the decoder keeps is bounded by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, from the first octet of the command to the closing NUL.
    pub max_frame_bytes: usize,
    /// Most header lines in one frame.
    pub max_headers: usize,
    /// Longest header line (or command line), EOL excluded.
    pub max_header_line_bytes: usize,
}

impl Default for Limits {
    /// 64 KiB frames, 64 headers, 8 KiB header lines.
    fn default() -> Self {
        Limits { max_frame_bytes: 64 * 1024, max_headers: 64, max_header_line_bytes: 8 * 1024 }
    }
}

impl Limits {
    /// Limits that never trigger below `usize::MAX`; for trusted peers and tests.
    pub fn unbounded() -> Self {
        Limits {
            max_frame_bytes: usize::MAX,
            max_headers: usize::MAX,
            max_header_line_bytes: usize::MAX,
        }
    }
}

/// Why bytes could not be decoded into a frame. The message names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The command line is not a STOMP command.
    #[error("unknown command {}", crate::Quoted(.0))]
    UnknownCommand(String),
    /// The frame is larger than [`Limits::max_frame_bytes`].
    #[error(
        "frame of at least {actual} bytes exceeds the frame size limit of {limit} bytes by {}",
        actual - limit
    )]
    FrameTooLarge {
        /// The configured limit.
        limit: usize,
        /// The size seen so far (the frame may be larger still).
        actual: usize,
    },
    /// The frame has more header lines than [`Limits::max_headers`].
    #[error("frame has at least {actual} headers, over the limit of {limit} by {}", actual - limit)]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
        /// Headers counted so far.
        actual: usize,
    },
    /// A header or command line is longer than [`Limits::max_header_line_bytes`].
    #[error(
        "header line of at least {actual} bytes exceeds the line limit of {limit} bytes by {}",
        actual - limit
    )]
    HeaderLineTooLong {
        /// The configured limit.
        limit: usize,
        /// The line length seen so far.
        actual: usize,
    },
    /// A header line has no `:` separating name and value.
    #[error("header line {} has no colon", crate::Quoted(.0))]
    MissingColon(String),
    /// A header uses an escape sequence the version does not define.
    #[error(
        "header {} contains the undefined escape sequence {}",
        crate::Quoted(header),
        crate::Quoted(sequence)
    )]
    InvalidEscape {
        /// The raw header line.
        header: String,
        /// The offending sequence, e.g. `\t`, or a lone `\` at the end.
        sequence: String,
    },
    /// A command or header line is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NonUtf8(&'static str),
    /// `content-length` is not a decimal octet count.
    #[error("content-length {} is not a number of octets", crate::Quoted(.0))]
    InvalidContentLength(String),
    /// The octet after a `content-length` body is not the NUL that must end the frame.
    #[error("the {content_length}-octet body given by content-length is not followed by a NUL")]
    MissingNul {
        /// The declared body length.
        content_length: usize,
    },
    /// The input ended in the middle of a frame.
    #[error("input ended in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
}

/// Why a frame cannot be written in the requested version without changing its meaning.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The header cannot be expressed (newline without escaping, `:` in a name, or a
    /// trailing carriage return that a reader would take for a CRLF line end).
    #[error(
        "header {} cannot be written in a STOMP {version} {command} frame",
        crate::Quoted(name)
    )]
    UnrepresentableHeader {
        /// The header's name.
        name: String,
        /// The frame's command.
        command: Command,
        /// The version being written.
        version: Version,
    },
    /// The body contains NUL but no `content-length` says where it ends.
    #[error("the body contains a NUL octet, so the frame needs a content-length header")]
    NulWithoutContentLength,
    /// `content-length` disagrees with the body.
    #[error("content-length {} does not match the {actual}-octet body", crate::Quoted(declared))]
    ContentLengthMismatch {
        /// The header's value.
        declared: String,
        /// The body's length.
        actual: usize,
    },
}

/// Where the decoder stopped, so that more input resumes the scan instead of restarting it.
#[derive(Debug)]
enum State {
    /// Looking for the blank line that ends the headers. `line_start` is the start of the
    /// first line not yet seen complete; `lines` counts complete lines (the command first).
    Head { line_start: usize, lines: usize },
    /// Headers parsed; waiting for the body and its NUL.
    Body {
        command: Command,
        headers: Headers,
        body_start: usize,
        content_length: Option<usize>,
        /// Without content-length: bytes from `body_start` known to hold no NUL.
        scanned: usize,
    },
}

/// An incremental STOMP decoder. Feed it bytes with [`Decoder::feed`], then call
/// [`Decoder::decode`] until it returns `Ok(None)`.
///
/// Heart-beat EOLs between frames are skipped. Header escaping follows the version set with
/// [`Decoder::set_version`] (1.2 until told otherwise); CONNECT, STOMP and CONNECTED headers
/// are never unescaped. After an error the decoder's state is unspecified: close the
/// connection.
///
/// ```
/// use taskpulse_shared::stomp::{Command, Decoder};
///
/// let mut decoder = Decoder::default();
/// decoder.feed(b"\nSEND\ndestination:/queue/a\n\nhel");
/// assert_eq!(decoder.decode(), Ok(None)); // incomplete is not an error
/// decoder.feed(b"lo\0");
/// let frame = decoder.decode()?.expect("a whole frame");
/// assert_eq!(frame.command, Command::Send);
/// assert_eq!(frame.header("destination"), Some("/queue/a"));
/// assert_eq!(&frame.body[..], b"hello");
/// # Ok::<(), taskpulse_shared::stomp::DecodeError>(())
/// ```
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    version: Version,
    limits: Limits,
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(Version::V1_2, Limits::default())
    }
}

impl Decoder {
    /// A decoder for frames of `version` within `limits`.
    pub fn new(version: Version, limits: Limits) -> Decoder {
        Decoder {
            buf: BytesMut::new(),
            version,
            limits,
            state: State::Head { line_start: 0, lines: 0 },
        }
    }

    /// Sets the version whose escaping rules apply to the frames that follow.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The version in force.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Appends input.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more input is needed.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the rule or limit the input broke.
    pub fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let State::Head { line_start, lines } = &mut self.state {
            if *lines == 0 && *line_start == 0 {
                skip_heartbeats(&mut self.buf);
            }
            let Some(body_start) = scan_head(&self.buf, line_start, lines, &self.limits)? else {
                return Ok(None);
            };
            let (command, headers) = parse_head(&self.buf[..body_start], self.version)?;
            let content_length = content_length(&headers)?;
            if let Some(len) = content_length {
                let size = body_start.saturating_add(len).saturating_add(1);
                if size > self.limits.max_frame_bytes {
                    return Err(too_large(&self.limits, size));
                }
            }
            self.state = State::Body { command, headers, body_start, content_length, scanned: 0 };
        }
        let State::Body { body_start, content_length, scanned, .. } = &mut self.state else {
            unreachable!("the head state always moves to the body state or returns");
        };
        let (body_start, body_len) = (*body_start, *content_length);
        let body_end = match body_len {
            Some(len) => {
                let end = body_start + len;
                if self.buf.len() <= end {
                    return Ok(None);
                }
                if self.buf[end] != 0 {
                    return Err(DecodeError::MissingNul { content_length: len });
                }
                end
            }
            None => {
                // A frame may not extend past the limit, so its NUL is only looked for
                // within it, however much input arrived in one read.
                let from = body_start + *scanned;
                let window_end = self.buf.len().min(self.limits.max_frame_bytes);
                match memchr(0, &self.buf[from..window_end]) {
                    Some(at) => from + at,
                    None if self.buf.len() >= self.limits.max_frame_bytes => {
                        return Err(too_large(
                            &self.limits,
                            self.limits.max_frame_bytes.saturating_add(1),
                        ));
                    }
                    None => {
                        *scanned = window_end - body_start;
                        return Ok(None);
                    }
                }
            }
        };
        let State::Body { command, headers, .. } =
            std::mem::replace(&mut self.state, State::Head { line_start: 0, lines: 0 })
        else {
            unreachable!("checked above");
        };
        let mut frame = self.buf.split_to(body_end + 1);
        let mut body = frame.split_off(body_start);
        body.truncate(body_end - body_start);
        Ok(Some(Frame { command, headers, body: body.freeze() }))
    }

    /// Checks that the input ended between frames.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`] if part of a frame is still buffered.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let pending = self.buf.iter().any(|&b| b != b'\n' && b != b'\r');
        if pending { Err(DecodeError::Truncated { buffered: self.buf.len() }) } else { Ok(()) }
    }
}

fn too_large(limits: &Limits, actual: usize) -> DecodeError {
    DecodeError::FrameTooLarge { limit: limits.max_frame_bytes, actual }
}

/// Drops the `\n` and `\r\n` heart-beats that may precede a frame.
fn skip_heartbeats(buf: &mut BytesMut) {
    let mut skip = 0;
    loop {
        match buf[skip..] {
            [b'\n', ..] => skip += 1,
            [b'\r', b'\n', ..] => skip += 2,
            _ => break,
        }
    }
    buf.advance(skip);
}

/// Finds the end of the header block, enforcing the line, header-count and frame limits
/// on the way. Returns the offset of the body, or `None` if the blank line has not arrived.
fn scan_head(
    buf: &[u8],
    line_start: &mut usize,
    lines: &mut usize,
    limits: &Limits,
) -> Result<Option<usize>, DecodeError> {
    loop {
        let rest = &buf[*line_start..];
        let Some(eol) = memchr(b'\n', rest) else {
            let partial = rest.len().saturating_sub(usize::from(rest.last() == Some(&b'\r')));
            check_line(limits, partial)?;
            return Ok(None);
        };
        let line_len = eol - usize::from(eol > 0 && rest[eol - 1] == b'\r');
        check_line(limits, line_len)?;
        *line_start += eol + 1;
        if *line_start > limits.max_frame_bytes {
            return Err(too_large(limits, *line_start));
        }
        if line_len == 0 && *lines > 0 {
            return Ok(Some(*line_start));
        }
        *lines += 1;
        if *lines - 1 > limits.max_headers {
            return Err(DecodeError::TooManyHeaders {
                limit: limits.max_headers,
                actual: *lines - 1,
            });
        }
    }
}

fn check_line(limits: &Limits, len: usize) -> Result<(), DecodeError> {
    if len > limits.max_header_line_bytes {
        return Err(DecodeError::HeaderLineTooLong {
            limit: limits.max_header_line_bytes,
            actual: len,
        });
    }
    Ok(())
}

/// Parses a complete header block (command line, header lines, blank line).
fn parse_head(head: &[u8], version: Version) -> Result<(Command, Headers), DecodeError> {
    let mut lines =
        head.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let command_line = lines.next().unwrap_or_default();
    let command = Command::parse(command_line).ok_or_else(|| {
        DecodeError::UnknownCommand(String::from_utf8_lossy(command_line).into_owned())
    })?;
    let unescape = version > Version::V1_0 && command.escapes_headers();
    let mut headers = Headers::with_capacity(16, head.len());
    for line in lines.take_while(|line| !line.is_empty()) {
        let line = std::str::from_utf8(line).map_err(|_| DecodeError::NonUtf8("header line"))?;
        let (name, value) =
            line.split_once(':').ok_or_else(|| DecodeError::MissingColon(line.to_owned()))?;
        if unescape {
            headers.push(
                &unescape_header(name, line, version)?,
                &unescape_header(value, line, version)?,
            );
        } else {
            headers.push(name, value);
        }
    }
    Ok((command, headers))
}

fn unescape_header<'a>(
    text: &'a str,
    line: &str,
    version: Version,
) -> Result<Cow<'a, str>, DecodeError> {
    if !text.contains('\\') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let next = chars.next();
        match next {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if version >= Version::V1_2 => out.push('\r'),
            _ => {
                return Err(DecodeError::InvalidEscape {
                    header: line.to_owned(),
                    sequence: next.map_or_else(|| "\\".to_owned(), |n| format!("\\{n}")),
                });
            }
        }
    }
    Ok(Cow::Owned(out))
}

fn content_length(headers: &Headers) -> Result<Option<usize>, DecodeError> {
    match headers.get("content-length") {
        None => Ok(None),
        Some(value) => parse_content_length(value)
            .map(Some)
            .ok_or_else(|| DecodeError::InvalidContentLength(value.to_owned())),
    }
}

/// A content-length is decimal digits only: no sign, no spaces.
fn parse_content_length(value: &str) -> Option<usize> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    value.parse().ok().filter(|_| digits)
}

/// Writes `frame` as `version` bytes onto `out`: command, headers in order (escaped where
/// the version and command call for it), blank line, body, NUL. Nothing is added or dropped.
///
/// # Errors
/// An [`EncodeError`] if the frame cannot be written faithfully; `out` is then unchanged.
pub fn encode(frame: &Frame, version: Version, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    for (name, value) in frame.headers.iter() {
        check_header(name, value, frame.command, version)?;
    }
    match frame.header("content-length") {
        Some(declared) if parse_content_length(declared) != Some(frame.body.len()) => {
            return Err(EncodeError::ContentLengthMismatch {
                declared: declared.to_owned(),
                actual: frame.body.len(),
            });
        }
        None if memchr(0, &frame.body).is_some() => {
            return Err(EncodeError::NulWithoutContentLength);
        }
        _ => {}
    }

    out.reserve(encoded_len_hint(frame));
    out.extend_from_slice(frame.command.as_str().as_bytes());
    out.push(b'\n');
    let escape = escapes(frame.command, version);
    for (name, value) in frame.headers.iter() {
        write_header(out, name, value, escape, version);
    }
    out.push(b'\n');
    out.extend_from_slice(&frame.body);
    out.push(0);
    Ok(())
}

impl Frame {
    /// The frame encoded as `version` bytes, ready to share between connections.
    ///
    /// # Errors
    /// See [`encode`].
    pub fn to_bytes(&self, version: Version) -> Result<Bytes, EncodeError> {
        let mut out = Vec::new();
        encode(self, version, &mut out)?;
        Ok(Bytes::from(out))
    }
}

fn encoded_len_hint(frame: &Frame) -> usize {
    let headers: usize = frame.headers.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
    frame.command.as_str().len() + headers + frame.body.len() + 3
}

/// Writes one `name:value` header line of a `command` frame as `version` bytes, escaped
/// as [`encode`] would. For servers that splice per-recipient headers (`subscription`, `ack`)
/// in front of a frame encoded once for many recipients.
///
/// # Errors
/// [`EncodeError::UnrepresentableHeader`] if the header cannot be written; `out` is then
/// unchanged.
pub fn encode_header(
    name: &str,
    value: &str,
    command: Command,
    version: Version,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_header(name, value, command, version)?;
    write_header(out, name, value, escapes(command, version), version);
    Ok(())
}

/// Whether [`encode_header`] can write `name:value` in a `command` frame of `version` (a
/// value ending in CR needs 1.2; a newline needs escaping, which 1.0 lacks).
pub fn can_encode_header(name: &str, value: &str, command: Command, version: Version) -> bool {
    check_header(name, value, command, version).is_ok()
}

fn escapes(command: Command, version: Version) -> bool {
    version > Version::V1_0 && command.escapes_headers()
}

fn check_header(
    name: &str,
    value: &str,
    command: Command,
    version: Version,
) -> Result<(), EncodeError> {
    let representable = if escapes(command, version) {
        version >= Version::V1_2 || !value.ends_with('\r')
    } else {
        !name.contains([':', '\n']) && !value.contains('\n') && !value.ends_with('\r')
    };
    if representable {
        Ok(())
    } else {
        Err(EncodeError::UnrepresentableHeader { name: name.to_owned(), command, version })
    }
}

fn write_header(out: &mut Vec<u8>, name: &str, value: &str, escape: bool, version: Version) {
    write_header_text(out, name, escape, version);
    out.push(b':');
    write_header_text(out, value, escape, version);
    out.push(b'\n');
}

fn write_header_text(out: &mut Vec<u8>, text: &str, escape: bool, version: Version) {
    let special = |b: &u8| matches!(b, b'\\' | b'\n' | b':' | b'\r');
    if !escape || !text.as_bytes().iter().any(special) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for &b in text.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\r' if version >= Version::V1_2 => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}
