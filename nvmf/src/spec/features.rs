//! Features (NVMe Base 2.0, 5.21 "Set Features command", Figure 317 "Feature
//! Identifiers", and 5.15 "Get Features") and the Asynchronous Event Request
//! completion (5.2, Figure 148-151).
//!
//! Each feature's CDW11 / completion dword 0 encoding has one function here,
//! so that a controller and a host agree on it by construction.

/// Feature identifiers (FID).
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const ASYNC_EVENT_CONFIGURATION: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
}

/// Get Features CDW10: FID (7:0), SEL (10:8: 0 current, 1 default,
/// 2 saved, 3 supported capabilities).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetFeatures {
    pub fid: u8,
    pub sel: u8,
}

impl GetFeatures {
    pub fn parse(cdw10: u32) -> Self {
        GetFeatures { fid: cdw10 as u8, sel: ((cdw10 >> 8) & 0x7) as u8 }
    }
    pub fn cdw10(&self) -> u32 {
        u32::from(self.fid) | (u32::from(self.sel & 7) << 8)
    }
}

/// SEL value asking for the supported capabilities of a feature.
pub const SEL_SUPPORTED_CAPABILITIES: u8 = 3;

/// Set Features CDW10: FID (7:0), SV save (31).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetFeatures {
    pub fid: u8,
    pub save: bool,
}

impl SetFeatures {
    pub fn parse(cdw10: u32) -> Self {
        SetFeatures { fid: cdw10 as u8, save: cdw10 & (1 << 31) != 0 }
    }
    pub fn cdw10(&self) -> u32 {
        u32::from(self.fid) | (u32::from(self.save) << 31)
    }
}

/// Number of Queues (07h): counts of I/O submission and completion queues,
/// each a 0's-based 16-bit value, NSQR/NSQA in bits 15:0 and NCQR/NCQA in
/// 31:16 of CDW11 (request) and of completion dword 0 (allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueCounts {
    /// Real number of I/O submission queues (1..=65535).
    pub submission: u32,
    /// Real number of I/O completion queues (1..=65535).
    pub completion: u32,
}

impl QueueCounts {
    /// Decodes CDW11 of Set Features or dword 0 of its completion. The
    /// 0's-based value FFFFh (65,536 queues) is invalid for a request; the
    /// caller checks it.
    pub fn decode(dword: u32) -> Self {
        QueueCounts { submission: (dword & 0xffff) + 1, completion: (dword >> 16) + 1 }
    }
    /// Encodes the 0's-based counts; counts are clamped to 1..=65536.
    pub fn encode(&self) -> u32 {
        let z = |n: u32| n.clamp(1, 0x1_0000) - 1;
        z(self.submission) | (z(self.completion) << 16)
    }
}

/// Arbitration (01h): Arbitration Burst in bits 2:0, 111b = no limit; the
/// priority weights (bits 31:8) apply to weighted round robin only.
pub const ARBITRATION_BURST_NO_LIMIT: u32 = 0b111;

/// Power Management (02h): Power State (PS, bits 4:0) and Workload Hint
/// (WH, bits 7:5) of CDW11 and of completion dword 0.
pub fn power_state(cdw11: u32) -> (u8, u8) {
    ((cdw11 & 0x1f) as u8, ((cdw11 >> 5) & 0x7) as u8)
}

/// Temperature Threshold (04h), CDW11: TMPTH (15:0, kelvin), TMPSEL (19:16:
/// 0 the Composite Temperature, 1-8 a sensor, Fh all), THSEL (21:20: 00b
/// over-temperature, 01b under-temperature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemperatureThreshold {
    pub kelvin: u16,
    pub tmpsel: u8,
    pub thsel: u8,
}

impl TemperatureThreshold {
    pub fn parse(cdw11: u32) -> Self {
        TemperatureThreshold {
            kelvin: cdw11 as u16,
            tmpsel: ((cdw11 >> 16) & 0xf) as u8,
            thsel: ((cdw11 >> 20) & 0x3) as u8,
        }
    }
    pub fn cdw11(&self) -> u32 {
        u32::from(self.kelvin) | (u32::from(self.tmpsel & 0xf) << 16) | (u32::from(self.thsel & 3) << 20)
    }
}

/// TMPSEL: the Composite Temperature, and all sensors.
pub const TMPSEL_COMPOSITE: u8 = 0x0;
pub const TMPSEL_ALL: u8 = 0xf;
/// THSEL: over- and under-temperature threshold.
pub const THSEL_OVER: u8 = 0;
pub const THSEL_UNDER: u8 = 1;
/// The default over-temperature threshold: 343 K (70 °C), as common drives
/// and QEMU's emulated controller report; the under-temperature default is 0.
pub const OVER_TEMPERATURE_DEFAULT_K: u16 = 343;

/// Keep Alive Timer (0Fh): CDW11 is the Keep Alive Timeout in milliseconds.
pub fn keep_alive_timeout_ms(cdw11: u32) -> u32 {
    cdw11
}

/// Volatile Write Cache (06h): CDW11 bit 0 is Volatile Write Cache Enable.
pub fn volatile_write_cache_enabled(cdw11: u32) -> bool {
    cdw11 & 1 != 0
}

