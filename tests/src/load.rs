//! The benchmark's load generator and its echo server: fixed-size request/response over plain
//! TCP, open-loop at a fixed rate (latency measured from each request's intended send time, so
//! a stalled response is charged to every request queued behind it: no coordinated omission),
//! closed-loop to find saturation, one connection per request, and idle connections held open.
//!
//! Clients use one blocking thread per connection with a 1 ns timer slack: tokio's millisecond
//! timer would add up to a millisecond of schedule error to latencies measured in microseconds.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// How long a client waits for one connect or one response before it counts an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Every loop is bounded in count as well as in time: no worker makes more exchanges than this.
const MAX_EXCHANGES_PER_WORKER: u64 = 2_000_000;
/// `hold_idle` gives up when opening its connections takes longer than this.
const HOLD_IDLE_DEADLINE: Duration = Duration::from_mins(2);

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds to fractional µs")]
        let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds to fractional µs")]
        let max = histogram.max() as f64 / 1000.0;
        Self {
            p50: us(0.50),
            p90: us(0.90),
            p99: us(0.99),
            p999: us(0.999),
            max,
        }
    }
}

/// What one client run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Completed request/response exchanges (or connections, for the connection-rate run).
    pub completed: u64,
    /// Every exchange made, warm-up included (the denominator for CPU per request).
    pub sent: u64,
    /// Failed exchanges, plus (open loop) scheduled requests never sent before the deadline.
    pub errors: u64,
    pub elapsed_s: f64,
    /// Completed per second. In the open loop, over the time from the first scheduled request
    /// to the last response: a backlog that drains after the schedule ends lowers it below the
    /// offered rate.
    pub per_second: f64,
    pub latency_us: Percentiles,
    /// CPU seconds (user + system) the client process used.
    pub client_cpu_s: f64,
}

/// A fixed-rate run over a fixed set of connections.
#[derive(Clone, Debug)]
pub struct OpenLoop {
    pub target: SocketAddr,
    pub rate: f64,
    pub connections: usize,
    pub size: usize,
    pub duration: Duration,
    /// Requests before this are sent but not recorded (connection and cache warm-up).
    pub warmup: Duration,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("static histogram bounds")
}

fn connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn exchange(stream: &mut TcpStream, request: &[u8], response: &mut [u8]) -> std::io::Result<()> {
    stream.write_all(request)?;
    stream.read_exact(response)
}

/// One client connection the load loops drive: each call makes one request and reads its
/// whole response. The loops own the schedule, the timing and the error counts.
pub trait Exchanger {
    fn exchange(&mut self) -> std::io::Result<()>;
}

/// The fixed-size echo exchange over plain TCP ([`serve`] is its server).
struct TcpEcho {
    stream: TcpStream,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl TcpEcho {
    fn connect(target: SocketAddr, size: usize) -> std::io::Result<Self> {
        Ok(Self {
            stream: connect(target)?,
            request: vec![b'q'; size],
            response: vec![0; size],
        })
    }
}

impl Exchanger for TcpEcho {
    fn exchange(&mut self) -> std::io::Result<()> {
        exchange(&mut self.stream, &self.request, &mut self.response)
    }
}

fn precise_timers() {
    // Best effort: without it sleeps overshoot by the default 50 µs slack, equally on both paths.
    let _ = nix::sys::prctl::set_timerslack(1);
}

fn process_cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let secs = |t: nix::sys::time::TimeVal| {
            #[expect(clippy::cast_precision_loss, reason = "seconds since start fit")]
            let s = t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            s
        };
        secs(u.user_time()) + secs(u.system_time())
    })
}

