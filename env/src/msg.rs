//! Cross-reactor messages: a bounded lock-free queue (crossbeam `ArrayQueue`)
//! per reactor, plus an eventfd that wakes the reactor when it sleeps.
//!
//! Wake protocol (a Dekker-style handshake, both sides SeqCst fences): the
//! reactor sets `sleeping`, fences, and re-checks the queue and the stop flag
//! before it waits; a sender pushes, fences, and signals the eventfd only if
//! it sees `sleeping`. Whichever order the two run in, either the reactor sees
//! the message or the sender sees the sleeper, so no message is left waiting
//! for a timeout, and a reactor that spins pays no system call per message.

use crate::reactor::ReactorCounters;
use crate::sys::{eventfd, eventfd_signal};
use crate::EnvError;
use crossbeam_queue::ArrayQueue;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// State shared by a reactor and everyone who can wake or stop it.
#[derive(Debug)]
pub(crate) struct WakeShared {
    pub(crate) eventfd: OwnedFd,
    pub(crate) sleeping: AtomicBool,
    pub(crate) stop: AtomicBool,
    /// Published copies of the reactor's counters (single writer: the reactor).
    pub(crate) busy_polls: AtomicU64,
    pub(crate) idle_polls: AtomicU64,
    pub(crate) sleeps: AtomicU64,
    pub(crate) wakeups_message: AtomicU64,
    pub(crate) wakeups_fd: AtomicU64,
    pub(crate) wakeups_timeout: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) timers_fired: AtomicU64,
}

impl WakeShared {
    pub(crate) fn new() -> Result<WakeShared, EnvError> {
        Ok(WakeShared {
            eventfd: eventfd()?,
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            busy_polls: AtomicU64::new(0),
            idle_polls: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            wakeups_message: AtomicU64::new(0),
            wakeups_fd: AtomicU64::new(0),
            wakeups_timeout: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            timers_fired: AtomicU64::new(0),
        })
    }

    /// Wakes the reactor if it is (about to be) asleep.
    pub(crate) fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            eventfd_signal(&self.eventfd);
        }
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Always signal: a stop is rare and must not depend on the handshake.
        eventfd_signal(&self.eventfd);
    }

    pub(crate) fn counters(&self) -> ReactorCounters {
        ReactorCounters {
            busy_polls: self.busy_polls.load(Ordering::Relaxed),
            idle_polls: self.idle_polls.load(Ordering::Relaxed),
            sleeps: self.sleeps.load(Ordering::Relaxed),
            wakeups_message: self.wakeups_message.load(Ordering::Relaxed),
            wakeups_fd: self.wakeups_fd.load(Ordering::Relaxed),
            wakeups_timeout: self.wakeups_timeout.load(Ordering::Relaxed),
            messages: self.messages.load(Ordering::Relaxed),
            timers_fired: self.timers_fired.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Mailbox<M> {
    pub(crate) queue: ArrayQueue<M>,
    pub(crate) wake: Arc<WakeShared>,
}

/// Sends messages to one reactor from any thread. Cheap to clone.
#[derive(Debug)]
pub struct ReactorHandle<M> {
    pub(crate) mailbox: Arc<Mailbox<M>>,
}

impl<M> Clone for ReactorHandle<M> {
    fn clone(&self) -> Self {
        ReactorHandle { mailbox: Arc::clone(&self.mailbox) }
    }
}

impl<M: Send> ReactorHandle<M> {
    /// Queues `message`; gives it back when the queue holds
    /// `message_queue_max` messages already. Never blocks, never allocates.
    pub fn try_send(&self, message: M) -> Result<(), M> {
        self.mailbox.queue.push(message)?;
        self.mailbox.wake.wake_if_sleeping();
        Ok(())
    }

    /// The queue's capacity.
    pub fn message_queue_max(&self) -> usize {
        self.mailbox.queue.capacity()
    }

    /// Asks the reactor to return from `run` (after its current poll).
    pub fn request_stop(&self) {
        self.mailbox.wake.request_stop();
    }

    /// A handle that can only stop the reactor, for threads that do not know
    /// its message type (signal handling, RPC).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle { wake: Arc::clone(&self.mailbox.wake) }
    }

    /// The reactor's counters as last published (at most one poll old).
    pub fn counters(&self) -> ReactorCounters {
        self.mailbox.wake.counters()
    }
}

/// Stops one reactor from any thread; see [`ReactorHandle::stop_handle`].
#[derive(Clone, Debug)]
pub struct StopHandle {
    wake: Arc<WakeShared>,
}

impl StopHandle {
    pub fn request_stop(&self) {
        self.wake.request_stop();
    }

    pub fn counters(&self) -> ReactorCounters {
        self.wake.counters()
    }
}