/// Asynchronous Event Configuration (0Bh) bits of CDW11; the same bit
/// numbers as OAES (see `identify::oaes`).
pub mod aec {
    /// SMART / Health critical warnings, bits 7:0.
    pub const SMART_WARNINGS: u32 = 0xff;
    pub const NAMESPACE_ATTRIBUTE_NOTICES: u32 = 1 << 8;
    pub const ANA_CHANGE_NOTICES: u32 = 1 << 11;
    pub const DISCOVERY_LOG_CHANGE_NOTICES: u32 = 1 << 31;
}

/// Asynchronous event types (completion dword 0 bits 2:0).
pub mod event_type {
    pub const ERROR: u8 = 0x0;
    pub const SMART_HEALTH: u8 = 0x1;
    pub const NOTICE: u8 = 0x2;
    pub const IO_COMMAND_SPECIFIC: u8 = 0x6;
}

/// Notice event information values (dword 0 bits 15:8, Figure 151).
pub mod notice {
    pub const NAMESPACE_ATTRIBUTE_CHANGED: u8 = 0x00;
    pub const ANA_CHANGE: u8 = 0x03;
    /// NVMe-oF: Discovery Log Page Change.
    pub const DISCOVERY_LOG_CHANGE: u8 = 0xF0;
}

/// An asynchronous event as reported in dword 0 of an Asynchronous Event
/// Request completion: type (2:0), information (15:8), log page (23:16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    pub event_type: u8,
    pub info: u8,
    pub log_page: u8,
}

impl AsyncEvent {
    /// Notice: ANA change; the host reads the ANA log page (0Ch).
    pub const ANA_CHANGE: AsyncEvent = AsyncEvent {
        event_type: event_type::NOTICE,
        info: notice::ANA_CHANGE,
        log_page: super::log::lid::ANA,
    };
    /// Notice: namespace attribute changed; the host reads log page 04h.
    pub const NAMESPACE_ATTRIBUTE_CHANGED: AsyncEvent = AsyncEvent {
        event_type: event_type::NOTICE,
        info: notice::NAMESPACE_ATTRIBUTE_CHANGED,
        log_page: super::log::lid::CHANGED_NAMESPACE_LIST,
    };
    /// Notice: discovery log page changed (log 70h).
    pub const DISCOVERY_LOG_CHANGE: AsyncEvent = AsyncEvent {
        event_type: event_type::NOTICE,
        info: notice::DISCOVERY_LOG_CHANGE,
        log_page: super::log::lid::DISCOVERY,
    };

    pub fn to_dw0(&self) -> u32 {
        u32::from(self.event_type & 0x7) | (u32::from(self.info) << 8) | (u32::from(self.log_page) << 16)
    }
    pub fn from_dw0(dw0: u32) -> Self {
        AsyncEvent { event_type: (dw0 & 0x7) as u8, info: (dw0 >> 8) as u8, log_page: (dw0 >> 16) as u8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_command_dwords() {
        let g = GetFeatures::parse(0x0000_030B);
        assert_eq!(g, GetFeatures { fid: fid::ASYNC_EVENT_CONFIGURATION, sel: 3 });
        assert_eq!(g.cdw10(), 0x30B);
        let s = SetFeatures::parse(0x8000_0007);
        assert_eq!(s, SetFeatures { fid: fid::NUMBER_OF_QUEUES, save: true });
        assert_eq!(s.cdw10(), 0x8000_0007);
    }

    #[test]
    fn queue_counts_are_zeros_based() {
        assert_eq!(QueueCounts::decode(0x0003_0007), QueueCounts { submission: 8, completion: 4 });
        assert_eq!(QueueCounts::decode(0), QueueCounts { submission: 1, completion: 1 });
        assert_eq!(QueueCounts::decode(0xFFFF_FFFF), QueueCounts { submission: 65_536, completion: 65_536 });
        assert_eq!(QueueCounts { submission: 8, completion: 4 }.encode(), 0x0003_0007);
        assert_eq!(QueueCounts { submission: 0, completion: 100_000 }.encode(), 0xFFFF_0000);
    }

    #[test]
    fn power_and_temperature_fields() {
        assert_eq!(power_state(0b101_00011), (3, 5));
        let t = TemperatureThreshold::parse(0x001F_0157);
        assert_eq!(t, TemperatureThreshold { kelvin: 0x157, tmpsel: 0xf, thsel: 1 });
        assert_eq!(t.cdw11(), 0x001F_0157);
        assert_eq!(TemperatureThreshold::parse(0x0020_0000).thsel, 2, "reserved THSEL is visible");
    }

    #[test]
    fn kato_vwc_and_aec_bits() {
        assert_eq!(keep_alive_timeout_ms(5000), 5000);
        assert!(volatile_write_cache_enabled(1));
        assert!(!volatile_write_cache_enabled(2));
        assert_eq!(aec::ANA_CHANGE_NOTICES, 0x800);
        assert_eq!(aec::NAMESPACE_ATTRIBUTE_NOTICES, 0x100);
        assert_eq!(aec::DISCOVERY_LOG_CHANGE_NOTICES, 0x8000_0000);
    }

    #[test]
    fn async_event_dw0() {
        assert_eq!(AsyncEvent::ANA_CHANGE.to_dw0(), 0x000C_0302, "notice, ANA change, log 0Ch");
        assert_eq!(AsyncEvent::NAMESPACE_ATTRIBUTE_CHANGED.to_dw0(), 0x0004_0002);
        assert_eq!(AsyncEvent::DISCOVERY_LOG_CHANGE.to_dw0(), 0x0070_F002);
        assert_eq!(AsyncEvent::from_dw0(0x000C_0302), AsyncEvent::ANA_CHANGE);
    }
}