/// Runs `workers` threads and merges what they recorded.
fn run_workers<F>(workers: usize, work: F) -> (Histogram<u64>, u64, u64, u64)
where
    F: Fn(usize, &mut Histogram<u64>, &AtomicU64) -> (u64, u64) + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let errors = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..workers)
        .map(|index| {
            let work = Arc::clone(&work);
            let errors = Arc::clone(&errors);
            std::thread::spawn(move || {
                precise_timers();
                let mut histogram = new_histogram();
                let done = work(index, &mut histogram, &errors);
                (histogram, done)
            })
        })
        .collect();
    let mut merged = new_histogram();
    let (mut completed, mut sent) = (0, 0);
    for handle in handles {
        if let Ok((histogram, (done, tried))) = handle.join() {
            let _ = merged.add(&histogram);
            completed += done;
            sent += tried;
        } else {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    (merged, completed, sent, errors.load(Ordering::Relaxed))
}

fn report(
    histogram: &Histogram<u64>,
    completed: u64,
    sent: u64,
    errors: u64,
    elapsed: Duration,
) -> LoadReport {
    let elapsed_s = elapsed.as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "request counts fit")]
    let per_second = completed as f64 / elapsed_s.max(1e-9);
    LoadReport {
        completed,
        sent,
        errors,
        elapsed_s,
        per_second,
        latency_us: Percentiles::of(histogram),
        client_cpu_s: process_cpu_seconds(),
    }
}

/// Sends at `rate` requests per second spread evenly over the connections, each connection one
/// request at a time, and records latency from each request's scheduled send time. Stops at the
/// end of the schedule, or [`IO_TIMEOUT`] after it with the rest of a backlog counted as errors.
pub fn open_loop(spec: &OpenLoop) -> LoadReport {
    let (target, size) = (spec.target, spec.size);
    open_loop_with(spec, move || TcpEcho::connect(target, size))
}

/// [`open_loop`] over connections `connect` opens (any protocol); `spec.target` and
/// `spec.size` are the connector's business.
pub fn open_loop_with<E, F>(spec: &OpenLoop, connect: F) -> LoadReport
where
    E: Exchanger,
    F: Fn() -> std::io::Result<E> + Send + Sync + 'static,
{
    #[expect(clippy::cast_precision_loss, reason = "connection counts are small")]
    let interval = Duration::from_secs_f64(spec.connections as f64 / spec.rate.max(1e-3));
    let begin = Instant::now() + Duration::from_millis(100);
    let spec = spec.clone();
    let measured_from = begin + spec.warmup;
    let end = measured_from + spec.duration;
    let hard_end = end + IO_TIMEOUT;
    let connections = spec.connections;
    // The last response of the measured window, in ns after `measured_from`.
    let last_response = Arc::new(AtomicU64::new(0));
    let last = Arc::clone(&last_response);
    let (histogram, completed, sent, errors) =
        run_workers(connections, move |index, histogram, errors| {
            // Stagger the connections over one interval so the aggregate rate is smooth.
            #[expect(
                clippy::cast_possible_truncation,
                reason = "connection counts are small"
            )]
            let offset = interval / connections as u32 * index as u32;
            let scheduled = |k: u32| begin + offset + interval * k;
            let (mut done, mut sent) = (0, 0);
            let mut stream = connect().ok();
            let mut k = 0_u32;
            while scheduled(k) < end && u64::from(k) < MAX_EXCHANGES_PER_WORKER {
                let intended = scheduled(k);
                if Instant::now() >= hard_end {
                    break;
                }
                if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                k += 1;
                let Some(open) = stream.as_mut() else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    stream = connect().ok();
                    continue;
                };
                if open.exchange().is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    stream = connect().ok();
                    continue;
                }
                sent += 1;
                if intended >= measured_from {
                    let now = Instant::now();
                    let latency = now.duration_since(intended);
                    let _ = histogram.record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
                    let since = now.duration_since(measured_from).as_nanos();
                    last.fetch_max(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
                    done += 1;
                }
            }
            // What the schedule still held when the worker stopped was never sent.
            let mut unsent = 0;
            while scheduled(k) < end && u64::from(k) < MAX_EXCHANGES_PER_WORKER {
                unsent += u64::from(scheduled(k) >= measured_from);
                k += 1;
            }
            errors.fetch_add(unsent, Ordering::Relaxed);
            (done, sent)
        });
    let drained = Duration::from_nanos(last_response.load(Ordering::Relaxed));
    report(
        &histogram,
        completed,
        sent,
        errors,
        drained.max(spec.duration),
    )
}

