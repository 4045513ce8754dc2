//! The reactor: one thread (pinned to a core when configured) that drives an
//! application's pollers, SPDK style. Each iteration delivers queued messages,
//! fires due timers and calls the application's `poll`; the iteration is busy
//! if any of them did work.
//!
//! Modes: `PollMode::Busy` spins forever. `PollMode::Adaptive` spins while
//! there is work and, after `spin_before_sleep_us` without any, sleeps in
//! epoll_wait until a registered fd is ready, a message arrives (the mailbox
//! eventfd, see `msg`), the next timer is due, or `sleep_max_ms` passes (a
//! safety net against a poller that forgot to register its fd).
//!
//! The application owns all mutable state and the reactor lends `&mut` to it
//! and to a [`ReactorContext`] (fds, timers, clock, stop) in each callback, so
//! pollers can share state without locks or `Rc<RefCell>`.
//!
//! Invariants: at most `timer_max` live timers and `message_queue_max` queued
//! messages; a cancelled timer never fires; timers fire in deadline order and,
//! for equal deadlines, in the order they were added; fd readiness is
//! level-triggered and reported only after a sleep (pollers still poll).

use crate::msg::{Mailbox, ReactorHandle, WakeShared};
use crate::sys::eventfd_drain;
use crate::EnvError;
use crossbeam_queue::ArrayQueue;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The epoll token of the mailbox eventfd; applications may not use it.
const MAILBOX_TOKEN: u64 = u64::MAX;
/// Events fetched per epoll_wait.
const EPOLL_EVENTS_MAX: usize = 64;

/// What one poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStatus {
    Busy,
    Idle,
}

/// How the reactor waits when idle; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    Busy,
    Adaptive,
}

/// An fd interest, or what an fd is ready for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
}

impl Readiness {
    pub const READABLE: Readiness = Readiness { readable: true, writable: false };
    pub const WRITABLE: Readiness = Readiness { readable: false, writable: true };
    pub const BOTH: Readiness = Readiness { readable: true, writable: true };

    fn from_epoll(flags: i32) -> Readiness {
        Readiness {
            readable: flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0,
            writable: flags & (libc::EPOLLOUT | libc::EPOLLERR) != 0,
        }
    }

    fn epoll_events(self) -> u32 {
        let mut events = 0;
        if self.readable {
            events |= libc::EPOLLIN | libc::EPOLLRDHUP;
        }
        if self.writable {
            events |= libc::EPOLLOUT;
        }
        events as u32
    }
}

/// A timer, as returned by [`ReactorContext::add_timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(u64);

impl TimerId {
    fn new(index: u32, generation: u32) -> TimerId {
        TimerId(((generation as u64) << 32) | index as u64)
    }
    fn index(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Reactor settings.
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    /// Thread name and log field.
    pub name: String,
    /// Pin to this CPU when set.
    pub core: Option<usize>,
    pub mode: PollMode,
    /// Idle time before an adaptive reactor sleeps.
    pub spin_before_sleep_us: u64,
    /// Longest single sleep, even with nothing scheduled.
    pub sleep_max_ms: u64,
    pub message_queue_max: usize,
    /// Messages delivered per iteration at most, so pollers are not starved.
    pub messages_per_poll_max: usize,
    pub timer_max: usize,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            name: "reactor".to_owned(),
            core: None,
            mode: PollMode::Adaptive,
            spin_before_sleep_us: 200,
            sleep_max_ms: 100,
            message_queue_max: 4096,
            messages_per_poll_max: 64,
            timer_max: 1024,
        }
    }
}

/// Per-reactor counters. `busy_polls + idle_polls` is the iteration count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorCounters {
    pub busy_polls: u64,
    pub idle_polls: u64,
    pub sleeps: u64,
    /// Sleeps ended by the mailbox eventfd (a message or a stop request).
    pub wakeups_message: u64,
    /// Sleeps ended by a registered fd.
    pub wakeups_fd: u64,
    /// Sleeps ended by the timeout (a timer due, or `sleep_max_ms`).
    pub wakeups_timeout: u64,
    pub messages: u64,
    pub timers_fired: u64,
}

