//! The only code that talks to the outside: the HTTP API (`api`), the live connection
//! through `client-wasm`'s Rust client (`live`), a share link's event stream (`watch`), the
//! saved session (`session`) and browser notifications (`notify`). Components call these;
//! they never fetch or open sockets.

pub mod api;
pub mod live;
pub mod notify;
pub mod session;
pub mod watch;
