//! The protocol crate's one test binary: the STOMP codec against its rules, and the npm
//! package's TypeScript DTO against the Rust type.

mod codec;
mod typescript;