/// The application a reactor drives.
pub trait ReactorApp {
    type Message: Send + 'static;
    /// Called once when `run` starts, before the first poll.
    fn on_start(&mut self, _ctx: &mut ReactorContext) {}
    /// Runs every poller once; reports whether any found work.
    fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus;
    fn on_message(&mut self, message: Self::Message, ctx: &mut ReactorContext);
    fn on_timer(&mut self, _id: TimerId, _ctx: &mut ReactorContext) {}
    /// A registered fd was ready when the reactor woke from a sleep. A hint:
    /// the next `poll` runs right after, whatever this does.
    fn on_ready(&mut self, _token: u64, _ready: Readiness, _ctx: &mut ReactorContext) {}
}

#[derive(Debug)]
struct TimerSlot {
    generation: u32,
    active: bool,
    period: Option<Duration>,
}

/// Timers: a min-heap of (deadline, sequence) over a slot table.
#[derive(Debug)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, TimerId)>>,
    slots: Vec<TimerSlot>,
    free: Vec<u32>,
    sequence: u64,
}

impl Timers {
    fn new(timer_max: usize) -> Timers {
        Timers {
            heap: BinaryHeap::with_capacity(timer_max * 2),
            slots: (0..timer_max).map(|_| TimerSlot { generation: 0, active: false, period: None }).collect(),
            free: (0..timer_max as u32).rev().collect(),
            sequence: 0,
        }
    }

    fn push(&mut self, deadline: Instant, id: TimerId) {
        if self.heap.len() == self.heap.capacity() {
            // Cancelled timers leave stale entries; drop them before growing.
            let slots = &self.slots;
            self.heap.retain(|Reverse((_, _, id))| {
                let slot = &slots[id.index()];
                slot.active && slot.generation == id.generation()
            });
        }
        self.sequence += 1;
        self.heap.push(Reverse((deadline, self.sequence, id)));
    }

    fn is_live(&self, id: TimerId) -> bool {
        self.slots.get(id.index()).is_some_and(|s| s.active && s.generation == id.generation())
    }

    /// The next live deadline, dropping stale heap entries on the way.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, _, id))) = self.heap.peek().copied() {
            if self.is_live(id) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Pops one due, live timer (re-arming it if periodic).
    fn pop_due(&mut self, now: Instant) -> Option<TimerId> {
        loop {
            let Reverse((deadline, _, id)) = *self.heap.peek()?;
            if deadline > now {
                return None;
            }
            self.heap.pop();
            if !self.is_live(id) {
                continue;
            }
            match self.slots[id.index()].period {
                Some(period) => {
                    // A late reactor skips missed periods instead of bursting.
                    let mut next = deadline + period;
                    if next <= now {
                        next = now + period;
                    }
                    self.push(next, id);
                }
                None => self.release(id),
            }
            return Some(id);
        }
    }

    fn release(&mut self, id: TimerId) {
        let slot = &mut self.slots[id.index()];
        slot.active = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index() as u32);
    }
}

/// What callbacks may do to their reactor: fds, timers, clock, stop.
#[derive(Debug)]
pub struct ReactorContext {
    epoll: OwnedFd,
    /// Buffer of `ready_now`, allocated once.
    ready_events: Vec<libc::epoll_event>,
    timers: Timers,
    now: Instant,
    stop: bool,
    counters: ReactorCounters,
    name: String,
}

impl ReactorContext {
    /// Watches `fd` for `interest`; readiness is reported with `token`
    /// (level-triggered). The caller keeps the fd open until it deregisters.
    pub fn register_fd(&mut self, fd: RawFd, interest: Readiness, token: u64) -> Result<(), EnvError> {
        self.epoll_ctl(libc::EPOLL_CTL_ADD, fd, interest, token)
    }

    pub fn modify_fd(&mut self, fd: RawFd, interest: Readiness, token: u64) -> Result<(), EnvError> {
        self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
    }

    pub fn deregister_fd(&mut self, fd: RawFd) -> Result<(), EnvError> {
        self.epoll_ctl(libc::EPOLL_CTL_DEL, fd, Readiness::default(), 0)
    }

