//! Where the deliverer sends a batch: the bot's HTTP endpoint ([`HttpTarget`]), or Redis
//! Streams ([`super::streams::StreamsTarget`]). A target encodes a batch once and sends it until
//! it is acknowledged; everything else (batching, retries, the spill, the shutdown grace) is
//! the deliverer's and the same for every target.

use crate::record::Record;

use super::batch;
use super::http::{HttpClient, HttpError};

/// Why a send was not acknowledged.
#[derive(Debug)]
pub enum Failure {
    /// The receiver answered, and not with success (an HTTP status).
    Refused(u16),
    /// No answer: the connection, a timeout, the receiver's error (logged as it is).
    Unreachable(String),
}

pub trait Target: Send {
    /// Encodes `batch` without the records at `skip` (ascending indices), replacing what was
    /// prepared before.
    fn prepare(&mut self, batch: &[Record], skip: &[usize]);
    /// Sends what [`Target::prepare`] made; `Ok` once the receiver acknowledged all of it.
    fn send(&mut self) -> Result<(), Failure>;
    /// Bytes of what is prepared (for the delivered-bytes counter).
    fn prepared_bytes(&self) -> u64;
    /// Gives back memory a burst of big payloads left behind.
    fn shrink(&mut self);
}

/// The bot's endpoint: a JSON array per batch, POSTed (see docs/forwarding.md).
pub struct HttpTarget {
    client: HttpClient,
    body: Vec<u8>,
    capacity: usize,
    /// Batches the route posts at once (its lanes): a timeout then may be a bot that serves one
    /// connection at a time.
    lanes: u32,
}

impl HttpTarget {
    /// `capacity`: the usual body size (a batch's byte bound and some room).
    pub fn new(client: HttpClient, capacity: usize) -> HttpTarget {
        HttpTarget {
            client,
            body: Vec::with_capacity(capacity),
            capacity,
            lanes: 1,
        }
    }

    /// One of `lanes` targets of a route posting at once (`--batches-in-flight`).
    pub fn with_lanes(mut self, lanes: u32) -> HttpTarget {
        self.lanes = lanes;
        self
    }
}

impl Target for HttpTarget {
    fn prepare(&mut self, batch: &[Record], skip: &[usize]) {
        self.body.clear();
        if skip.is_empty() {
            batch::encode(batch, &mut self.body);
        } else {
            batch::encode_except(batch, skip, &mut self.body);
        }
    }

    fn send(&mut self) -> Result<(), Failure> {
        match self.client.post_json(&self.body) {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(Failure::Refused(status)),
            Err(error) => Err(Failure::Unreachable(delivery_failure(&error, self.lanes))),
        }
    }

    fn prepared_bytes(&self) -> u64 {
        self.body.len() as u64
    }

    fn shrink(&mut self) {
        if self.body.capacity() > 4 * self.capacity {
            self.body = Vec::with_capacity(self.capacity);
        }
    }
}

/// A failed POST to the bot, with the setting that governs it where that helps: a timeout
/// names `--forward-timeout-ms` in its unit, and with several batches in flight the bot's need
/// to serve that many connections at once (a certificate problem already names `--ca-file`).
fn delivery_failure(error: &HttpError, lanes: u32) -> String {
    match error {
        HttpError::TimedOut { stage, timeout } if lanes > 1 => format!(
            "{stage}: timed out after {} ms (--forward-timeout-ms; with --batches-in-flight \
             {lanes} the bot must serve {lanes} connections at once, or set it to 1)",
            timeout.as_millis()
        ),
        HttpError::TimedOut { stage, timeout } => format!(
            "{stage}: timed out after {} ms (--forward-timeout-ms)",
            timeout.as_millis()
        ),
        other => other.to_string(),
    }
}
