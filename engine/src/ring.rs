//! A core's ring to the sink: a bounded lock-free queue of records, and the one wake-up the
//! collector sleeps on for all rings.
//!
//! A push never takes a lock and never makes a system call while the collector is awake: it
//! unparks the collector only when the collector said it was going to sleep, so a burst of
//! records costs one wake-up, not one per record. (A `crossbeam_channel` in a `Select` made
//! every push take the channel's waker lock, which the collector held while registering, and
//! wake it again: thousands of futex calls per second per core at a few thousand events per
//! second.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::record::Record;

/// What the collector sleeps on: any ring's push (after it said it sleeps) or last sender
/// leaving wakes it.
#[derive(Default)]
pub struct RingWake {
    sleeping: AtomicBool,
    collector: OnceLock<Thread>,
}

impl RingWake {
    /// Called after records went in: wakes the collector if it is going to sleep.
    pub fn notify(&self) {
        // Pairs with the fence in `sleep`: either the collector sees our record when it looks
        // again, or we see it sleeping.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Wakes the collector whether or not it sleeps (for what is not on a ring: a control).
    pub fn wake(&self) {
        if let Some(thread) = self.collector.get() {
            thread.unpark();
        }
    }

    /// The collector: sleeps up to `timeout` unless `ready()` (looked at after announcing the
    /// sleep) says there is something to take already.
    pub fn sleep(&self, timeout: Duration, ready: impl FnOnce() -> bool) {
        let _ = self.collector.get_or_init(std::thread::current);
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !ready() {
            std::thread::park_timeout(timeout);
        }
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

struct Shared {
    queue: ArrayQueue<Record>,
    senders: AtomicUsize,
    receiver_alive: AtomicBool,
    wake: Arc<RingWake>,
}

/// A ring of `capacity` records whose pushes wake `wake`'s collector.
pub fn ring(capacity: usize, wake: Arc<RingWake>) -> (RingSender, RingReceiver) {
    let shared = Arc::new(Shared {
        queue: ArrayQueue::new(capacity.max(1)),
        senders: AtomicUsize::new(1),
        receiver_alive: AtomicBool::new(true),
        wake,
    });
    (
        RingSender {
            shared: Arc::clone(&shared),
        },
        RingReceiver { shared },
    )
}

/// Why a push did not go in.
#[derive(Debug)]
pub enum PushError {
    /// The ring is full; the record comes back.
    Full(Record),
    /// The sink is gone.
    Disconnected,
}

/// A core's end (one clone per shard task; they all run on the core's thread).
pub struct RingSender {
    shared: Arc<Shared>,
}

impl RingSender {
    /// Pushes and wakes the collector.
    pub fn try_send(&self, record: Record) -> Result<(), PushError> {
        self.try_push(record)?;
        self.shared.wake.notify();
        Ok(())
    }

    /// Pushes without waking the collector: the pusher calls [`RingWake::notify`] (see
    /// [`RingSender::collector_wake`]) once it pushed what it had, so that the records one
    /// executor turn pushes cost the collector one wake-up.
    pub fn try_push(&self, record: Record) -> Result<(), PushError> {
        if !self.shared.receiver_alive.load(Ordering::Acquire) {
            return Err(PushError::Disconnected);
        }
        self.shared.queue.push(record).map_err(PushError::Full)
    }

    /// The wake-up of this ring's collector (it does not keep the ring open).
    pub fn collector_wake(&self) -> Arc<RingWake> {
        Arc::clone(&self.shared.wake)
    }

    /// Records waiting in the ring.
    pub fn len(&self) -> usize {
        self.shared.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.shared.queue.capacity()
    }
}

impl Clone for RingSender {
    fn clone(&self) -> RingSender {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        RingSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for RingSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The collector must see the ring close even if it sleeps.
            self.shared.wake.wake();
        }
    }
}

/// Why nothing was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeError {
    Empty,
    /// Every sender is gone and the ring is empty.
    Disconnected,
}

/// The collector's end.
pub struct RingReceiver {
    shared: Arc<Shared>,
}

impl RingReceiver {
    pub fn try_recv(&self) -> Result<Record, TakeError> {
        if let Some(record) = self.shared.queue.pop() {
            return Ok(record);
        }
        if self.shared.senders.load(Ordering::Acquire) == 0 {
            // A last push may have landed before the last sender left.
            return self.shared.queue.pop().ok_or(TakeError::Disconnected);
        }
        Err(TakeError::Empty)
    }

    /// Something to take, or the ring closed.
    pub fn is_ready(&self) -> bool {
        !self.shared.queue.is_empty() || self.shared.senders.load(Ordering::Acquire) == 0
    }
}

impl Drop for RingReceiver {
    fn drop(&mut self) {
        self.shared.receiver_alive.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::record::RecordKind;

    fn record(seq: u64) -> Record {
        Record {
            shard_id: 0,
            shard_count: 1,
            seq,
            session: 0,
            kind: RecordKind::Dispatch,
            payload: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn records_come_out_in_order_and_a_full_ring_gives_the_record_back() {
        let wake = Arc::new(RingWake::default());
        let (tx, rx) = ring(2, wake);
        tx.try_send(record(1)).unwrap();
        tx.try_send(record(2)).unwrap();
        match tx.try_send(record(3)) {
            Err(PushError::Full(back)) => assert_eq!(back.seq, 3),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert_eq!(rx.try_recv().unwrap_err(), TakeError::Empty);
    }

    #[test]
    fn the_ring_closes_after_the_last_sender_and_its_records() {
        let wake = Arc::new(RingWake::default());
        let (tx, rx) = ring(4, wake);
        let second = tx.clone();
        tx.try_send(record(1)).unwrap();
        drop(tx);
        assert!(rx.is_ready());
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(rx.try_recv().unwrap_err(), TakeError::Empty);
        drop(second);
        assert_eq!(rx.try_recv().unwrap_err(), TakeError::Disconnected);
        let (tx, rx) = ring(4, Arc::new(RingWake::default()));
        drop(rx);
        assert!(matches!(
            tx.try_send(record(1)),
            Err(PushError::Disconnected)
        ));
    }

    #[test]
    fn a_push_wakes_a_sleeping_collector_and_none_is_lost() {
        let wake = Arc::new(RingWake::default());
        let (tx, rx) = ring(1024, Arc::clone(&wake));
        let producer = std::thread::spawn(move || {
            for seq in 0..20_000 {
                let mut next = record(seq);
                loop {
                    match tx.try_send(next) {
                        Ok(()) => break,
                        Err(PushError::Full(back)) => {
                            next = back;
                            std::thread::yield_now();
                        }
                        Err(PushError::Disconnected) => panic!("receiver gone"),
                    }
                }
                if seq % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let mut expected = 0;
        loop {
            match rx.try_recv() {
                Ok(record) => {
                    assert_eq!(record.seq, expected);
                    expected += 1;
                }
                Err(TakeError::Disconnected) => break,
                Err(TakeError::Empty) => {
                    // The producer never pauses 20 s: a sleep that long is a lost wake-up.
                    let slept = Instant::now();
                    wake.sleep(Duration::from_secs(20), || rx.is_ready());
                    assert!(
                        slept.elapsed() < Duration::from_secs(19),
                        "lost wake-up at {expected}"
                    );
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(expected, 20_000);
    }
}
