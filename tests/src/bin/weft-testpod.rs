//! A small client and server to run inside harness pods: connect and report the addresses the
//! socket saw, stream bytes with a checksum, and serve a checksum echo.
#![forbid(unsafe_code)]

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    /// How long a connect may take before it counts as failed.
    #[arg(long, global = true, default_value_t = 5000)]
    connect_timeout_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect, print `local=<addr> peer=<addr>` and close.
    Connect { addr: SocketAddr },
    /// Send `bytes` of a deterministic pattern, half-close, read the server's line and its echo
    /// until EOF, and print `sent=<n> sent_sum=<x> echoed=<n> echoed_sum=<x> peer=<addr>
    /// server: <the server's line>`. `peer` is what getpeername reports.
    Send {
        addr: SocketAddr,
        bytes: u64,
        /// Send these bytes first (a marker to look for in packet captures).
        #[arg(long)]
        marker: Option<String>,
        /// Keep the connection open this long after sending, before the half-close.
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
        /// Repeat the whole exchange on this many connections, one after another; the report
        /// is the last one's, preceded by `connections=<n>`.
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Open `count` connections to `addr` and keep them open, idle, for `seconds`: prints
    /// `held=<n>` once they are open (stopping early after 60 s), then waits.
    Hold {
        addr: SocketAddr,
        count: usize,
        seconds: u64,
    },
    /// Accept connections forever and echo each one's bytes back as they come, until EOF.
    Echo { addr: SocketAddr },
    /// Until `stop_file` exists (at most `max_seconds`), one request every `every_ms` on a new
    /// connection: 64 bytes to a `serve` server, checked on the way back. Prints `ok=<n>
    /// failed=<n> longest_gap_ms=<n>` and one `success_at_ms=<unix ms>` line per success;
    /// each failure goes to stderr.
    Loop {
        addr: SocketAddr,
        #[arg(long, default_value_t = 50)]
        every_ms: u64,
        #[arg(long)]
        stop_file: std::path::PathBuf,
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// `count` long-lived connections to an `echo` server, each exchanging a 32-byte message
    /// every `every_ms` until `stop_file` exists (at most `max_seconds`), then closing. Prints
    /// `connections=<n> completed=<n> exchanges=<n>`; each connection that broke goes to stderr.
    Chat {
        addr: SocketAddr,
        count: usize,
        #[arg(long, default_value_t = 100)]
        every_ms: u64,
        #[arg(long)]
        stop_file: std::path::PathBuf,
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// Accept connections forever; for each, read to EOF, then answer one line
    /// `server=<name> peer=<addr> received=<n> sum=<x>` followed by what it read, and close.
    Serve {
        addr: SocketAddr,
        #[arg(long, default_value = "testpod")]
        name: String,
    },
}

/// FNV-1a: cheap, order-sensitive, good enough to prove bytes arrived intact and in order.
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let n = offset + i as u64;
        *b = (n.wrapping_mul(31) ^ (n >> 8)).to_le_bytes()[0];
    }
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let timeout = CONNECT_TIMEOUT
        .get()
        .copied()
        .unwrap_or(Duration::from_secs(5));
    let stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_mins(1)))?;
    stream.set_write_timeout(Some(Duration::from_mins(1)))?;
    Ok(stream)
}

#[derive(Clone, Copy)]
struct SendOptions<'a> {
    marker: Option<&'a str>,
    hold: Duration,
}

fn send(addr: SocketAddr, total: u64, options: SendOptions<'_>) -> anyhow::Result<String> {
    let mut stream = connect(addr)?;
    let peer = stream.peer_addr()?;
    let reader = stream.try_clone()?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<(u64, u64, String)> {
        let mut reader = std::io::BufReader::with_capacity(64 * 1024, reader);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).context("reading the server's line")?;
        // The test server always answers a line: a close before it means no server answered.
        anyhow::ensure!(
            !line.is_empty(),
            "connection closed before the server answered"
        );
        let mut sum = Checksum::new();
        let mut received = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).context("reading reply")?;
            if n == 0 {
                return Ok((received, sum.0, line.trim().to_owned()));
            }
            received += n as u64;
            sum.update(&buf[..n]);
        }
    });
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    if let Some(marker) = options.marker {
        stream
            .write_all(marker.as_bytes())
            .context("sending the marker")?;
        sum.update(marker.as_bytes());
        sent += marker.len() as u64;
    }
    let total = total + sent;
    while sent < total {
        let n = usize::try_from((total - sent).min(buf.len() as u64))?;
        pattern(sent, &mut buf[..n]);
        stream.write_all(&buf[..n]).context("sending")?;
        sum.update(&buf[..n]);
        sent += n as u64;
    }
    // Hold the connection open, unless the other side closes it first.
    let held = std::time::Instant::now();
    while held.elapsed() < options.hold && !receiver.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    stream.shutdown(Shutdown::Write)?;
    let (echoed, echoed_sum, server_line) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(format!("sent={sent} sent_sum={:x} echoed={echoed} echoed_sum={echoed_sum:x} peer={peer} server: {server_line}", sum.0))
}

fn serve(addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.to_owned();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let peer = stream.peer_addr()?;
            let mut data = Vec::new();
            stream.read_to_end(&mut data)?;
            let mut sum = Checksum::new();
            sum.update(&data);
            // The reply starts only after the client's half-close was seen: that proves the
            // half-close crossed every hop while the other direction stayed open.
            stream.write_all(
                format!(
                    "server={name} peer={peer} received={} sum={:x}
",
                    data.len(),
                    sum.0
                )
                .as_bytes(),
            )?;
            stream.write_all(&data)?;
            stream.shutdown(Shutdown::Write)?;
            Ok(())
        });
    }
    Ok(())
}

