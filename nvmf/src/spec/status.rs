//! Completion status (NVMe Base 2.0, 4.6.1 "Status Field Definition",
//! Figures 98-104; NVMe-oF 1.1, Figure 22 for the Fabrics codes).
//!
//! A status is the status code type (SCT), the status code (SC), and the
//! Do Not Retry (DNR) and More (M) bits. Commands that fail return one of the
//! constants below; every error path of the target names the status it gives.

/// Status Code Type values (Figure 98).
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
    pub const VENDOR: u8 = 0x7;
}

/// A completion status without the phase tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NvmeStatus {
    /// Status code type, 3 bits.
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Command retry delay index, 2 bits (0 = none).
    pub crd: u8,
    /// More: more information in the Error Information log page.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

impl core::fmt::Debug for NvmeStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} (sct={:#x} sc={:#04x}{})",
            self.name(),
            self.sct,
            self.sc,
            if self.dnr { " dnr" } else { "" }
        )
    }
}

impl core::fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

macro_rules! statuses {
    ($( $(#[$m:meta])* $name:ident = ($sct:expr, $sc:expr, $dnr:expr, $text:expr); )*) => {
        impl NvmeStatus {
            $( $(#[$m])* pub const $name: NvmeStatus =
                NvmeStatus { sct: $sct, sc: $sc, crd: 0, more: false, dnr: $dnr }; )*

            /// The spec's name of this status, or "unknown".
            pub fn name(&self) -> &'static str {
                $( if self.sct == $sct && self.sc == $sc { return $text; } )*
                "unknown status"
            }
        }
    };
}

statuses! {
    SUCCESS = (sct::GENERIC, 0x00, false, "Successful Completion");
    INVALID_OPCODE = (sct::GENERIC, 0x01, true, "Invalid Command Opcode");
    INVALID_FIELD = (sct::GENERIC, 0x02, true, "Invalid Field in Command");
    COMMAND_ID_CONFLICT = (sct::GENERIC, 0x03, true, "Command ID Conflict");
    DATA_TRANSFER_ERROR = (sct::GENERIC, 0x04, false, "Data Transfer Error");
    INTERNAL_ERROR = (sct::GENERIC, 0x06, false, "Internal Error");
    ABORT_REQUESTED = (sct::GENERIC, 0x07, false, "Command Abort Requested");
    ABORTED_SQ_DELETION = (sct::GENERIC, 0x08, false, "Command Aborted due to SQ Deletion");
    INVALID_NAMESPACE = (sct::GENERIC, 0x0B, true, "Invalid Namespace or Format");
    COMMAND_SEQUENCE_ERROR = (sct::GENERIC, 0x0C, true, "Command Sequence Error");
    INVALID_SGL_SEGMENT = (sct::GENERIC, 0x0D, true, "Invalid SGL Segment Descriptor");
    DATA_SGL_LENGTH_INVALID = (sct::GENERIC, 0x0F, true, "Data SGL Length Invalid");
    SGL_DESCRIPTOR_TYPE_INVALID = (sct::GENERIC, 0x11, true, "SGL Descriptor Type Invalid");
    SGL_OFFSET_INVALID = (sct::GENERIC, 0x16, true, "SGL Offset Invalid");
    /// Returned for a command whose association lost its keep-alive.
    KEEP_ALIVE_EXPIRED = (sct::GENERIC, 0x18, false, "Keep Alive Timer Expired");
    /// 22h: the transport lost or damaged the command's data (NVMe/TCP: its
    /// data digest did not match); retrying may succeed.
    TRANSIENT_TRANSPORT_ERROR = (sct::GENERIC, 0x22, false, "Transient Transport Error");
    NAMESPACE_NOT_READY = (sct::GENERIC, 0x82, false, "Namespace Not Ready");
    LBA_OUT_OF_RANGE = (sct::GENERIC, 0x80, true, "LBA Out of Range");
    CAPACITY_EXCEEDED = (sct::GENERIC, 0x81, true, "Capacity Exceeded");

    INVALID_QUEUE_IDENTIFIER = (sct::COMMAND_SPECIFIC, 0x01, true, "Invalid Queue Identifier");
    INVALID_QUEUE_SIZE = (sct::COMMAND_SPECIFIC, 0x02, true, "Invalid Queue Size");
    ASYNC_EVENT_LIMIT_EXCEEDED = (sct::COMMAND_SPECIFIC, 0x05, true, "Asynchronous Event Request Limit Exceeded");
    INVALID_LOG_PAGE = (sct::COMMAND_SPECIFIC, 0x09, true, "Invalid Log Page");
    FEATURE_NOT_SAVEABLE = (sct::COMMAND_SPECIFIC, 0x0D, true, "Feature Identifier Not Saveable");
    FEATURE_NOT_CHANGEABLE = (sct::COMMAND_SPECIFIC, 0x0E, true, "Feature Not Changeable");
    CONNECT_INCOMPATIBLE_FORMAT = (sct::COMMAND_SPECIFIC, 0x80, true, "Connect Incompatible Format");
    CONNECT_CONTROLLER_BUSY = (sct::COMMAND_SPECIFIC, 0x81, false, "Connect Controller Busy");
    CONNECT_INVALID_PARAMETERS = (sct::COMMAND_SPECIFIC, 0x82, true, "Connect Invalid Parameters");
    CONNECT_RESTART_DISCOVERY = (sct::COMMAND_SPECIFIC, 0x83, true, "Connect Restart Discovery");
    CONNECT_INVALID_HOST = (sct::COMMAND_SPECIFIC, 0x84, true, "Connect Invalid Host");
    INVALID_QUEUE_TYPE = (sct::COMMAND_SPECIFIC, 0x85, true, "Invalid Queue Type");

    WRITE_FAULT = (sct::MEDIA, 0x80, false, "Write Fault");
    UNRECOVERED_READ_ERROR = (sct::MEDIA, 0x81, false, "Unrecovered Read Error");

    INTERNAL_PATH_ERROR = (sct::PATH, 0x00, false, "Internal Path Error");
    ANA_PERSISTENT_LOSS = (sct::PATH, 0x01, false, "Asymmetric Access Persistent Loss");
    /// 302h: the namespace is inaccessible through this controller; the host
    /// re-reads the ANA log and retries on another path.
    ANA_INACCESSIBLE = (sct::PATH, 0x02, false, "Asymmetric Access Inaccessible");
    /// 303h: the group is changing state; the host retries (after ANATT at most).
    ANA_TRANSITION = (sct::PATH, 0x03, false, "Asymmetric Access Transition");
}

impl NvmeStatus {
    pub fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// This status with DNR set or cleared.
    pub const fn with_dnr(mut self, dnr: bool) -> Self {
        self.dnr = dnr;
        self
    }

    /// Decodes bytes 15:14 of a CQE (the phase tag in bit 0 is ignored).
    pub fn from_field(field: u16) -> Self {
        NvmeStatus {
            sc: ((field >> 1) & 0xff) as u8,
            sct: ((field >> 9) & 0x7) as u8,
            crd: ((field >> 12) & 0x3) as u8,
            more: field & (1 << 14) != 0,
            dnr: field & (1 << 15) != 0,
        }
    }

    /// Encodes bytes 15:14 of a CQE with the phase tag clear.
    pub fn to_field(&self) -> u16 {
        (u16::from(self.sc) << 1)
            | (u16::from(self.sct & 0x7) << 9)
            | (u16::from(self.crd & 0x3) << 12)
            | (u16::from(self.more) << 14)
            | (u16::from(self.dnr) << 15)
    }

    /// The 15-bit value as nvme-cli prints it (SCT << 8 | SC), e.g. 0x302.
    pub fn code(&self) -> u16 {
        (u16::from(self.sct) << 8) | u16::from(self.sc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_round_trips() {
        for s in [
            NvmeStatus::SUCCESS,
            NvmeStatus::ANA_TRANSITION,
            NvmeStatus::ANA_INACCESSIBLE,
            NvmeStatus::CONNECT_INVALID_HOST,
            NvmeStatus::LBA_OUT_OF_RANGE,
            NvmeStatus { sct: 7, sc: 0xff, crd: 3, more: true, dnr: true },
        ] {
            assert_eq!(NvmeStatus::from_field(s.to_field()), s);
            assert_eq!(NvmeStatus::from_field(s.to_field() | 1), s, "phase bit is ignored");
        }
    }

    #[test]
    #[allow(clippy::assertions_on_constants)]
    fn path_codes_match_the_spec() {
        assert_eq!(NvmeStatus::ANA_INACCESSIBLE.code(), 0x302);
        assert_eq!(NvmeStatus::ANA_TRANSITION.code(), 0x303);
        assert_eq!(NvmeStatus::ANA_TRANSITION.to_field(), 0x303 << 1);
        assert!(!NvmeStatus::ANA_TRANSITION.dnr);
        assert!(NvmeStatus::INVALID_OPCODE.dnr);
        assert_eq!(NvmeStatus::INVALID_OPCODE.to_field(), (1 << 15) | (1 << 1));
    }

    #[test]
    fn names() {
        assert_eq!(NvmeStatus::LBA_OUT_OF_RANGE.name(), "LBA Out of Range");
        assert_eq!(NvmeStatus { sct: 6, sc: 1, ..Default::default() }.name(), "unknown status");
    }
}
