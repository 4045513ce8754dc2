//! The bridge to the NVMe/TCP host library: `QueueDriver` for its `IoQueue`,
//! and the target side of `tandem perf` (connect, size the region from
//! Identify Namespace, run, keep the association alive, disconnect).

use std::time::Duration;

use anyhow::{bail, Context};
use tandem_nvmf::host::{ConnectOptions, HostController, HostError, IoCommand, IoQueue};

use crate::driver::{Completion, DriverError, IoOp, QueueDriver};
use crate::perf::{PerfArgs, ProgressLine};
use crate::stats::{Figures, Progress};
use crate::workload::{run_workload, WorkloadSpec};

/// Keep Alive Timeout we ask for; the progress tick (1 s) sends Keep Alive
/// far more often than that.
const KATO_MS: u32 = 10_000;

fn driver_error(error: HostError) -> DriverError {
    match error {
        HostError::QueueFull => DriverError::QueueFull,
        other => DriverError::Failed { reason: other.to_string() },
    }
}

impl QueueDriver for IoQueue {
    fn submit(&mut self, op: IoOp<'_>, tag: u64) -> Result<(), DriverError> {
        let command = match op {
            IoOp::Read { nsid, slba, block_count } => IoCommand::Read { nsid, slba, nlb: block_count },
            IoOp::Write { nsid, slba, data, fua } => IoCommand::Write { nsid, slba, data, fua },
            IoOp::Flush { nsid } => IoCommand::Flush { nsid },
        };
        IoQueue::submit(self, command, tag).map_err(driver_error)
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_completion: &mut dyn FnMut(Completion<'_>),
    ) -> Result<usize, DriverError> {
        IoQueue::poll(self, timeout, &mut |c| {
            on_completion(Completion { tag: c.tag, status: c.status, data: c.data })
        })
        .map_err(driver_error)
    }

    fn queue_depth(&self) -> usize {
        IoQueue::queue_depth(self)
    }
}

/// Connects as `args` say and returns the controller and its I/O queues.
pub fn connect(args: &PerfArgs, addr: &str, subnqn: &str) -> anyhow::Result<(HostController, Vec<IoQueue>)> {
    let mut options = ConnectOptions::new(addr, subnqn);
    if let Some(hostnqn) = &args.hostnqn {
        options.hostnqn = hostnqn.clone();
    }
    options.header_digest = args.header_digest;
    options.data_digest = args.data_digest;
    options.io_queues = args.queues;
    options.queue_depth = args.qd.max(2);
    options.kato_ms = KATO_MS;
    let mut controller =
        HostController::connect(&options).with_context(|| format!("connecting to {subnqn} at {addr}"))?;
    let queues = controller.take_io_queues();
    if queues.is_empty() {
        bail!("the controller granted no I/O queue");
    }
    Ok((controller, queues))
}

/// The NVMe/TCP half of `run_perf`.
pub(crate) fn run_target(args: &PerfArgs, addr: &str, subnqn: &str) -> anyhow::Result<Figures> {
    let (mut controller, queues) = connect(args, addr, subnqn)?;
    let namespace = controller.namespace(args.nsid).with_context(|| format!("namespace {}", args.nsid))?;
    let block_size = u64::from(namespace.block_size);
    if block_size == 0 {
        bail!("namespace {} reports a zero block size", args.nsid);
    }
    let max_transfer = controller.max_transfer_bytes() as u64;
    if !args.bs.is_multiple_of(block_size) || args.bs > max_transfer {
        bail!(
            "--bs {} must be a multiple of the {block_size}-byte block and at most {max_transfer}",
            args.bs
        );
    }
    let namespace_bytes = namespace.num_blocks * block_size;
    let size = args.size.unwrap_or(namespace_bytes.saturating_sub(args.offset));
    if !args.offset.is_multiple_of(block_size) || !size.is_multiple_of(block_size) {
        bail!("--offset and --size must be multiples of the {block_size}-byte block");
    }
    if args.offset.checked_add(size).is_none_or(|end| end > namespace_bytes) || size == 0 {
        bail!("region {}+{size} does not fit the {namespace_bytes}-byte namespace", args.offset);
    }
    if queues.len() < usize::from(args.queues) && !args.quiet {
        eprintln!("the controller granted {} of {} I/O queues", queues.len(), args.queues);
    }
    let spec = WorkloadSpec {
        pattern: args.rw,
        read_percent: args.rwmixread,
        io_bytes: args.bs as usize,
        block_size: block_size as usize,
        queue_depth: usize::from(args.qd),
        nsid: args.nsid,
        region_slba: args.offset / block_size,
        region_blocks: size / block_size,
        ios_total: args.ios,
        duration: args.duration(),
        verify: args.verify,
        seed: args.seed,
    };
    let progress = Progress::default();
    let mut line = ProgressLine::new("nvme/tcp", args.quiet);
    let mut keep_alive_failed = false;
    let result = run_workload(&spec, queues, &progress, &mut || {
        line.tick(&progress);
        if !keep_alive_failed {
            if let Err(error) = controller.keep_alive() {
                // The I/O queues will fail on their own if the association is gone.
                tracing::warn!(%error, "keep alive failed");
                keep_alive_failed = true;
            }
        }
    });
    line.finish();
    let result = result?;
    if let Err(error) = controller.disconnect() {
        tracing::warn!(%error, "disconnect after the run failed");
    }
    Ok(result.stats.figures(result.elapsed))
}