fn echo(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut reader = stream.try_clone()?;
            std::io::copy(&mut reader, &mut stream)?;
            stream.shutdown(Shutdown::Write)?;
            Ok(())
        });
    }
    Ok(())
}

/// Bounded in time by `max_seconds` and by the stop file, in count by the pace.
fn request_loop(
    addr: SocketAddr,
    every: Duration,
    stop_file: &std::path::Path,
    max: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let (mut ok, mut failed, mut longest_gap) = (0u64, 0u64, Duration::ZERO);
    let mut last_success = std::time::Instant::now();
    let mut out = std::io::stdout().lock();
    while !stop_file.exists() && started.elapsed() < max {
        let began = std::time::Instant::now();
        let options = SendOptions {
            marker: None,
            hold: Duration::ZERO,
        };
        match send(addr, 64, options) {
            Ok(report) if report.contains("echoed=64 ") => {
                ok += 1;
                longest_gap = longest_gap.max(last_success.elapsed());
                last_success = std::time::Instant::now();
                writeln!(
                    out,
                    "success_at_ms={}",
                    weft_mesh::connections::now_unix_ms()
                )?;
            }
            Ok(report) => {
                failed += 1;
                eprintln!(
                    "{} short answer: {report}",
                    weft_mesh::connections::now_unix_ms()
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("{} failed: {e:#}", weft_mesh::connections::now_unix_ms());
            }
        }
        std::thread::sleep(every.saturating_sub(began.elapsed()));
    }
    writeln!(
        out,
        "ok={ok} failed={failed} longest_gap_ms={}",
        longest_gap.as_millis()
    )?;
    Ok(())
}

/// One long-lived connection: a message every `every`, each echoed intact, until told to stop.
fn chat_one(
    addr: SocketAddr,
    every: Duration,
    stop_file: &std::path::Path,
    max: Duration,
) -> anyhow::Result<u64> {
    let mut stream = connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let started = std::time::Instant::now();
    let mut exchanges = 0u64;
    let (mut message, mut echoed) = ([0u8; 32], [0u8; 32]);
    while !stop_file.exists() && started.elapsed() < max {
        pattern(exchanges * 32, &mut message);
        stream
            .write_all(&message)
            .with_context(|| format!("sending message {exchanges}"))?;
        stream
            .read_exact(&mut echoed)
            .with_context(|| format!("reading the echo of message {exchanges}"))?;
        anyhow::ensure!(echoed == message, "message {exchanges} came back changed");
        exchanges += 1;
        std::thread::sleep(every);
    }
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest)?;
    anyhow::ensure!(rest.is_empty(), "{} bytes after the close", rest.len());
    Ok(exchanges)
}

static CONNECT_TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = CONNECT_TIMEOUT.set(Duration::from_millis(args.connect_timeout_ms));
    match args.command {
        Cmd::Connect { addr } => {
            let stream = connect(addr)?;
            println!(
                "local={} peer={}",
                stream.local_addr()?,
                stream.peer_addr()?
            );
            Ok(())
        }
        Cmd::Send {
            addr,
            bytes,
            marker,
            hold_ms,
            count,
        } => {
            let options = SendOptions {
                marker: marker.as_deref(),
                hold: Duration::from_millis(hold_ms),
            };
            let mut report = String::new();
            for _ in 0..count {
                report = send(addr, bytes, options)?;
            }
            if count > 1 {
                print!("connections={count} ");
            }
            println!("{report}");
            Ok(())
        }
        Cmd::Serve { addr, name } => serve(addr, &name),
        Cmd::Echo { addr } => echo(addr),
        Cmd::Loop {
            addr,
            every_ms,
            stop_file,
            max_seconds,
        } => request_loop(
            addr,
            Duration::from_millis(every_ms),
            &stop_file,
            Duration::from_secs(max_seconds),
        ),
        Cmd::Chat {
            addr,
            count,
            every_ms,
            stop_file,
            max_seconds,
        } => {
            let every = Duration::from_millis(every_ms);
            let max = Duration::from_secs(max_seconds);
            let chats: Vec<_> = (0..count)
                .map(|_| {
                    let stop_file = stop_file.clone();
                    std::thread::spawn(move || chat_one(addr, every, &stop_file, max))
                })
                .collect();
            let (mut completed, mut exchanges) = (0usize, 0u64);
            for (i, chat) in chats.into_iter().enumerate() {
                match chat.join() {
                    Ok(Ok(n)) => {
                        completed += 1;
                        exchanges += n;
                    }
                    Ok(Err(e)) => eprintln!("connection {i} broke: {e:#}"),
                    Err(_) => eprintln!("connection {i} panicked"),
                }
            }
            println!("connections={count} completed={completed} exchanges={exchanges}");
            Ok(())
        }
        Cmd::Hold {
            addr,
            count,
            seconds,
        } => {
            let started = std::time::Instant::now();
            let mut held = Vec::with_capacity(count);
            // Bounded, and generous: a flood's SYNs can be dropped while the listener's accept
            // queue is full on a busy machine, and each drop costs a retransmit (1 s, then 3 s).
            while held.len() < count && started.elapsed() < Duration::from_mins(2) {
                if let Ok(stream) = connect(addr) {
                    held.push(stream);
                }
            }
            println!("held={}", held.len());
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(seconds));
            Ok(())
        }
    }
}