    fn epoll_ctl(&mut self, op: i32, fd: RawFd, interest: Readiness, token: u64) -> Result<(), EnvError> {
        if token == MAILBOX_TOKEN {
            return Err(EnvError::InvalidArgument { what: "fd token (reserved)", value: token });
        }
        let mut event = libc::epoll_event { events: interest.epoll_events(), u64: token };
        // SAFETY: `event` is a live epoll_event; epoll copies it before returning.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc != 0 {
            return Err(EnvError::last_os("epoll_ctl"));
        }
        Ok(())
    }

    /// The registered fds ready right now, without waiting: one epoll_wait
    /// with a zero timeout, so a spinning poller asks the kernel once which
    /// of its sockets have something, instead of trying each. Level
    /// triggered: an fd stays reported while it is ready. The mailbox is not
    /// reported (the reactor drains it). `out` is cleared first; at most
    /// `EPOLL_EVENTS_MAX` fds per call (the rest come on the next call).
    pub fn ready_now(&mut self, out: &mut Vec<(u64, Readiness)>) -> Result<usize, EnvError> {
        out.clear();
        // SAFETY: `ready_events` is a live buffer of `len` epoll_event entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.ready_events.as_mut_ptr(),
                self.ready_events.len() as i32,
                0,
            )
        };
        if n < 0 {
            let e = EnvError::last_os("epoll_wait");
            if matches!(e, EnvError::Syscall { errno, .. } if errno == libc::EINTR) {
                return Ok(0);
            }
            return Err(e);
        }
        for event in &self.ready_events[..n as usize] {
            let token = event.u64;
            if token == MAILBOX_TOKEN {
                continue;
            }
            let flags = event.events as i32;
            out.push((token, Readiness::from_epoll(flags)));
        }
        Ok(out.len())
    }

    /// Fires once after `delay`, then every `period` if given (period > 0).
    pub fn add_timer(&mut self, delay: Duration, period: Option<Duration>) -> Result<TimerId, EnvError> {
        if period.is_some_and(|p| p.is_zero()) {
            return Err(EnvError::InvalidArgument { what: "timer period_us", value: 0 });
        }
        let Some(index) = self.timers.free.pop() else {
            return Err(EnvError::InvalidArgument {
                what: "timers beyond timer_max",
                value: self.timers.slots.len() as u64,
            });
        };
        let slot = &mut self.timers.slots[index as usize];
        slot.active = true;
        slot.period = period;
        let id = TimerId::new(index, slot.generation);
        self.timers.push(self.now + delay, id);
        Ok(id)
    }

    /// Cancels a live timer; false if it already fired (one-shot) or was cancelled.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        if !self.timers.is_live(id) {
            return false;
        }
        self.timers.release(id);
        true
    }

    /// The monotonic time at the start of this iteration (refreshed after a sleep).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Makes `run` return after the current iteration.
    pub fn stop(&mut self) {
        self.stop = true;
    }

    pub fn counters(&self) -> ReactorCounters {
        self.counters
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Reactor<M> {
    config: ReactorConfig,
    mailbox: Arc<Mailbox<M>>,
    ctx: ReactorContext,
    events: Vec<libc::epoll_event>,
}

impl<M: Send + 'static> Reactor<M> {
    /// Creates the reactor (epoll set, mailbox, timer table) and the handle
    /// others use to reach it.
    pub fn new(config: ReactorConfig) -> Result<(Reactor<M>, ReactorHandle<M>), EnvError> {
        if config.message_queue_max == 0 {
            return Err(EnvError::InvalidArgument { what: "message_queue_max", value: 0 });
        }
        // SAFETY: epoll_create1 has no memory arguments.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(EnvError::last_os("epoll_create1"));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        let wake = Arc::new(WakeShared::new()?);
        let mailbox = Arc::new(Mailbox { queue: ArrayQueue::new(config.message_queue_max), wake });
        let mut ctx = ReactorContext {
            epoll,
            ready_events: vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS_MAX],
            timers: Timers::new(config.timer_max),
            now: Instant::now(),
            stop: false,
            counters: ReactorCounters::default(),
            name: config.name.clone(),
        };
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: MAILBOX_TOKEN };
        // SAFETY: `event` is live for the call; both fds are open.
        let rc = unsafe {
            libc::epoll_ctl(
                ctx.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                mailbox.wake.eventfd.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(EnvError::last_os("epoll_ctl(mailbox)"));
        }
        ctx.now = Instant::now();
        let handle = ReactorHandle { mailbox: Arc::clone(&mailbox) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS_MAX];
        Ok((Reactor { config, mailbox, ctx, events }, handle))
    }

    pub fn handle(&self) -> ReactorHandle<M> {
        ReactorHandle { mailbox: Arc::clone(&self.mailbox) }
    }

    pub fn counters(&self) -> ReactorCounters {
        self.ctx.counters
    }

    /// Pins the calling thread (if configured) and runs `app` until a stop.
    pub fn run<A: ReactorApp<Message = M>>(&mut self, app: &mut A) -> Result<(), EnvError> {
        if let Some(core) = self.config.core {
            // Pinned where possible: a core outside this process's CPU set
            // (a container, a smaller machine) leaves the thread unpinned.
            if let Err(e) = pin_to_core(core) {
                let name = &self.config.name;
                tracing::warn!(reactor = %name, core, error = %e, "cannot pin the reactor; running unpinned");
            }
        }
        let config = &self.config;
        tracing::info!(reactor = %config.name, core = ?config.core, mode = ?config.mode, "reactor running");
        self.ctx.stop = false;
        self.ctx.now = Instant::now();
        app.on_start(&mut self.ctx);
        let spin = Duration::from_micros(self.config.spin_before_sleep_us);
        let mut last_busy = self.ctx.now;
        while !self.ctx.stop && !self.mailbox.wake.stop.load(Ordering::Relaxed) {
            self.ctx.now = Instant::now();
            let mut busy = false;
            for _ in 0..self.config.messages_per_poll_max {
                let Some(message) = self.mailbox.queue.pop() else { break };
                self.ctx.counters.messages += 1;
                busy = true;
                app.on_message(message, &mut self.ctx);
            }
            let now = self.ctx.now;
            while let Some(id) = self.ctx.timers.pop_due(now) {
                self.ctx.counters.timers_fired += 1;
                busy = true;
                app.on_timer(id, &mut self.ctx);
            }
            if app.poll(&mut self.ctx) == PollStatus::Busy {
                busy = true;
            }
            if busy {
                self.ctx.counters.busy_polls += 1;
                last_busy = now;
            } else {
                self.ctx.counters.idle_polls += 1;
                if self.config.mode == PollMode::Adaptive
                    && now.duration_since(last_busy) >= spin
                    && !self.ctx.stop
                {
                    self.sleep(app);
                }
            }
            self.publish_counters();
        }
        self.publish_counters();
        tracing::info!(reactor = %self.config.name, counters = ?self.ctx.counters, "reactor stopped");
        Ok(())
    }

    fn sleep<A: ReactorApp<Message = M>>(&mut self, app: &mut A) {
        let wake = &self.mailbox.wake;
        wake.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.mailbox.queue.is_empty() || wake.stop.load(Ordering::SeqCst) {
            wake.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let sleep_max = Duration::from_millis(self.config.sleep_max_ms);
        let timeout = match self.ctx.timers.next_deadline() {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(sleep_max),
            None => sleep_max,
        };
        // Round up so a timer is never woken for early and re-slept for 0 ms.
        let timeout_ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // Counted (and published) before waiting, so observers can tell the
        // reactor is asleep.
        self.ctx.counters.sleeps += 1;
        self.publish_counters();
        // SAFETY: `events` is a live buffer of `len` epoll_event entries.
        let n = unsafe {
            libc::epoll_wait(
                self.ctx.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                timeout_ms,
            )
        };
        self.mailbox.wake.sleeping.store(false, Ordering::SeqCst);
        self.ctx.now = Instant::now();
        let ready = n.max(0) as usize; // EINTR: treat as a timeout.
        if ready == 0 {
            self.ctx.counters.wakeups_timeout += 1;
            return;
        }
        let mut by_message = false;
        let mut by_fd = false;
        for i in 0..ready {
            let event = self.events[i];
            let token = event.u64;
            if token == MAILBOX_TOKEN {
                eventfd_drain(&self.mailbox.wake.eventfd);
                by_message = true;
                continue;
            }
            by_fd = true;
            app.on_ready(token, Readiness::from_epoll(event.events as i32), &mut self.ctx);
        }
        self.ctx.counters.wakeups_message += by_message as u64;
        self.ctx.counters.wakeups_fd += by_fd as u64;
    }

    fn publish_counters(&self) {
        let c = &self.ctx.counters;
        let w = &self.mailbox.wake;
        // Single writer: plain relaxed stores, no read-modify-write.
        w.busy_polls.store(c.busy_polls, Ordering::Relaxed);
        w.idle_polls.store(c.idle_polls, Ordering::Relaxed);
        w.sleeps.store(c.sleeps, Ordering::Relaxed);
        w.wakeups_message.store(c.wakeups_message, Ordering::Relaxed);
        w.wakeups_fd.store(c.wakeups_fd, Ordering::Relaxed);
        w.wakeups_timeout.store(c.wakeups_timeout, Ordering::Relaxed);
        w.messages.store(c.messages, Ordering::Relaxed);
        w.timers_fired.store(c.timers_fired, Ordering::Relaxed);
    }
}

