//! STOMP 1.0, 1.1 and 1.2: frames, the byte codec, and typed commands.
//!
//! Three layers that never mix: [`frame`] (the untyped frame), [`codec`] (bytes <-> frame)
//! and [`command`] (frame <-> typed command, with each version's required headers).

pub mod codec;
pub mod command;
pub mod frame;

pub use codec::{
    DecodeError, Decoder, EncodeError, Limits, can_encode_header, encode, encode_header,
};
pub use command::{
    AckMode, Acknowledge, ClientCommand, ClientFrame, CommandError, Connect, HeartBeat, Send,
    ServerCommand, Subscribe,
};
pub use frame::{Command, Frame, Headers, Version};
