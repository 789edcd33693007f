//! `taskpulse-yardstick [--listen ADDR]`: about the least a STOMP-over-WebSocket fan-out
//! server can do, to measure TaskPulse's broker against (`cargo xtask load --compare`,
//! which runs the same scenarios against both in one run and prints the ratios).
//!
//! It answers CONNECT (no token check), SUBSCRIBE (RECEIPT when asked), SEND (one MESSAGE
//! encoded once, the same bytes queued to every subscriber of the destination) and
//! DISCONNECT (RECEIPT), with `shared`'s codec, on tokio-tungstenite. Nothing else: no
//! authentication, limits, storage, acknowledgements, heart-beats or per-user destinations.
//! Subscribers of one destination that chose the same subscription id (the load tool's
//! always do) share one encoding; others get one each.

use std::{
    collections::HashMap,
    io::Write,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use taskpulse_shared::stomp::{Command, Decoder, Frame, Limits, Version};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{
    Message,
    handshake::server::{ErrorResponse, Request, Response},
    http::HeaderValue,
};

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "taskpulse-yardstick", about = "A minimal STOMP fan-out server to compare with")]
struct Args {
    /// Where to listen; port 0 picks a free one (the first line printed names it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    match serve(&Args::parse().listen).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("taskpulse-yardstick: {why}");
            ExitCode::FAILURE
        }
    }
}

/// A connection's queue of WebSocket messages to write.
type Outbox = mpsc::UnboundedSender<Message>;

/// One SUBSCRIBE.
struct Subscriber {
    connection: u64,
    /// The subscription id the client chose.
    id: String,
    outbox: Outbox,
}

/// Who is subscribed where.
#[derive(Default)]
struct Subscribers {
    by_destination: Mutex<HashMap<String, Vec<Subscriber>>>,
}

/// Serves on `listen` until the process is killed; prints the address it bound.
///
/// # Errors
/// The address cannot be bound.
async fn serve(listen: &str) -> Result<(), String> {
    let listener = TcpListener::bind(listen).await.map_err(|e| format!("bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The line the testkit's process spawner waits for (as the server's).
    println!("yardstick listening on http://{addr} (STOMP over WebSocket at /ws)");
    let _ = std::io::stdout().flush();
    let subscribers = Arc::new(Subscribers::default());
    let ids = AtomicU64::new(0);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(stream, subscribers.clone(), id));
    }
}

/// Accepts the subprotocol the client offers first (`v12.stomp` from the load tool).
#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|value| value.to_str().ok())
        .and_then(|list| list.split(',').next())
        .map(str::trim)
        .and_then(|first| HeaderValue::from_str(first).ok());
    if let Some(protocol) = offered {
        response.headers_mut().insert("sec-websocket-protocol", protocol);
    }
    Ok(response)
}

async fn connection(stream: TcpStream, subscribers: Arc<Subscribers>, id: u64) {
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, choose_subprotocol).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (outbox, mut queued) = mpsc::unbounded_channel::<Message>();
    // One writer per connection: writes what is queued, flushing once the queue is empty.
    let writer = tokio::spawn(async move {
        while let Some(message) = queued.recv().await {
            if sink.feed(message).await.is_err() {
                return;
            }
            while let Ok(message) = queued.try_recv() {
                if sink.feed(message).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut decoder = Decoder::new(Version::V1_2, Limits::default());
    let mut destinations: Vec<String> = Vec::new();
    'session: while let Some(Ok(message)) = source.next().await {
        let data: Bytes = match message {
            Message::Text(text) => Bytes::from(text),
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            _ => continue,
        };
        decoder.feed(&data);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => {
                    if !handle(frame, id, &outbox, &subscribers, &mut destinations) {
                        break 'session;
                    }
                }
                Ok(None) => break,
                Err(_) => break 'session,
            }
        }
    }
    {
        let mut map = subscribers.by_destination.lock().unwrap_or_else(|e| e.into_inner());
        for destination in destinations {
            if let Some(list) = map.get_mut(&destination) {
                list.retain(|subscriber| subscriber.connection != id);
            }
        }
    }
    drop(outbox);
    let _ = writer.await;
}

/// Handles one frame; `false` ends the session.
fn handle(
    frame: Frame,
    id: u64,
    outbox: &Outbox,
    subscribers: &Subscribers,
    destinations: &mut Vec<String>,
) -> bool {
    let send = |frame: Frame| match frame.to_bytes(Version::V1_2) {
        Ok(bytes) => outbox.send(Message::Binary(bytes)).is_ok(),
        Err(_) => false,
    };
    let receipt = |frame: &Frame| {
        frame
            .header("receipt")
            .map(|receipt| send(Frame::new(Command::Receipt).with_header("receipt-id", receipt)))
    };
    match frame.command {
        Command::Connect | Command::Stomp => send(
            Frame::new(Command::Connected)
                .with_header("version", "1.2")
                .with_header("heart-beat", "0,0"),
        ),
        Command::Subscribe => {
            let (Some(destination), Some(sub)) = (frame.header("destination"), frame.header("id"))
            else {
                return false;
            };
            subscribers
                .by_destination
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(destination.to_owned())
                .or_default()
                .push(Subscriber { connection: id, id: sub.to_owned(), outbox: outbox.clone() });
            destinations.push(destination.to_owned());
            receipt(&frame).unwrap_or(true)
        }
        Command::Send => {
            let Some(destination) = frame.header("destination") else { return false };
            fan_out(subscribers, destination, &frame.body);
            receipt(&frame).unwrap_or(true)
        }
        Command::Disconnect => {
            receipt(&frame);
            false
        }
        _ => true,
    }
}

/// One MESSAGE per distinct subscription id, its bytes shared by every subscriber with it.
fn fan_out(subscribers: &Subscribers, destination: &str, body: &Bytes) {
    static MESSAGE_IDS: AtomicU64 = AtomicU64::new(0);
    let message_id = MESSAGE_IDS.fetch_add(1, Ordering::Relaxed).to_string();
    let map = subscribers.by_destination.lock().unwrap_or_else(|e| e.into_inner());
    let Some(list) = map.get(destination) else { return };
    let mut encoded: Vec<(&str, Bytes)> = Vec::with_capacity(1);
    for Subscriber { id: sub, outbox, .. } in list {
        let bytes = match encoded.iter().find(|(id, _)| id == sub) {
            Some((_, bytes)) => bytes.clone(),
            None => {
                let frame = Frame::new(Command::Message)
                    .with_header("destination", destination)
                    .with_header("message-id", &message_id)
                    .with_header("subscription", sub)
                    .with_body(body.clone());
                let Ok(bytes) = frame.to_bytes(Version::V1_2) else { return };
                encoded.push((sub, bytes.clone()));
                bytes
            }
        };
        let _ = outbox.send(Message::Binary(bytes));
    }
}
