//! Turning one complete JSON object into a typed message and back.

use serde::Deserialize;
use std::borrow::Cow;

use crate::frame::FrameError;
use crate::reply::Reply;
use crate::request::{Command, Request};

/// Why a message could not be decoded.
///
/// Every variant concerns one message only: a [`Decoder`](crate::Decoder) that returned it
/// has already moved past the offending bytes and can go on with the next message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The byte stream could not be split into objects.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The message is not UTF-8 (JSON text must be; binary `hai_data` travels in
    /// `hai_data_b64`).
    #[error("message is not valid UTF-8 (bad byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte in the message.
        offset: usize,
    },
    /// The bytes are not a JSON object, or `"command"` is not a string.
    #[error("invalid JSON message: {0}")]
    Json(#[source] serde_json::Error),
    /// The object has no `"command"` key.
    #[error("message has no \"command\" key")]
    MissingCommand,
    /// The `"command"` names no known command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The command is known but a key has the wrong type or value.
    #[error("invalid {command} message: {source}")]
    Invalid {
        /// The message's command (an error reply can be addressed with it).
        command: Command,
        /// What serde_json rejected, with line and column.
        #[source]
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// The command of the rejected message, when it could be read.
    pub fn command(&self) -> Option<Command> {
        match self {
            DecodeError::Invalid { command, .. } => Some(*command),
            _ => None,
        }
    }
}

/// A top-level message type: [`Request`] or [`Reply`].
pub trait Message: Sized {
    /// Decodes one complete JSON object (no trailing bytes other than whitespace).
    fn decode(json: &[u8]) -> Result<Self, DecodeError>;

    /// Appends the compact JSON encoding (no whitespace at all) to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// The command name of this message.
    fn command(&self) -> Command;
}

/// Appends the encoding of `msg` to `out`. Messages are written back to back: the stream
/// never contains whitespace between them (C peers block on trailing bytes).
pub fn encode<M: Message>(msg: &M, out: &mut Vec<u8>) {
    msg.encode(out)
}

/// The encoding of `msg` in a new buffer.
pub fn to_vec<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    msg.encode(&mut out);
    out
}

fn write_json<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail with io errors, our Serialize impls never return errors
    // and there are no maps with non-string keys, so serde_json has nothing to report.
    serde_json::to_writer(out, value).expect("serializing a protocol message cannot fail");
}

fn parse<'a, T: Deserialize<'a>>(command: Command, json: &'a str) -> Result<T, DecodeError> {
    serde_json::from_str(json).map_err(|source| DecodeError::Invalid { command, source })
}

/// Checks UTF-8 once for the whole message: serde_json then skips its per-string check.
fn utf8(json: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(json).map_err(|e| DecodeError::NotUtf8 {
        offset: e.valid_up_to(),
    })
}

