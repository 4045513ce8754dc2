//! Command opcodes: admin (NVMe Base 2.0, 5, Figure 138 "Opcodes for Admin
//! Commands"), NVM I/O (NVM Command Set 1.0, 3, Figure 17 "Opcodes for NVM
//! Commands") and the Fabrics command types (NVMe-oF 1.1, 6, Figure 9/10).
//!
//! Bits 1:0 of an opcode (and of a Fabrics command type) give the direction
//! of the data transfer, which lets a transport decide whether to fetch data
//! from the host before the command runs, without knowing each command.

/// Admin command opcodes.
pub mod admin {
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const IDENTIFY: u8 = 0x06;
    pub const ABORT: u8 = 0x08;
    pub const SET_FEATURES: u8 = 0x09;
    pub const GET_FEATURES: u8 = 0x0A;
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    pub const KEEP_ALIVE: u8 = 0x18;
    /// The Fabrics opcode; the command type is in FCTYPE (byte 4).
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set I/O opcodes.
pub mod nvm {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const WRITE_ZEROES: u8 = 0x08;
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// Fabrics command types (FCTYPE), NVMe-oF 1.1 Figure 10.
pub mod fctype {
    pub const PROPERTY_SET: u8 = 0x00;
    pub const CONNECT: u8 = 0x01;
    pub const PROPERTY_GET: u8 = 0x04;
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    pub const DISCONNECT: u8 = 0x08;
}

/// The direction of a command's data transfer (bits 1:0 of the opcode or
/// FCTYPE: 00b none, 01b host to controller, 10b controller to host,
/// 11b bidirectional).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

/// The data direction encoded in an opcode or Fabrics command type.
pub fn data_direction(opcode_or_fctype: u8) -> DataDirection {
    match opcode_or_fctype & 0x3 {
        0 => DataDirection::None,
        1 => DataDirection::HostToController,
        2 => DataDirection::ControllerToHost,
        _ => DataDirection::Bidirectional,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_follow_the_low_bits() {
        assert_eq!(data_direction(nvm::WRITE), DataDirection::HostToController);
        assert_eq!(data_direction(nvm::READ), DataDirection::ControllerToHost);
        assert_eq!(data_direction(nvm::FLUSH), DataDirection::None);
        assert_eq!(data_direction(nvm::DATASET_MANAGEMENT), DataDirection::HostToController);
        assert_eq!(data_direction(admin::IDENTIFY), DataDirection::ControllerToHost);
        assert_eq!(data_direction(admin::GET_LOG_PAGE), DataDirection::ControllerToHost);
        assert_eq!(data_direction(fctype::CONNECT), DataDirection::HostToController);
        assert_eq!(data_direction(fctype::PROPERTY_GET), DataDirection::None);
        assert_eq!(data_direction(0x03), DataDirection::Bidirectional);
    }
}
