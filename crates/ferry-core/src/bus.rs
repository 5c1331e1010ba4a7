//! An in-process publish/subscribe bus with prefix subscriptions: appends
//! and system events go out on it, watchers and exporters listen.
//!
//! Every subscriber has a bounded buffer. Publishing never waits: a
//! subscriber whose buffer is full is marked *lagged* (it learns so on its
//! next receive and must resynchronise from storage), and a subscriber that
//! was dropped is removed from the bus at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::mpsc;

/// A bus of `T` messages, each published under a topic string.
pub struct Bus<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    subs: Mutex<Vec<Sub<T>>>,
    next_id: AtomicU64,
}

struct Sub<T> {
    id: u64,
    prefix: String,
    tx: mpsc::Sender<T>,
    lagged: Arc<AtomicBool>,
}

/// What a subscriber receives.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<T> {
    Message(T),
    /// Messages were dropped because the buffer was full.
    Lagged,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription<T> {
    id: u64,
    rx: mpsc::Receiver<T>,
    lagged: Arc<AtomicBool>,
    bus: Weak<Inner<T>>,
}

impl<T> Default for Bus<T> {
    fn default() -> Self {
        Self { inner: Arc::new(Inner { subs: Mutex::new(Vec::new()), next_id: AtomicU64::new(0) }) }
    }
}

impl<T> Clone for Bus<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T: Clone> Bus<T> {
    /// Subscribes to every topic starting with `prefix`, with room for
    /// `buffer` undelivered messages.
    pub fn subscribe(&self, prefix: &str, buffer: usize) -> Subscription<T> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Sub { id, prefix: prefix.to_owned(), tx, lagged: lagged.clone() };
        self.inner.subs.lock().expect("bus lock").push(sub);
        Subscription { id, rx, lagged, bus: Arc::downgrade(&self.inner) }
    }

    /// Delivers `msg` to every subscriber whose prefix `topic` starts with.
    /// Never waits.
    pub fn publish(&self, topic: &str, msg: &T) {
        let mut subs = self.inner.subs.lock().expect("bus lock");
        subs.retain(|s| {
            if !topic.starts_with(&s.prefix) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(msg.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::Release);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> usize {
        self.inner.subs.lock().expect("bus lock").len()
    }
}

impl<T> Subscription<T> {
    /// The next message, or `Lagged` once messages were dropped; `None` if
    /// the bus is gone.
    pub async fn recv(&mut self) -> Option<Received<T>> {
        if self.lagged.load(Ordering::Acquire) {
            return Some(Received::Lagged);
        }
        let msg = self.rx.recv().await?;
        if self.lagged.load(Ordering::Acquire) {
            return Some(Received::Lagged);
        }
        Some(Received::Message(msg))
    }

    /// A message already waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Received<T>> {
        if self.lagged.load(Ordering::Acquire) {
            return Some(Received::Lagged);
        }
        self.rx.try_recv().ok().map(Received::Message)
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.subs.lock().expect("bus lock").retain(|s| s.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_by_prefix_and_unsubscribes_on_drop() {
        let bus: Bus<u32> = Bus::default();
        let mut a = bus.subscribe("audit", 8);
        let mut all = bus.subscribe("", 8);
        bus.publish("audit.eu", &1);
        bus.publish("payments", &2);
        assert_eq!(a.recv().await, Some(Received::Message(1)));
        assert_eq!(all.recv().await, Some(Received::Message(1)));
        assert_eq!(all.recv().await, Some(Received::Message(2)));
        assert_eq!(a.try_recv(), None);
        drop(a);
        assert_eq!(bus.subscribers(), 1, "a dropped subscriber is removed at once");
    }

    #[tokio::test]
    async fn a_full_buffer_marks_the_subscriber_lagged_without_blocking() {
        let bus: Bus<u32> = Bus::default();
        let mut slow = bus.subscribe("", 2);
        let mut fast = bus.subscribe("", 100);
        for i in 0..10 {
            bus.publish("x", &i);
        }
        assert_eq!(slow.recv().await, Some(Received::Lagged));
        for i in 0..10 {
            assert_eq!(fast.recv().await, Some(Received::Message(i)));
        }
    }
}