impl Message for Request {
    fn decode(json: &[u8]) -> Result<Self, DecodeError> {
        let json = utf8(json)?;
        Ok(match find_command(json)? {
            Command::Ehlo => Request::Ehlo(parse(Command::Ehlo, json)?),
            Command::Recv => Request::Recv(parse(Command::Recv, json)?),
            Command::Done => Request::Done(parse(Command::Done, json)?),
            Command::Queue => Request::Queue(parse(Command::Queue, json)?),
            Command::Status => Request::Status(parse(Command::Status, json)?),
            Command::Lock => Request::Lock(parse(Command::Lock, json)?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        write_json(self, out)
    }

    fn command(&self) -> Command {
        Request::command(self)
    }
}

impl Message for Reply {
    fn decode(json: &[u8]) -> Result<Self, DecodeError> {
        let json = utf8(json)?;
        Ok(match find_command(json)? {
            Command::Ehlo => Reply::Ehlo(parse(Command::Ehlo, json)?),
            Command::Recv => Reply::Recv(parse(Command::Recv, json)?),
            Command::Done => Reply::Done(parse(Command::Done, json)?),
            Command::Queue => Reply::Queue(parse(Command::Queue, json)?),
            Command::Status => Reply::Status(parse(Command::Status, json)?),
            Command::Lock => Reply::Lock(parse(Command::Lock, json)?),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        write_json(self, out)
    }

    fn command(&self) -> Command {
        Reply::command(self)
    }
}

impl Request {
    /// Decodes one complete JSON object; see [`Message::decode`].
    pub fn decode(json: &[u8]) -> Result<Self, DecodeError> {
        <Self as Message>::decode(json)
    }

    /// Appends the compact encoding to `out`; see [`Message::encode`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        <Self as Message>::encode(self, out)
    }
}

impl Reply {
    /// Decodes one complete JSON object; see [`Message::decode`].
    pub fn decode(json: &[u8]) -> Result<Self, DecodeError> {
        <Self as Message>::decode(json)
    }

    /// Appends the compact encoding to `out`; see [`Message::encode`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        <Self as Message>::encode(self, out)
    }
}

/// Finds the top-level `"command"` value.
///
/// The command can be anywhere in the object (the C writers put it last), and the typed
/// parse needs it first, so a cheap byte walk over the top level finds it; anything
/// unusual (escapes in keys, malformed JSON, a missing key) goes to serde_json, which gives
/// the precise error.
fn find_command(json: &str) -> Result<Command, DecodeError> {
    let name: Cow<'_, str> = match quick_command(json.as_bytes()) {
        Some(name) => Cow::Borrowed(name),
        None => {
            #[derive(Deserialize)]
            struct Peek<'a> {
                #[serde(borrow)]
                command: Option<Cow<'a, str>>,
            }
            let peek: Peek<'_> = serde_json::from_str(json).map_err(DecodeError::Json)?;
            peek.command.ok_or(DecodeError::MissingCommand)?
        }
    };
    Command::from_bytes(name.as_bytes())
        .ok_or_else(|| DecodeError::UnknownCommand(name.into_owned()))
}

/// The fast path of [`find_command`]: `None` means "ask serde_json".
fn quick_command(json: &[u8]) -> Option<&str> {
    let mut i = skip_ws(json, 0);
    if *json.get(i)? != b'{' {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(json, i);
        if *json.get(i)? != b'"' {
            return None;
        }
        let (key, next) = plain_string(json, i)?;
        i = skip_ws(json, next);
        if *json.get(i)? != b':' {
            return None;
        }
        i = skip_ws(json, i + 1);
        if key == b"command" {
            if *json.get(i)? != b'"' {
                return None;
            }
            let (value, _) = plain_string(json, i)?;
            return std::str::from_utf8(value).ok();
        }
        i = skip_value(json, i)?;
        i = skip_ws(json, i);
        if *json.get(i)? != b',' {
            // `}` means no command key: serde_json decides between invalid and missing.
            return None;
        }
        i += 1;
    }
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = json.get(i) {
        i += 1;
    }
    i
}

/// A string starting at `json[start] == '"'` with no escapes: its bytes and the index after it.
fn plain_string(json: &[u8], start: usize) -> Option<(&[u8], usize)> {
    let body = json.get(start + 1..)?;
    let end = body.iter().position(|&b| b == b'"' || b == b'\\')?;
    if body[end] == b'\\' {
        return None;
    }
    Some((&body[..end], start + 1 + end + 1))
}

/// Skips one value (roughly: brackets balanced, strings honoured); serde_json validates later.
fn skip_value(json: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    while let Some(&b) = json.get(i) {
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    if depth == 0 {
                        return Some(i);
                    }
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                b',' if depth == 0 => return Some(i),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_command_finds_the_key_anywhere_at_top_level() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"command":"done"}"#, Some("done")),
            (r#" { "a" : 1 , "command" : "recv" } "#, Some("recv")),
            (
                r#"{"x":{"command":"no"},"l":[1,"]",{"}":2}],"s":"a\"b","command":"lock"}"#,
                Some("lock"),
            ),
            (r#"{"x":{"command":"nested"}}"#, None),
            (r#"{"comm\u0061nd":"queue"}"#, None),
            (r#"{"command":"st\u0061tus"}"#, None),
            (r#"{"command":5}"#, None),
            (r#"["command","done"]"#, None),
            (r#"{"command""#, None),
        ];
        for (json, want) in cases {
            assert_eq!(quick_command(json.as_bytes()), *want, "{json}");
        }
    }

    #[test]
    fn find_command_falls_back_to_serde_for_escapes() {
        assert_eq!(
            find_command(r#"{"comm\u0061nd":"queue"}"#).unwrap(),
            Command::Queue
        );
        assert_eq!(
            find_command(r#"{"command":"st\u0061tus"}"#).unwrap(),
            Command::Status
        );
        assert!(matches!(
            find_command(r#"{"x":{"command":"done"}}"#),
            Err(DecodeError::MissingCommand)
        ));
        assert!(matches!(
            find_command(r#"{"command":5}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            find_command(r#"{"a":1 x}"#),
            Err(DecodeError::Json(_))
        ));
    }
}
