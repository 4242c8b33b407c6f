//! Load generators and measurements over `http::Client`. Every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::Client;

/// The instant job every request creates.
pub const JOB_BODY: &[u8] = br#"{"action":"health_check","target":"bench","requested_by":"bench@example.com","parameters":{"simulate":{"duration_ms":0,"fail":false}}}"#;

/// Unexpected answers, I/O errors and lost jobs seen anywhere in the run.
#[derive(Default)]
pub struct Errors {
    list: Mutex<Vec<String>>,
    count: AtomicU64,
}

impl Errors {
    pub fn add(&self, what: impl Into<String>) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            let what = what.into();
            eprintln!("error: {what}");
            self.list.lock().unwrap().push(what);
        }
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    pub fn first(&self) -> Vec<String> {
        self.list.lock().unwrap().clone()
    }
}

pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Microseconds since the epoch of `2026-11-23T12:53:18.276125Z` (UTC, optional fraction).
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?);
    let secs = days * 86_400 + num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
    let rest = &s[19..];
    let (frac, tz) = match rest.strip_prefix('.') {
        Some(f) => {
            let end = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
            (&f[..end], &f[end..])
        }
        None => ("", rest),
    };
    if tz != "Z" && tz != "+00:00" {
        return None;
    }
    let mut us = 0i64;
    for (i, c) in frac.bytes().take(6).enumerate() {
        us += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
    }
    Some(secs * 1_000_000 + us)
}

/// Latencies in microseconds.
#[derive(Default, Clone)]
pub struct Lat(pub Vec<u32>);

impl Lat {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u32::MAX as u128) as u32);
    }
    pub fn push_us(&mut self, us: i64) {
        self.0.push(us.clamp(0, u32::MAX as i64) as u32);
    }
    /// Percentile in milliseconds (nearest rank), NaN when empty.
    pub fn pct_ms(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.sort_unstable();
        let idx = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        f64::from(self.0[idx.clamp(1, self.0.len()) - 1]) / 1000.0
    }
}

fn job_id_of(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    let start = s.find("\"job_id\":\"")? + 10;
    let id = s.get(start..start + 36)?;
    Some(id.to_string())
}

/// One accepted job.
pub struct Posted {
    pub id: String,
    /// Client clock when the 202 arrived.
    pub t202_us: i64,
    /// Client clock when the (successful attempt of the) request was sent.
    pub tsend_us: i64,
}

/// Dispatch latency seen from the client: `started_at - t202` (clamped at 0; a lower bound of
/// "202 sent -> RUNNING", since the answer takes time to arrive) and `started_at - tsend` (an
/// upper bound). Beside them, what splits the two: the gateway's own `started_at - created_at`
/// (both stamped by gateway processes on this machine's clock) and each probe's POST round trip.
#[derive(Default)]
pub struct Disp {
    pub from_202: Lat,
    pub from_send: Lat,
    pub from_created: Lat,
    pub post: Lat,
}

impl Disp {
    fn push(&mut self, s: Stamps, p: &Posted) {
        self.from_202.push_us(s.started_us - p.t202_us);
        self.from_send.push_us(s.started_us - p.tsend_us);
        self.from_created.push_us(s.started_us - s.created_us);
        self.post.push_us(p.t202_us - p.tsend_us);
    }
}

/// A job's `created_at` and `started_at`, in µs.
#[derive(Clone, Copy, Debug)]
pub struct Stamps {
    pub created_us: i64,
    pub started_us: i64,
}

