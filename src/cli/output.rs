//! What the `jobs` commands print: JSON for scripts, short readable lines for people, and a live
//! status line (on a terminal only) while waiting.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use super::Output;

pub fn json(v: &Value) {
    println!("{v}");
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

/// A job, one field per line.
pub fn job(j: &Value) {
    for key in ["job_id", "action", "target", "status", "requested_by", "created_at", "started_at", "finished_at"] {
        println!("{key:<13} {}", text(j, key));
    }
    println!("{:<13} {}", "attempts", j["attempts"]);
    if let Some(e) = j["error"].as_str() {
        println!("{:<13} {e}", "error");
    }
    if let Some(url) = j["external"]["url"].as_str() {
        println!("{:<13} {url}", "external");
    }
    if !j["result"].is_null() {
        println!("{:<13} {}", "result", j["result"]);
    }
}

/// A page of jobs as a table.
pub fn list(page: &Value) {
    println!("{:<36}  {:<9}  {:<18}  {:<24}  CREATED", "JOB", "STATUS", "ACTION", "TARGET");
    for j in page["items"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:<9}  {:<18}  {:<24}  {}",
            text(j, "job_id"),
            text(j, "status"),
            text(j, "action"),
            text(j, "target"),
            text(j, "created_at")
        );
    }
    if let Some(c) = page["next_cursor"].as_str() {
        println!("(more: next cursor {c})");
    }
}

/// One event: a line for people, the event's JSON for scripts.
pub fn event(out: Output, e: &Value) {
    match out {
        Output::Json => json(e),
        Output::Human => {
            let detail = match &e["detail"] {
                Value::Object(m) if !m.is_empty() => format!(" {}", e["detail"]),
                _ => String::new(),
            };
            println!(
                "{}  {:<17} {:<9} by {}{detail}",
                text(e, "at"),
                text(e, "event"),
                text(e, "status"),
                text(e, "actor")
            );
        }
    }
}

/// One line on stderr, rewritten in place while a job runs; only when stderr is a terminal.
pub struct StatusLine {
    on: bool,
    shown: bool,
}

impl StatusLine {
    pub fn new(human: bool) -> Self {
        Self { on: human && std::io::stderr().is_terminal(), shown: false }
    }

    pub fn show(&mut self, id: &str, job: &Value, elapsed: Duration) {
        if !self.on {
            return;
        }
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[2K{id} {} (attempt {}) {:.0}s",
            text(job, "status"),
            job["attempts"],
            elapsed.as_secs_f64()
        );
        let _ = err.flush();
        self.shown = true;
    }

    pub fn clear(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            self.shown = false;
        }
    }
}