/// As many requests as `connections` connections complete back to back: the saturation rate.
pub fn closed_loop(
    target: SocketAddr,
    connections: usize,
    size: usize,
    duration: Duration,
) -> LoadReport {
    closed_loop_with(connections, duration, move || {
        TcpEcho::connect(target, size)
    })
}

/// [`closed_loop`] over connections `connect` opens (any protocol).
pub fn closed_loop_with<E, F>(connections: usize, duration: Duration, connect: F) -> LoadReport
where
    E: Exchanger,
    F: Fn() -> std::io::Result<E> + Send + Sync + 'static,
{
    let begin = Instant::now();
    let end = begin + duration;
    let (histogram, completed, sent, errors) =
        run_workers(connections, move |_, histogram, errors| {
            let Ok(mut stream) = connect() else {
                errors.fetch_add(1, Ordering::Relaxed);
                return (0, 0);
            };
            let mut done = 0;
            while Instant::now() < end && done < MAX_EXCHANGES_PER_WORKER {
                let sent = Instant::now();
                if stream.exchange().is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let _ =
                    histogram.record(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
                done += 1;
            }
            (done, done)
        });
    report(&histogram, completed, sent, errors, begin.elapsed())
}

/// Opens, uses once and closes connections back to back from `workers` threads.
pub fn connection_rate(
    target: SocketAddr,
    workers: usize,
    size: usize,
    duration: Duration,
) -> LoadReport {
    let begin = Instant::now();
    let end = begin + duration;
    let (histogram, completed, sent, errors) = run_workers(workers, move |_, histogram, errors| {
        let request = vec![b'q'; size];
        let mut response = vec![0; size];
        let (mut done, mut tries) = (0, 0);
        while Instant::now() < end && tries < MAX_EXCHANGES_PER_WORKER {
            tries += 1;
            let started = Instant::now();
            let result =
                connect(target).and_then(|mut s| exchange(&mut s, &request, &mut response));
            if result.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                // A refused or exhausted connect must not turn into a hot loop.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let _ =
                histogram.record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            done += 1;
        }
        (done, done)
    });
    report(&histogram, completed, sent, errors, begin.elapsed())
}

/// Opens `count` connections, proves each reaches the server with one exchange, then holds
/// them: `on_ready` runs while they are all open (the caller measures memory then).
pub fn hold_idle(
    target: SocketAddr,
    count: usize,
    size: usize,
    on_ready: impl FnOnce(&LoadReport),
) -> anyhow::Result<LoadReport> {
    let begin = Instant::now();
    let request = vec![b'q'; size];
    let mut response = vec![0; size];
    let mut held = Vec::with_capacity(count);
    let mut histogram = new_histogram();
    for n in 0..count {
        anyhow::ensure!(
            begin.elapsed() < HOLD_IDLE_DEADLINE,
            "opened only {n} of {count} idle connections in {HOLD_IDLE_DEADLINE:?}"
        );
        let started = Instant::now();
        let mut stream = connect(target).with_context(|| format!("opening idle connection {n}"))?;
        exchange(&mut stream, &request, &mut response)
            .with_context(|| format!("first exchange on idle connection {n}"))?;
        let _ = histogram.record(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        held.push(stream);
    }
    let report = report(
        &histogram,
        held.len() as u64,
        held.len() as u64,
        0,
        begin.elapsed(),
    );
    on_ready(&report);
    drop(held);
    Ok(report)
}

/// The echo side: answers every `size` bytes read with `size` bytes, on any number of
/// connections (tokio, so ten thousand idle ones cost no threads).
pub async fn serve(listen: SocketAddr, size: usize) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buffer = vec![0; size];
            let reply = vec![b'r'; size];
            while stream.read_exact(&mut buffer).await.is_ok() {
                if stream.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
    }
}