/// POSTs one job, retrying 429/503 (honouring `Retry-After`, at most 1 s per wait, 60 attempts).
/// Returns the job and the latency from the first attempt to the 202.
pub async fn post_job(client: &mut Client, errs: &Errors, retries: &AtomicU64) -> Option<(Posted, Duration)> {
    let t0 = Instant::now();
    for _ in 0..60 {
        let tsend_us = now_us();
        match client.request("POST", "/v1/jobs", Some(JOB_BODY)).await {
            Ok(r) if r.status == 202 => {
                let t202_us = now_us();
                let lat = t0.elapsed();
                return match job_id_of(&r.body) {
                    Some(id) => Some((Posted { id, t202_us, tsend_us }, lat)),
                    None => {
                        errs.add(format!("POST /v1/jobs: 202 without job_id: {}", r.text()));
                        None
                    }
                };
            }
            Ok(r) if r.status == 429 || r.status == 503 => {
                retries.fetch_add(1, Ordering::Relaxed);
                let wait = Duration::from_secs(r.retry_after.unwrap_or(0))
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                tokio::time::sleep(wait).await;
            }
            Ok(r) => {
                errs.add(format!("POST /v1/jobs: unexpected {}: {}", r.status, r.text()));
                return None;
            }
            Err(e) => {
                // Not retried: the job may have been stored, and the counts must stay exact.
                errs.add(format!("POST /v1/jobs: {e}"));
                return None;
            }
        }
    }
    errs.add("POST /v1/jobs: still 429/503 after 60 attempts");
    None
}

pub struct PostRun {
    pub jobs: Vec<Posted>,
    pub lat: Lat,
    pub elapsed: Duration,
    pub retries: u64,
}

impl PostRun {
    pub fn rate(&self) -> f64 {
        self.jobs.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Closed loop: `conns` connections POST `n` jobs in all, each as fast as answers come, stopping at
/// `limit` if not done.
pub async fn post_closed(addr: SocketAddr, n: usize, conns: usize, limit: Duration, errs: &Arc<Errors>) -> PostRun {
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (next, retries, errs) = (next.clone(), retries.clone(), errs.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut jobs = Vec::with_capacity(n / conns + 1);
            let mut lat = Lat::default();
            while next.fetch_add(1, Ordering::Relaxed) < n && Instant::now() < deadline {
                if let Some((p, l)) = post_job(&mut client, &errs, &retries).await {
                    jobs.push(p);
                    lat.push(l);
                }
            }
            (jobs, lat)
        }));
    }
    let mut run = PostRun { jobs: Vec::with_capacity(n), lat: Lat::default(), elapsed: Duration::ZERO, retries: 0 };
    for t in tasks {
        let (jobs, lat) = t.await.expect("post task");
        run.jobs.extend(jobs);
        run.lat.0.extend(lat.0);
    }
    run.elapsed = start.elapsed();
    run.retries = retries.load(Ordering::Relaxed);
    if run.jobs.len() < n && Instant::now() >= deadline {
        errs.add(format!("POST load: only {} of {n} jobs accepted within {:?}", run.jobs.len(), limit));
    }
    run
}

/// Open loop: about `rate` POSTs a second for `dur`, spread over `conns` connections (a connection
/// that falls behind skips ticks rather than bursting).
pub async fn post_paced(addr: SocketAddr, rate: f64, dur: Duration, conns: usize, errs: &Arc<Errors>) -> PostRun {
    let rate = rate.max(1.0);
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let retries = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let (retries, errs) = (retries.clone(), errs.clone());
        let offset = period.mul_f64(c as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut jobs = Vec::new();
            let mut lat = Lat::default();
            let mut tick = tokio::time::interval_at((start + offset).into(), period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let max = (rate * dur.as_secs_f64() / conns as f64).ceil() as usize + 1;
            for _ in 0..max {
                tick.tick().await;
                if start.elapsed() >= dur {
                    break;
                }
                if let Some((p, l)) = post_job(&mut client, &errs, &retries).await {
                    jobs.push(p);
                    lat.push(l);
                }
            }
            (jobs, lat)
        }));
    }
    let mut run = PostRun { jobs: Vec::new(), lat: Lat::default(), elapsed: Duration::ZERO, retries: 0 };
    for t in tasks {
        let (jobs, lat) = t.await.expect("paced task");
        run.jobs.extend(jobs);
        run.lat.0.extend(lat.0);
    }
    run.elapsed = start.elapsed();
    run.retries = retries.load(Ordering::Relaxed);
    run
}

