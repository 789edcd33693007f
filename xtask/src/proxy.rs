//! A TCP relay that a browser test can freeze: bytes stop moving in both directions but
//! the sockets stay open, which is what a dead network path looks like to both ends. It is
//! the only way to make a real server go silent without closing, for the client's
//! heart-beat loss test. Controlled over HTTP (`/freeze`, `/thaw`) with CORS open.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// A running relay; its threads end with the process.
pub(crate) struct FreezableProxy {
    /// Where clients connect instead of the server.
    pub(crate) addr: String,
    /// Where `GET /freeze` and `GET /thaw` are answered.
    pub(crate) control: String,
}

impl FreezableProxy {
    pub(crate) fn start(upstream: &str) -> Result<FreezableProxy, String> {
        let frozen = Arc::new(AtomicBool::new(false));
        let relay = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let control = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let proxy = FreezableProxy {
            addr: relay.local_addr().map_err(|e| e.to_string())?.to_string(),
            control: control.local_addr().map_err(|e| e.to_string())?.to_string(),
        };
        let upstream = upstream.to_owned();
        let relay_frozen = frozen.clone();
        thread::spawn(move || {
            for client in relay.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else { continue };
                    let frozen = relay_frozen.clone();
                    thread::spawn(move || pump(from, to, &frozen));
                }
            }
        });
        thread::spawn(move || {
            for stream in control.incoming().map_while(Result::ok) {
                answer_control(stream, &frozen);
            }
        });
        Ok(proxy)
    }
}

/// Copies bytes one way, holding them while frozen.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn answer_control(mut stream: TcpStream, frozen: &AtomicBool) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Read the headers too: closing with unread input would reset the connection.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let (status, body) = match line.split_whitespace().nth(1) {
        Some("/freeze") => {
            frozen.store(true, Ordering::SeqCst);
            ("200 OK", "frozen")
        }
        Some("/thaw") => {
            frozen.store(false, Ordering::SeqCst);
            ("200 OK", "thawed")
        }
        _ => ("404 Not Found", "use /freeze or /thaw"),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
