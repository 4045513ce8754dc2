//! The first pieces of the sans-I/O HA core (issue 8): the must-complete
//! token a host command carries through the core, and the acknowledgement
//! gate, which says when a staged write may complete: once it is durable in
//! the first store AND, while the pair mirrors, in the partner's second store
//! (claims 5, 13, 19, 27, 30). Neither does I/O; the transport and the link
//! feed them completions in any order and act on what they return.
//! The token travels with every command that waits in the write path
//! (`ha::node`): the transport completes it when the command comes back ready.

use std::ops::RangeInclusive;

/// A host command that must be completed exactly once. Completing consumes
/// it; dropping it uncompleted is a bug (a host would wait forever) and panics
/// in debug builds and tests (after propolis's `NoDropPermit`). In release
/// builds the drop is logged instead of taking the node down.
#[must_use = "a host command must be completed"]
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    /// Which command: the transport's own handle (connection, queue, CID).
    tag: u64,
    done: bool,
}

impl Token {
    pub fn new(tag: u64) -> Token {
        Token { tag, done: false }
    }

    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Completes the command: returns its tag for the transport to answer.
    pub fn complete(mut self) -> u64 {
        self.done = true;
        self.tag
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        if !self.done && !std::thread::panicking() {
            if cfg!(debug_assertions) {
                panic!("host command {:#x} dropped without a completion", self.tag);
            }
            tracing::error!(tag = self.tag, "host command dropped without a completion");
        }
    }
}

/// Whether writes wait for the partner's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorMode {
    /// Both copies: a write completes once both stores hold it.
    Mirrored,
    /// The partner is away (policy `write-back`): one persistent copy, and
    /// the status says so loudly. Mirroring resumes after a resync.
    Degraded,
}

/// Sequences are dense (1, 2, 3, ...); each store reports "durable through
/// N" in order. The gate tracks both and hands out each sequence exactly once,
/// in order, when it may be acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckGate {
    mode: MirrorMode,
    local_through: u64,
    mirror_through: u64,
    /// Every sequence <= this has been handed out for acknowledgement.
    acked_through: u64,
}

impl AckGate {
    /// A gate for a ring whose records through `released` are long done.
    pub fn new(mode: MirrorMode, released: u64) -> AckGate {
        AckGate { mode, local_through: released, mirror_through: released, acked_through: released }
    }

    pub fn mode(&self) -> MirrorMode {
        self.mode
    }
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }
    pub fn local_through(&self) -> u64 {
        self.local_through
    }
    pub fn mirror_through(&self) -> u64 {
        self.mirror_through
    }

    /// The first store persisted every record through `seq`.
    pub fn local_durable(&mut self, seq: u64) -> RangeInclusive<u64> {
        self.local_through = self.local_through.max(seq);
        self.advance()
    }

    /// The partner acknowledged every record through `seq`. An ack beyond
    /// what this node has persisted locally is a partner error, not ours to
    /// trust blindly: it is refused (the link then resyncs).
    pub fn mirror_durable(&mut self, seq: u64, sent_through: u64) -> Result<RangeInclusive<u64>, AckError> {
        if seq > sent_through {
            return Err(AckError::AckBeyondSent { seq, sent_through });
        }
        self.mirror_through = self.mirror_through.max(seq);
        Ok(self.advance())
    }

    /// The partner went away (write-back policy) or came back. Going
    /// degraded releases the writes that waited only for the mirror. Going
    /// back to mirrored assumes nothing: writes not yet acknowledged wait
    /// until the partner's acknowledgements (of the resync) reach them.
    pub fn set_mode(&mut self, mode: MirrorMode) -> RangeInclusive<u64> {
        self.mode = mode;
        self.advance()
    }

    fn advance(&mut self) -> RangeInclusive<u64> {
        let through = match self.mode {
            MirrorMode::Mirrored => self.local_through.min(self.mirror_through),
            MirrorMode::Degraded => self.local_through,
        };
        let first = self.acked_through + 1;
        self.acked_through = self.acked_through.max(through);
        assert!(self.acked_through <= self.local_through, "acknowledged beyond the local store");
        first..=self.acked_through
    }
}

/// A partner message the gate refuses.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckError {
    #[error("partner acknowledged through {seq}, but only {sent_through} was sent")]
    AckBeyondSent { seq: u64, sent_through: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(range: RangeInclusive<u64>) -> Vec<u64> {
        range.collect()
    }

    #[test]
    fn a_write_completes_only_when_both_copies_are_durable_local_first() {
        let mut gate = AckGate::new(MirrorMode::Mirrored, 0);
        assert_eq!(seqs(gate.local_durable(3)), Vec::<u64>::new(), "local alone acknowledges nothing");
        assert_eq!(seqs(gate.mirror_durable(2, 3).expect("ack")), vec![1, 2]);
        assert_eq!(seqs(gate.mirror_durable(3, 3).expect("ack")), vec![3]);
        assert_eq!(gate.acked_through(), 3);
    }

    #[test]
    fn mirror_ack_first_waits_for_the_local_persist() {
        let mut gate = AckGate::new(MirrorMode::Mirrored, 10);
        assert_eq!(seqs(gate.mirror_durable(12, 12).expect("ack")), Vec::<u64>::new());
        assert_eq!(seqs(gate.local_durable(11)), vec![11]);
        assert_eq!(seqs(gate.local_durable(12)), vec![12]);
        // Repeated and older reports change nothing and hand nothing out twice.
        assert_eq!(seqs(gate.local_durable(12)), Vec::<u64>::new());
        assert_eq!(seqs(gate.mirror_durable(5, 12).expect("ack")), Vec::<u64>::new());
    }

    #[test]
    fn losing_the_mirror_in_write_back_releases_the_waiting_writes_and_a_resync_restores_the_rule() {
        let mut gate = AckGate::new(MirrorMode::Mirrored, 0);
        gate.local_durable(4);
        gate.mirror_durable(1, 4).expect("ack");
        assert_eq!(gate.acked_through(), 1);
        assert_eq!(seqs(gate.set_mode(MirrorMode::Degraded)), vec![2, 3, 4]);
        assert_eq!(seqs(gate.local_durable(5)), vec![5], "degraded: one persistent copy suffices");
        assert_eq!(seqs(gate.set_mode(MirrorMode::Mirrored)), Vec::<u64>::new());
        assert_eq!(seqs(gate.local_durable(6)), Vec::<u64>::new(), "mirrored again: 6 waits for the partner");
        assert_eq!(seqs(gate.mirror_durable(6, 6).expect("ack")), vec![6]);
    }

    #[test]
    fn an_ack_for_what_was_never_sent_is_refused() {
        let mut gate = AckGate::new(MirrorMode::Mirrored, 0);
        gate.local_durable(2);
        assert_eq!(gate.mirror_durable(3, 2), Err(AckError::AckBeyondSent { seq: 3, sent_through: 2 }));
        assert_eq!(gate.acked_through(), 0);
    }

    #[test]
    fn a_token_completes_once() {
        let token = Token::new(0x2a);
        assert_eq!(token.tag(), 0x2a);
        assert_eq!(token.complete(), 0x2a);
    }

    #[test]
    #[should_panic(expected = "dropped without a completion")]
    fn a_token_dropped_uncompleted_panics_in_tests() {
        let _ = Token::new(7);
    }
}
