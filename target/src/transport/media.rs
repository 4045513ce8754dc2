//! A reactor's view of one namespace's medium: its backend handle and, for a
//! staged namespace, the HA write path in front of it (`ha::node::NsNode`,
//! with the pair's mirror when there is one). The transport drives both
//! through this; it does not touch the ring.

use tandem_env::MappedRegion;
use tracing::warn;

use crate::backend::{Backend, BackendCompletion};
use crate::ha::node::NsNode;
use crate::ha::FlusherEvent;
use crate::pair::owner::MirrorLink;

pub use crate::ha::node::{Ready, StageError, StagingStatus, WriteSlot, DEALLOCATE_RANGES_MAX};

/// A staged namespace: the write path with its mirror (None: no pair).
pub type Staged = NsNode<MappedRegion, Option<MirrorLink>>;

/// One namespace's medium as this reactor sees it.
pub struct NsMedia {
    pub backend: Box<dyn Backend>,
    pub staged: Option<Staged>,
    /// In a pair: the namespace of a group the partner owns. This node
    /// neither writes nor reads it (its newest data may be staged on the
    /// partner), whatever ANA state a port reports; taking a group over is
    /// the failover's job.
    pub partner_owned: bool,
}

impl NsMedia {
    pub fn direct(backend: Box<dyn Backend>) -> NsMedia {
        NsMedia { backend, staged: None, partner_owned: false }
    }

    /// Runs the flusher and the mirror and moves backend completions that
    /// are not the flusher's into `out`. Returns whether anything happened.
    pub fn poll(
        &mut self,
        now_ms: u64,
        scratch: &mut Vec<BackendCompletion>,
        out: &mut Vec<BackendCompletion>,
    ) -> bool {
        let mut busy = false;
        scratch.clear();
        busy |= self.backend.poll_completions(scratch) > 0;
        match self.staged.as_mut() {
            None => out.append(scratch),
            Some(st) => {
                let mut log_event = |nsid: u32, event: &FlusherEvent| match event {
                    FlusherEvent::WriteFailed { .. } | FlusherEvent::FlushFailed { .. } => {
                        warn!(nsid, ?event, "medium write failed: records stay staged and are retried")
                    }
                    other => warn!(nsid, event = ?other, "staging log event"),
                };
                busy |= st.poll(&mut self.backend, now_ms, scratch, out, &mut log_event);
            }
        }
        busy
    }
}