/// The thread running a spawned reactor; joins to `run`'s result.
pub type ReactorThread = std::thread::JoinHandle<Result<(), EnvError>>;

/// Spawns a thread named after the reactor, builds the application on it
/// with `make_app` (so the app need not be Send) and runs it until a stop.
pub fn spawn<A, F>(
    config: ReactorConfig,
    make_app: F,
) -> Result<(ReactorHandle<A::Message>, ReactorThread), EnvError>
where
    A: ReactorApp + 'static,
    F: FnOnce() -> A + Send + 'static,
{
    let name = config.name.clone();
    let (mut reactor, handle) = Reactor::<A::Message>::new(config)?;
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut app = make_app();
            reactor.run(&mut app)
        })
        .map_err(|e| EnvError::Syscall { call: "pthread_create", errno: e.raw_os_error().unwrap_or(0) })?;
    Ok((handle, join))
}

/// Pins the calling thread to `core`.
pub fn pin_to_core(core: usize) -> Result<(), EnvError> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(EnvError::InvalidArgument { what: "core", value: core as u64 });
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: core < CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(EnvError::last_os("sched_setaffinity"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    fn adaptive(name: &str) -> ReactorConfig {
        // Sleep at the first idle poll, and (almost) never time out, so only
        // a real wake-up ends a sleep quickly.
        ReactorConfig {
            name: name.to_owned(),
            spin_before_sleep_us: 0,
            sleep_max_ms: 60_000,
            ..ReactorConfig::default()
        }
    }

    /// Waits (sleeping) until `check` holds; panics after ~10 s.
    fn wait_until(mut check: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("condition not reached");
    }

    struct Receiver {
        got: mpsc::Sender<u32>,
    }

    impl ReactorApp for Receiver {
        type Message = u32;
        fn poll(&mut self, _ctx: &mut ReactorContext) -> PollStatus {
            PollStatus::Idle
        }
        fn on_message(&mut self, message: u32, ctx: &mut ReactorContext) {
            self.got.send(message).expect("test receiver");
            if message == 0 {
                ctx.stop();
            }
        }
    }

    #[test]
    fn message_wakes_a_sleeping_reactor() {
        let (tx, rx) = mpsc::channel();
        let (handle, join) = spawn(adaptive("msg"), move || Receiver { got: tx }).expect("spawn");
        wait_until(|| handle.counters().sleeps >= 1);
        handle.try_send(7).expect("send");
        assert_eq!(rx.recv().expect("message delivered"), 7);
        wait_until(|| handle.counters().sleeps >= 2);
        handle.try_send(0).expect("send stop");
        join.join().expect("thread").expect("run");
        let counters = handle.counters();
        assert_eq!(counters.messages, 2);
        assert!(counters.wakeups_message >= 2, "woken by the eventfd, not the timeout: {counters:?}");
        assert_eq!(counters.wakeups_timeout, 0);
    }

    #[test]
    fn stop_handle_wakes_and_stops() {
        let (tx, _rx) = mpsc::channel();
        let (handle, join) = spawn(adaptive("stop"), move || Receiver { got: tx }).expect("spawn");
        wait_until(|| handle.counters().sleeps >= 1);
        handle.stop_handle().request_stop();
        join.join().expect("thread").expect("run");
        assert_eq!(handle.counters().wakeups_timeout, 0);
    }

    #[test]
    fn full_queue_gives_the_message_back() {
        let config = ReactorConfig { message_queue_max: 2, ..ReactorConfig::default() };
        let (_reactor, handle) = Reactor::<u32>::new(config).expect("reactor");
        assert_eq!(handle.message_queue_max(), 2);
        handle.try_send(1).expect("first");
        handle.clone().try_send(2).expect("second");
        assert_eq!(handle.try_send(3), Err(3));
    }

    #[derive(Default)]
    struct TimerApp {
        names: Vec<(TimerId, &'static str)>,
        fired: Vec<&'static str>,
        periodic: Option<TimerId>,
        periodic_fires: u32,
    }

    impl ReactorApp for TimerApp {
        type Message = ();
        fn on_start(&mut self, ctx: &mut ReactorContext) {
            let ms = Duration::from_millis;
            for (delay, name) in [(30, "t30"), (10, "t10"), (20, "t20a"), (20, "t20b"), (15, "cancelled")] {
                let id = ctx.add_timer(ms(delay), None).expect("timer");
                self.names.push((id, name));
            }
            let cancelled = self.names[4].0;
            assert!(ctx.cancel_timer(cancelled));
            assert!(!ctx.cancel_timer(cancelled));
            self.periodic = Some(ctx.add_timer(ms(4), Some(ms(4))).expect("periodic"));
        }
        fn poll(&mut self, _ctx: &mut ReactorContext) -> PollStatus {
            PollStatus::Idle
        }
        fn on_message(&mut self, _message: (), _ctx: &mut ReactorContext) {}
        fn on_timer(&mut self, id: TimerId, ctx: &mut ReactorContext) {
            if Some(id) == self.periodic {
                self.periodic_fires += 1;
                if self.periodic_fires == 3 {
                    assert!(ctx.cancel_timer(id));
                }
            } else {
                let name = self.names.iter().find(|(t, _)| *t == id).map(|(_, n)| *n).expect("known timer");
                self.fired.push(name);
            }
            // A descheduled reactor may skip periods, so the periodic timer can
            // outlive t30: stop only when both are done.
            if self.fired.len() == 4 && self.periodic_fires == 3 {
                ctx.stop();
            }
        }
    }

    #[test]
    fn timers_fire_in_order_and_cancel() {
        let (mut reactor, _handle) = Reactor::new(adaptive("timers")).expect("reactor");
        let mut app = TimerApp::default();
        reactor.run(&mut app).expect("run");
        assert_eq!(app.fired, ["t10", "t20a", "t20b", "t30"]);
        assert_eq!(app.periodic_fires, 3);
        let counters = reactor.counters();
        assert_eq!(counters.timers_fired, 7);
        assert!(counters.sleeps >= 1);
        assert!(counters.wakeups_timeout >= 1, "timers end sleeps: {counters:?}");
    }

    #[test]
    fn timer_table_is_bounded_and_period_checked() {
        let config = ReactorConfig { timer_max: 2, ..ReactorConfig::default() };
        let (mut reactor, _handle) = Reactor::<()>::new(config).expect("reactor");
        let ctx = &mut reactor.ctx;
        let a = ctx.add_timer(Duration::from_secs(1), None).expect("a");
        ctx.add_timer(Duration::from_secs(1), None).expect("b");
        assert!(ctx.add_timer(Duration::from_secs(1), None).is_err());
        assert!(ctx.cancel_timer(a));
        let c = ctx.add_timer(Duration::from_secs(1), None).expect("slot reused");
        assert_ne!(a, c, "a reused slot gets a new generation");
        assert!(!ctx.cancel_timer(a));
        assert!(ctx.add_timer(Duration::ZERO, Some(Duration::ZERO)).is_err());
    }

    struct IdleApp {
        polls_left: u64,
    }

    impl ReactorApp for IdleApp {
        type Message = ();
        fn on_start(&mut self, ctx: &mut ReactorContext) {
            ctx.add_timer(Duration::from_millis(20), None).expect("timer");
        }
        fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
            self.polls_left = self.polls_left.saturating_sub(1);
            if self.polls_left == 0 {
                ctx.stop();
            }
            PollStatus::Idle
        }
        fn on_message(&mut self, _message: (), _ctx: &mut ReactorContext) {}
        fn on_timer(&mut self, _id: TimerId, ctx: &mut ReactorContext) {
            ctx.stop();
        }
    }

    #[test]
    fn adaptive_sleeps_when_idle_busy_never_does() {
        let config = ReactorConfig { spin_before_sleep_us: 50, ..ReactorConfig::default() };
        let (mut reactor, _h) = Reactor::new(config).expect("reactor");
        reactor.run(&mut IdleApp { polls_left: u64::MAX }).expect("run");
        let adaptive = reactor.counters();
        assert!(adaptive.sleeps >= 1, "{adaptive:?}");
        assert_eq!(adaptive.busy_polls, 1, "only the timer's iteration was busy");

        // Busy mode: bounded to 2000 iterations (microseconds), never sleeps.
        let config =
            ReactorConfig { mode: PollMode::Busy, spin_before_sleep_us: 0, ..ReactorConfig::default() };
        let (mut reactor, _h) = Reactor::new(config).expect("reactor");
        reactor.run(&mut IdleApp { polls_left: 2000 }).expect("run");
        let busy = reactor.counters();
        assert_eq!(busy.sleeps, 0);
        assert_eq!(busy.idle_polls, 2000);
    }

    struct FdApp {
        stream: UnixStream,
        received: Vec<u8>,
    }

    impl ReactorApp for FdApp {
        type Message = ();
        fn on_start(&mut self, ctx: &mut ReactorContext) {
            self.stream.set_nonblocking(true).expect("nonblocking");
            ctx.register_fd(self.stream.as_raw_fd(), Readiness::READABLE, 7).expect("register");
            assert!(ctx.register_fd(self.stream.as_raw_fd(), Readiness::READABLE, MAILBOX_TOKEN).is_err());
        }
        fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(1) => {
                    self.received.push(byte[0]);
                    ctx.deregister_fd(self.stream.as_raw_fd()).expect("deregister");
                    ctx.stop();
                    PollStatus::Busy
                }
                _ => PollStatus::Idle,
            }
        }
        fn on_message(&mut self, _message: (), _ctx: &mut ReactorContext) {}
        fn on_ready(&mut self, token: u64, ready: Readiness, _ctx: &mut ReactorContext) {
            assert_eq!(token, 7);
            assert!(ready.readable);
        }
    }

    #[test]
    fn readable_fd_wakes_a_sleeping_reactor() {
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let (mut reactor, handle) = Reactor::<()>::new(adaptive("fd")).expect("reactor");
        let writer = std::thread::spawn(move || {
            wait_until(|| handle.counters().sleeps >= 1);
            theirs.write_all(&[42]).expect("write");
            theirs
        });
        let mut app = FdApp { stream: ours, received: Vec::new() };
        reactor.run(&mut app).expect("run");
        let _theirs = writer.join().expect("writer");
        assert_eq!(app.received, [42]);
        let counters = reactor.counters();
        assert!(counters.wakeups_fd >= 1, "{counters:?}");
        assert_eq!(counters.wakeups_timeout, 0);
    }

    /// Records what `ready_now` says before and after data arrives.
    struct ReadyApp {
        stream: UnixStream,
        peer: UnixStream,
        seen: Vec<Vec<(u64, Readiness)>>,
    }

    impl ReactorApp for ReadyApp {
        type Message = ();
        fn on_start(&mut self, ctx: &mut ReactorContext) {
            ctx.register_fd(self.stream.as_raw_fd(), Readiness::READABLE, 9).expect("register");
        }
        fn poll(&mut self, ctx: &mut ReactorContext) -> PollStatus {
            let mut ready = Vec::new();
            ctx.ready_now(&mut ready).expect("ready_now");
            self.seen.push(ready);
            match self.seen.len() {
                1 => self.peer.write_all(&[1]).expect("write"),
                2 => {
                    let mut b = [0u8; 1];
                    self.stream.read_exact(&mut b).expect("read");
                }
                _ => ctx.stop(),
            }
            PollStatus::Busy
        }
        fn on_message(&mut self, _message: (), _ctx: &mut ReactorContext) {}
    }

    #[test]
    fn ready_now_reports_only_fds_with_something_to_read() {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        let (mut reactor, _h) = Reactor::<()>::new(ReactorConfig::default()).expect("reactor");
        let mut app = ReadyApp { stream: ours, peer: theirs, seen: Vec::new() };
        reactor.run(&mut app).expect("run");
        assert_eq!(app.seen[0], vec![], "nothing written yet");
        assert_eq!(app.seen[1], vec![(9, Readiness::READABLE)], "the byte is waiting");
        assert_eq!(app.seen[2], vec![], "the byte was read");
    }

    #[test]
    fn pinning_to_core_zero() {
        let config = ReactorConfig { core: Some(0), ..ReactorConfig::default() };
        let (mut reactor, _h) = Reactor::new(config).expect("reactor");
        std::thread::spawn(move || reactor.run(&mut IdleApp { polls_left: 1 }))
            .join()
            .expect("thread")
            .expect("pinned run");
        assert!(pin_to_core(1 << 20).is_err());
    }
}
