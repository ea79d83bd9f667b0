//! Open-loop load generator for Flywheel's benchmarks.
//!
//! `--rate R` schedules requests at fixed instants (R per second).
//! `latency_ms` is counted from the moment each request is written;
//! `from_schedule_ms` from its scheduled instant, so a stalled server is
//! charged for the requests it delayed (no coordinated omission) — but it
//! also carries the timer's up-to-1 ms wake-up lateness.
//! `--rate 0` runs closed-loop: every connection sends as fast as it can,
//! which measures throughput at saturation. `--concurrency N` keeps N
//! requests in flight at once (streams), each on its own connection.
//! Prints one JSON object with percentiles in milliseconds.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

struct Args {
    addr: SocketAddr,
    path: String,
    /// Request bodies, sent in turn (one for `--body-file`).
    bodies: Vec<Bytes>,
    next_body: std::sync::atomic::AtomicUsize,
    headers: Vec<(String, String)>,
    rate: u64,
    duration: Duration,
    connections: usize,
    concurrency: usize,
    warmup: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?,
        path: "/v1/chat/completions".into(),
        bodies: vec![Bytes::new()],
        next_body: std::sync::atomic::AtomicUsize::new(0),
        headers: Vec::new(),
        rate: 0,
        duration: Duration::from_secs(10),
        connections: 8,
        concurrency: 0,
        warmup: Duration::from_secs(2),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--path" => args.path = value()?,
            "--body-file" => {
                args.bodies = vec![std::fs::read(value()?).map_err(|e| format!("--body-file: {e}"))?.into()]
            }
            // One body a line, sent in turn: traffic that varies like a SOC's.
            "--bodies-file" => {
                let text = std::fs::read_to_string(value()?).map_err(|e| format!("--bodies-file: {e}"))?;
                args.bodies = text.lines().filter(|l| !l.trim().is_empty()).map(|l| Bytes::from(l.to_string())).collect();
                if args.bodies.is_empty() {
                    return Err("--bodies-file: no bodies".into());
                }
            }
            "--header" => {
                let v = value()?;
                let (k, val) = v.split_once(':').ok_or("--header takes NAME:VALUE")?;
                args.headers.push((k.trim().into(), val.trim().into()));
            }
            "--rate" => args.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--duration" => args.duration = Duration::from_secs(value()?.parse().map_err(|e| format!("--duration: {e}"))?),
            "--warmup" => args.warmup = Duration::from_secs(value()?.parse().map_err(|e| format!("--warmup: {e}"))?),
            "--connections" => args.connections = value()?.parse().map_err(|e| format!("--connections: {e}"))?,
            "--concurrency" => args.concurrency = value()?.parse().map_err(|e| format!("--concurrency: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

#[derive(Default)]
struct Stats {
    total: Option<Histogram<u64>>,
    first_byte: Option<Histogram<u64>>,
    /// Open loop only: latency counted from the scheduled instant.
    from_schedule: Option<Histogram<u64>>,
    ok: u64,
    errors: u64,
    /// Every finished request, warm-up included (for CPU per request).
    all: u64,
}

impl Stats {
    fn new() -> Self {
        Self {
            total: Histogram::new_with_bounds(1, 600_000_000, 3).ok(),
            first_byte: Histogram::new_with_bounds(1, 600_000_000, 3).ok(),
            from_schedule: Histogram::new_with_bounds(1, 600_000_000, 3).ok(),
            ..Self::default()
        }
    }
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request on `sender`; (time to first body byte, total) in µs from `from`.
async fn one(sender: &mut Sender, args: &Args, from: Instant) -> Result<(u64, u64), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let mut req = Request::post(&args.path)
        .header("host", args.addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in &args.headers {
        req = req.header(k, v);
    }
    let n = args.next_body.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = args.bodies[n % args.bodies.len()].clone();
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first = Some(from.elapsed());
        }
    }
    let total = from.elapsed();
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    Ok((micros(first.unwrap_or(total)), micros(total)))
}

fn record(stats: &mut Stats, result: Result<(u64, u64), String>) {
    stats.all += 1;
    match result {
        Ok((first, total)) => {
            stats.ok += 1;
            if let Some(h) = stats.first_byte.as_mut() {
                let _ = h.record(first);
            }
            if let Some(h) = stats.total.as_mut() {
                let _ = h.record(total);
            }
        }
        Err(e) => {
            if stats.errors < 3 {
                eprintln!("request failed: {e}");
            }
            stats.errors += 1;
        }
    }
}

/// Each connection takes scheduled instants from a shared clock; a request
/// that cannot start on time is still measured from its scheduled instant.
async fn open_loop(args: Arc<Args>, stats: Arc<Mutex<Stats>>, start: Instant, end: Instant, record_from: Instant) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let interval_ns = 1_000_000_000 / args.rate.max(1);
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (args, stats, next) = (args.clone(), stats.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let Ok(mut sender) = connect(args.addr).await else { return };
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let scheduled = start + Duration::from_nanos(n * interval_ns);
                if scheduled >= end {
                    return;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let sent = Instant::now();
                let result = one(&mut sender, &args, sent).await;
                // The timer wakes up to a millisecond late; lateness beyond
                // that means the previous request on this connection ran
                // over, which the schedule-based latency charges.
                let late = u64::try_from(sent.saturating_duration_since(scheduled).as_micros()).unwrap_or(u64::MAX);
                if result.is_err() {
                    match connect(args.addr).await {
                        Ok(s) => sender = s,
                        Err(_) => return,
                    }
                }
                let mut stats = stats.lock().await;
                if scheduled >= record_from {
                    if let (Ok((_, total)), Some(h)) = (&result, stats.from_schedule.as_mut()) {
                        let _ = h.record(total + late);
                    }
                    record(&mut stats, result);
                } else {
                    stats.all += 1;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

async fn closed_loop(args: Arc<Args>, stats: Arc<Mutex<Stats>>, end: Instant, record_from: Instant, per_request_connection: bool) {
    let count = if per_request_connection { args.concurrency } else { args.connections };
    let mut workers = Vec::new();
    for _ in 0..count {
        let (args, stats) = (args.clone(), stats.clone());
        workers.push(tokio::spawn(async move {
            let Ok(mut sender) = connect(args.addr).await else { return };
            while Instant::now() < end {
                let started = Instant::now();
                let result = one(&mut sender, &args, started).await;
                if result.is_err() {
                    match connect(args.addr).await {
                        Ok(s) => sender = s,
                        Err(_) => return,
                    }
                }
                let mut stats = stats.lock().await;
                if started >= record_from {
                    record(&mut stats, result);
                } else {
                    stats.all += 1;
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
}

fn percentiles(h: &Option<Histogram<u64>>) -> serde_json::Value {
    let Some(h) = h else { return serde_json::Value::Null };
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({"p50": ms(0.50), "p90": ms(0.90), "p99": ms(0.99), "p999": ms(0.999), "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0})
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let stats = Arc::new(Mutex::new(Stats::new()));
    let start = Instant::now();
    let record_from = start + args.warmup;
    let end = record_from + args.duration;
    if args.concurrency > 0 {
        closed_loop(args.clone(), stats.clone(), end, record_from, true).await;
    } else if args.rate > 0 {
        open_loop(args.clone(), stats.clone(), start, end, record_from).await;
    } else {
        closed_loop(args.clone(), stats.clone(), end, record_from, false).await;
    }
    let stats = stats.lock().await;
    let seconds = args.duration.as_secs_f64();
    let out = serde_json::json!({
        "ok": stats.ok,
        "errors": stats.errors,
        "all_requests": stats.all,
        "achieved_rps": stats.ok as f64 / seconds,
        "latency_ms": percentiles(&stats.total),
        "first_byte_ms": percentiles(&stats.first_byte),
        "from_schedule_ms": percentiles(&stats.from_schedule),
    });
    println!("{out}");
}