/// Closed loop `GET /v1/jobs/{id}` over `ids` for `dur` on `conns` connections: (answers, elapsed, latencies).
pub async fn get_closed(
    addr: SocketAddr,
    ids: Arc<Vec<String>>,
    conns: usize,
    dur: Duration,
    errs: &Arc<Errors>,
) -> (u64, Duration, Lat) {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for c in 0..conns {
        let (ids, errs) = (ids.clone(), errs.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(addr);
            let mut lat = Lat::default();
            let mut i = c * 7919;
            let mut path = String::with_capacity(64);
            // Bounded by time, and by count as a backstop.
            for _ in 0..10_000_000u64 {
                if start.elapsed() >= dur || ids.is_empty() {
                    break;
                }
                i = (i + 104_729) % ids.len();
                path.clear();
                path.push_str("/v1/jobs/");
                path.push_str(&ids[i]);
                let t0 = Instant::now();
                match client.get(&path).await {
                    Ok(r) if r.status == 200 => lat.push(t0.elapsed()),
                    Ok(r) => {
                        errs.add(format!("GET {path}: unexpected {}: {}", r.status, r.text()));
                        break;
                    }
                    Err(e) => {
                        errs.add(format!("GET {path}: {e}"));
                        break;
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Lat::default();
    for t in tasks {
        lat.0.extend(t.await.expect("get task").0);
    }
    (lat.0.len() as u64, start.elapsed(), lat)
}

/// `n` serial scrapes of `/metrics`: (latencies, body bytes of the last one).
pub async fn scrape(addr: SocketAddr, n: usize, errs: &Errors) -> (Lat, usize) {
    let mut client = Client::new(addr);
    let mut lat = Lat::default();
    let mut size = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        match client.get("/metrics").await {
            Ok(r) if r.status == 200 => {
                lat.push(t0.elapsed());
                size = r.body.len();
            }
            Ok(r) => {
                errs.add(format!("GET /metrics: unexpected {}", r.status));
                break;
            }
            Err(e) => {
                errs.add(format!("GET /metrics: {e}"));
                break;
            }
        }
    }
    (lat, size)
}

/// Terminal counts from `automation_jobs_total` and the queue-depth gauge.
#[derive(Default, Debug, Clone, Copy)]
pub struct Counts {
    pub success: u64,
    pub failed: u64,
    pub canceled: u64,
    pub queue_depth: Option<u64>,
}

impl Counts {
    pub fn terminal(&self) -> u64 {
        self.success + self.failed + self.canceled
    }
}

pub fn parse_counts(text: &str) -> Counts {
    let mut c = Counts::default();
    for line in text.lines() {
        let value = || line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        if line.starts_with("automation_jobs_total{") {
            if line.contains("status=\"SUCCESS\"") {
                c.success += value();
            } else if line.contains("status=\"FAILED\"") {
                c.failed += value();
            } else if line.contains("status=\"CANCELED\"") {
                c.canceled += value();
            }
        } else if line.starts_with("automation_job_queue_depth ") {
            c.queue_depth = Some(value());
        }
    }
    c
}

pub async fn counts(client: &mut Client) -> Result<Counts, String> {
    match client.get("/metrics").await {
        Ok(r) if r.status == 200 => Ok(parse_counts(r.text())),
        Ok(r) => Err(format!("GET /metrics: unexpected {}", r.status)),
        Err(e) => Err(format!("GET /metrics: {e}")),
    }
}

/// Polls `/metrics` every `every` until `automation_jobs_total` sums to `target`; returns when it
/// was seen (None after `limit`) and the last counts.
pub async fn wait_terminal(
    addr: SocketAddr,
    target: u64,
    every: Duration,
    limit: Duration,
) -> (Option<Instant>, Counts) {
    let mut client = Client::new(addr);
    let deadline = Instant::now() + limit;
    let mut last = Counts::default();
    loop {
        if let Ok(c) = counts(&mut client).await {
            last = c;
            if c.terminal() >= target {
                return (Some(Instant::now()), c);
            }
        }
        if Instant::now() >= deadline {
            return (None, last);
        }
        tokio::time::sleep(every).await;
    }
}

/// A job's status and, once it has started, its `created_at` and `started_at`.
pub async fn job_state(client: &mut Client, id: &str) -> Result<(String, Option<Stamps>), String> {
    let path = format!("/v1/jobs/{id}");
    let r = client.get(&path).await.map_err(|e| format!("GET {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {path}: unexpected {}: {}", r.status, r.text()));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: bad JSON: {e}"))?;
    let status = v["status"].as_str().unwrap_or("").to_string();
    let stamp = |k: &str| v[k].as_str().and_then(parse_rfc3339_us);
    let started = stamp("started_at").zip(stamp("created_at"));
    Ok((status, started.map(|(started_us, created_us)| Stamps { created_us, started_us })))
}

/// Serial dispatch latency: POST one job to `post_addr`, poll it on `poll_addr` (every 0.5 ms)
/// until it is terminal, take its `started_at`; `n` probes or until `limit`.
pub async fn dispatch_serial(
    post_addr: SocketAddr,
    poll_addr: SocketAddr,
    n: usize,
    limit: Duration,
    errs: &Errors,
) -> Disp {
    let mut post = Client::new(post_addr);
    let mut poll = Client::new(poll_addr);
    let retries = AtomicU64::new(0);
    let mut lat = Disp::default();
    let deadline = Instant::now() + limit;
    for _ in 0..n {
        if Instant::now() >= deadline {
            break;
        }
        let Some((p, _)) = post_job(&mut post, errs, &retries).await else { break };
        let probe_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match job_state(&mut poll, &p.id).await {
                Ok((status, started)) if status == "SUCCESS" || status == "FAILED" || status == "CANCELED" => {
                    match started {
                        Some(s) if status == "SUCCESS" => lat.push(s, &p),
                        _ => errs.add(format!("dispatch probe {} ended {status} (started_at {started:?})", p.id)),
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    errs.add(e);
                    return lat;
                }
            }
            if Instant::now() >= probe_deadline {
                errs.add(format!("dispatch probe {} not finished within 10 s (lost?)", p.id));
                return lat;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    lat
}

/// Dispatch latency of up to `samples` jobs spread evenly over `jobs` (all expected SUCCESS).
pub async fn dispatch_of(addr: SocketAddr, jobs: &[Posted], samples: usize, errs: &Errors) -> Disp {
    let mut client = Client::new(addr);
    let mut lat = Disp::default();
    if jobs.is_empty() {
        return lat;
    }
    let step = (jobs.len() as f64 / samples.max(1) as f64).max(1.0);
    let mut x = 0.0;
    while (x as usize) < jobs.len() {
        let p = &jobs[x as usize];
        match job_state(&mut client, &p.id).await {
            Ok((status, Some(s))) if status == "SUCCESS" => lat.push(s, p),
            Ok((status, s)) => errs.add(format!("job {} is {status} (started_at {s:?}), expected SUCCESS", p.id)),
            Err(e) => {
                errs.add(e);
                break;
            }
        }
        x += step;
    }
    lat
}

/// Checks that up to `max` of `jobs` (evenly spread) are SUCCESS.
pub async fn verify_success(addr: SocketAddr, jobs: &[Posted], max: usize, errs: &Errors) {
    let _ = dispatch_of(addr, jobs, max, errs).await;
}

/// `GET /v1/jobs?status=...&limit=1` is empty.
pub async fn none_in_status(client: &mut Client, status: &str) -> Result<bool, String> {
    let path = format!("/v1/jobs?status={status}&limit=1");
    let r = client.get(&path).await.map_err(|e| format!("GET {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {path}: unexpected {}: {}", r.status, r.text()));
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| format!("GET {path}: bad JSON: {e}"))?;
    Ok(v["items"].as_array().is_some_and(|a| a.is_empty()))
}

/// Event streams held open on `/v1/events/stream` while a load runs: each counts the events it
/// receives; the first also measures each event's lag (receipt minus the event's `at`).
pub struct Fanout {
    stop: tokio::sync::watch::Sender<bool>,
    /// Events received so far, over all streams.
    seen: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Vec<i64>)>>,
}

/// Moves every complete chunk of a chunked HTTP/1.1 body from `raw` to `out`.
fn dechunk(raw: &mut Vec<u8>, out: &mut String) {
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else { return };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else { return };
        if raw.len() < eol + 2 + size + 2 {
            return;
        }
        out.push_str(&String::from_utf8_lossy(&raw[eol + 2..eol + 2 + size]));
        raw.drain(..eol + 2 + size + 2);
    }
}

/// What the streams saw.
pub struct FanoutRun {
    /// Events received, summed over the streams.
    pub events: u64,
    pub streams: usize,
    /// Lag of each event on the first stream.
    pub lag: Lat,
}

impl Fanout {
    /// Opens `k` streams (a raw HTTP/1.1 request each) and waits for their headers.
    pub async fn open(addr: SocketAddr, k: usize, errs: &Arc<Errors>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stop, watch) = tokio::sync::watch::channel(false);
        let total = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::with_capacity(k);
        for i in 0..k {
            let (mut stop, errs, total) = (watch.clone(), errs.clone(), total.clone());
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(async move {
                let mut seen = 0u64;
                let mut lags = Vec::new();
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    errs.add("fan-out: connect failed");
                    return (0, lags);
                };
                let req = "GET /v1/events/stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n";
                if s.write_all(req.as_bytes()).await.is_err() {
                    errs.add("fan-out: request failed");
                    return (0, lags);
                }
                let mut buf = vec![0u8; 64 * 1024];
                // The answer is chunked: `raw` holds bytes as read, `pending` the decoded body.
                let mut raw: Vec<u8> = Vec::new();
                let mut head_done = false;
                let mut pending = String::new();
                let mut ready = Some(ready_tx);
                loop {
                    let n = tokio::select! {
                        r = s.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
                        _ = stop.changed() => break,
                    };
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    if !head_done {
                        let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        raw.drain(..at + 4);
                        head_done = true;
                    }
                    dechunk(&mut raw, &mut pending);
                    // Whole lines only; a data line carries one event.
                    let Some(end) = pending.rfind('\n') else { continue };
                    let now = now_us();
                    for line in pending[..end].lines() {
                        let Some(data) = line.strip_prefix("data: ") else { continue };
                        seen += 1;
                        total.fetch_add(1, Ordering::Relaxed);
                        if i == 0
                            && let Some(at) = serde_json::from_str::<serde_json::Value>(data)
                                .ok()
                                .and_then(|v| v["at"].as_str().and_then(parse_rfc3339_us))
                        {
                            lags.push(now - at);
                        }
                    }
                    pending.drain(..=end);
                }
                (seen, lags)
            }));
            let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
        }
        Self { stop, seen: total, tasks }
    }

    /// Closes the streams once they received `expected` events in all (or after `limit`) and
    /// returns what they received.
    pub async fn close(self, expected: u64, limit: Duration) -> FanoutRun {
        let deadline = Instant::now() + limit;
        while self.seen.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        let streams = self.tasks.len();
        let mut events = 0;
        let mut lag = Lat::default();
        for t in self.tasks {
            if let Ok((n, l)) = t.await {
                events += n;
                if lag.0.is_empty() {
                    l.into_iter().for_each(|us| lag.push_us(us));
                }
            }
        }
        FanoutRun { events, streams, lag }
    }
}

/// A local HTTP/1.1 endpoint answering every request with 200 `ok` on kept-alive connections,
/// for the `http` runner's figure. Returns its address and a count of requests served.
pub async fn ok_endpoint() -> Result<(SocketAddr, Arc<AtomicU64>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("endpoint: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let _ = sock.set_nodelay(true);
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    // Requests carry no body (GET): each ends at its blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::Relaxed);
                        if sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Ok((addr, served))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamps() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_us("1970-01-02T00:00:01.5Z"), Some(86_401_500_000));
        // date -u -d 2026-11-23T12:53:18Z +%s = 1795438398
        assert_eq!(parse_rfc3339_us("2026-11-23T12:53:18.276125Z"), Some(1_795_438_398_276_125));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(parse_rfc3339_us("nonsense"), None);
    }

    #[test]
    fn percentiles() {
        let mut l = Lat((1..=100).map(|x| x * 1000).collect());
        assert_eq!(l.pct_ms(50.0), 50.0);
        assert_eq!(l.pct_ms(99.0), 99.0);
        assert!(Lat::default().pct_ms(50.0).is_nan());
    }

    #[test]
    fn counts_from_metrics() {
        let c = parse_counts(
            "automation_jobs_total{action=\"a\",status=\"SUCCESS\"} 3\nautomation_jobs_total{action=\"b\",status=\"SUCCESS\"} 4\n\
             automation_jobs_total{action=\"a\",status=\"FAILED\"} 1\nautomation_job_queue_depth 7\n",
        );
        assert_eq!((c.success, c.failed, c.terminal(), c.queue_depth), (7, 1, 8, Some(7)));
    }
}
